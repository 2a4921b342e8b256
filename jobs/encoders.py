"""The learned start's encoder (recovery.start: encoder), trained once per generator and cached beside the outputs.

One actor trains it (the driver asks before any shard runs) and writes it in one atomic put to
<out>/cache/encoder-<key>.pt; every actor then loads that same file, so all shards, retries and resumed
runs start from the same encoder whatever device trained it. The key hashes the generator's weights
(not its URL: a retrained file at the same path gets a new encoder) and every setting that changes E.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

from stats import storage
from .sections import AuditConfig
from .errors import JobError


def resolve_start(config: AuditConfig, images: int) -> tuple[AuditConfig, str]:
    """recovery.start "auto" made definite for an audit of `images` images (all splits, from the plan, so a
    resumed run decides alike): "encoder" from recovery.encoder_min_images on, where the encoder's one-off
    training costs less than it saves, else "prior". Returns (the config with it, a line for the log)."""
    rec = config.recovery
    if rec.start != "auto":
        return config, f"{rec.start} (set)"
    start = "encoder" if images >= rec.encoder_min_images else "prior"
    why = f"{start} (auto: {images} images {'>=' if start == 'encoder' else '<'} encoder_min_images {rec.encoder_min_images})"
    return dataclasses.replace(config, recovery=dataclasses.replace(rec, start=start)), why


def encoder_key(generator, config: AuditConfig) -> str:
    """The cache key (stats.storage.cache_key) of G's parameters and buffers, its latent and range, and the encoder's settings."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(generator.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    rec = config.recovery
    return storage.cache_key({"latent": list(generator.latent.shape), "prior": generator.latent.prior,
                              "range": list(generator.spec.output_range), "resolution": rec.resolution,
                              "steps": rec.encoder_steps, "seed": rec.seed}, digest)


def encoder_url(out: str, key: str) -> str:
    return storage.join(out, "cache", f"encoder-{key}.pt")


def prepare(generator, config: AuditConfig) -> str:
    """Train and store the encoder unless the cache has it; returns its URL."""
    import torch

    import recovery

    endpoint = config.storage.endpoint_url
    url = encoder_url(config.output, encoder_key(generator, config))
    if storage.exists(url, endpoint):
        return url
    encoder = recovery.train_encoder(generator, settings=config.recovery, steps=config.recovery.encoder_steps,
                                     seed=config.recovery.seed)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in encoder.state_dict().items()}, buf)
    storage.put_atomic(url, buf.getvalue(), endpoint)
    return url


def load(generator, config: AuditConfig):
    """The cached encoder on the generator's device; raises if the driver has not prepared it."""
    import math

    import torch

    import recovery

    endpoint = config.storage.endpoint_url
    url = encoder_url(config.output, encoder_key(generator, config))
    if not storage.exists(url, endpoint):
        raise JobError(f"the learned start's encoder is missing at {url}; the driver prepares it before any shard")
    state = torch.load(io.BytesIO(storage.read_bytes(url, endpoint)), map_location="cpu", weights_only=True)
    shape = recovery.target_shape(generator, config.recovery)
    encoder = recovery.Encoder(shape, math.prod(generator.latent.shape))
    encoder.load_state_dict(state)
    return encoder.to(generator.device).eval().requires_grad_(False)
