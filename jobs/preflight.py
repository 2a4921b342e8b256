"""Checks that run before any actor starts, so a mistake never costs a cluster start.

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
import math
import os
import time

from stats import storage

from . import labels_and_scores
from .sections import AuditConfig
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
    check_latent_memory(config)  # before the load check allocates its probe latents
    url = labels_and_scores.generator_url(spec)
    generator = recovery.load_generator(spec, device="cpu", storage_options=storage.storage_options(url, endpoint))
    shape = recovery.target_shape(generator, config.recovery)
    _check_operator(config, shape)
    if config.feature_net:
        recovery.load_feature_net(config.feature_net, device="cpu",
                                  storage_options=storage.storage_options(config.feature_net, endpoint))
    labels_and_scores.load_discriminator(generator, shape, config, "cpu")  # D's output checked before any actor starts
    _check_crop(config, shape)
    log.info("generator: loaded and checked on the CPU in %.1fs (output %s)", time.time() - started,
             list(generator.output_shape))
    return generator


PROBE_LATENTS = 3  # the load check's probe batch (recovery.generators._probe_inputs)
SLOT_COPIES = 6  # besides L-BFGS's 2 x history pairs, each search slot holds ~6 latent-sized tensors (z, grad, best, ...)


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_latent_memory(config: AuditConfig, memory: int | None = None) -> None:
    """Refuse a latent that cannot be allocated, before allocating it: `latent.shape: [100000, 100000]` is 10^10
    float32 values, 40 GB per latent; the load check's probe batch alone would ask the allocator for 120 GB and
    end in its traceback. One search slot needs (2 x recovery.history + SLOT_COPIES) latents (L-BFGS's curvature
    pairs and the slot's own tensors), so that must fit too; `memory` defaults to this machine's.

    Raises:
        ConfigError: naming generator.latent.shape, the gigabytes needed and the memory there is.
    """
    latent = getattr(config.generator, "latent", None)
    memory = memory if memory is not None else physical_memory()
    if latent is None or not memory:
        return
    values = math.prod(int(s) for s in latent.shape)
    per = 4 * values  # float32
    history = int(getattr(config.recovery, "history", 0) or 0) if config.recovery.optimizer == "lbfgs" else 0
    needs = [(PROBE_LATENTS * per, f"the load check's batch of {PROBE_LATENTS} latents"),
             ((2 * history + SLOT_COPIES) * per, "one image's search state")]
    for need, what in needs:
        if need > memory / 2:
            raise ConfigError(
                f"generator.latent.shape: {list(latent.shape)} is {values:,} values ({per / 1e9:.3g} GB per float32 "
                f"latent); {what} needs {need / 1e9:.3g} GB, more than half of this machine's {memory / 1e9:.3g} GB. "
                "Is the shape right (e.g. [512] or [100, 1, 1])?")


def _check_operator(config: AuditConfig, shape: tuple[int, ...]) -> None:
    """recovery.operator against the audit images [C, H, W] (known once G is loaded): a mask box or pooling factor
    that does not fit is refused here, not in every actor's every shard (three failures each, then exit 1)."""
    import torch
    from recovery.objective import build_operator

    build_operator(config.recovery.operator, tuple(shape), torch.device("cpu"))


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
