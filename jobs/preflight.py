"""Checks that run before any actor starts, so a mistake never costs a cluster start (issue 11).

    generator = load_generator_cpu(config)      # in the driver and in --dry-run: no Ray needed
    check_placement(config, ray.nodes(), node) # after connecting: a local output needs a one-node cluster

load_generator_cpu loads G (and the feature network) on this machine's CPU, the way every actor will load
it on its device: recovery.load_generator's own forward pass checks the output shape against the latent
spec, finiteness, the output range and batch independence, and recovery.target_shape checks the audit
resolution. A wrong latent shape is then a one-line error before GPU nodes autoscale. The driver keeps the
CPU generator to render the report's sample images from the stored latents.
"""

from __future__ import annotations

import logging
import time

from stats import storage

from . import models
from .config import AuditConfig
from .errors import ConfigError

log = logging.getLogger("memaudit")


def load_generator_cpu(config: AuditConfig):
    """recovery.LoadedGenerator on the CPU, checked by one small forward pass.

    Raises:
        recovery.RecoveryError: the generator cannot be loaded or fails its checks (exit 2).
    """
    import recovery

    started = time.time()
    spec, endpoint = config.generator, config.storage.endpoint_url
    url = models.generator_url(spec)
    generator = recovery.load_generator(spec, device="cpu", storage_options=storage.storage_options(url, endpoint))
    shape = recovery.target_shape(generator, config.recovery)
    if config.feature_net:
        recovery.load_feature_net(config.feature_net, device="cpu",
                                  storage_options=storage.storage_options(config.feature_net, endpoint))
    models.load_discriminator(generator, shape, config, "cpu")  # issue 13: D's output checked before any actor starts
    _check_crop(config, shape)
    log.info("generator: loaded and checked on the CPU in %.1fs (output %s)", time.time() - started,
             list(generator.output_shape))
    return generator


def _check_crop(config: AuditConfig, shape: tuple[int, ...]) -> None:
    """features.crop must fit inside the audit images [C, H, W], known only once G is loaded."""
    crop = config.features.crop
    if crop is not None and any(d != "recovery" for d in config.detectors) and crop > min(shape[1:]):
        raise ConfigError(f"features.crop: {crop} is larger than the audit images ({shape[1]}x{shape[2]}); "
                          f"use at most {min(shape[1:])} or leave it unset")


def check_placement(config: AuditConfig, nodes: list[dict], driver_node: str | None) -> None:
    """Refuse a local output path when actors may run on another node than the driver's: more than one
    live node, or a driver node that cannot host an actor (a head node with `CPU: 0` whose workers the
    autoscaler adds). Parts would land on the workers' disks, and the driver would find none of them.

    Args:
        nodes: ray.nodes() (each with "Alive", "NodeID", "Resources").
        driver_node: this process's node id (ray.get_runtime_context().get_node_id()).

    Raises:
        ConfigError: naming the output and the nodes.
    """
    if not storage.is_local(config.output):
        return
    alive = [n for n in nodes if n.get("Alive")]
    mine = [n for n in alive if n.get("NodeID") == driver_node]
    res = config.resources
    here = (mine[0].get("Resources") or {}) if mine else {}
    fits = here.get("CPU", 0.0) >= res.cpus_per_actor and here.get("GPU", 0.0) >= res.gpus_per_actor
    if len(alive) > 1 or not fits:
        why = (f"the cluster has {len(alive)} nodes" if len(alive) > 1 else
               "actors cannot run on the driver's node (the autoscaler would add nodes)")
        raise ConfigError(f"output: {config.output} is a local path, but {why}: parts would land on the workers' "
                          "disks. Use an object store (s3://...) or a shared filesystem URL the workers see")
