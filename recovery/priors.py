"""Latent priors, and the per-(seed, image id, restart) random streams that make results independent of batching."""

from __future__ import annotations

import hashlib

import torch

from .errors import RecoveryError
from .settings import LatentSpec


def stream(seed: int, image_id: str, tag: str | int) -> torch.Generator:
    """A CPU generator seeded by (seed, image id, tag): the same start whatever the shard, order or batch."""
    digest = hashlib.sha256(f"{seed}\x00{image_id}\x00{tag}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_prior(latent: LatentSpec, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws from the prior, [n, *latent.shape] float32 on the CPU."""
    z = torch.randn((n, *latent.shape), generator=gen) if latent.prior != "uniform" else torch.rand((n, *latent.shape), generator=gen) * 2 - 1
    if latent.prior == "sphere":
        flat = z.reshape(n, -1)
        z = (flat / flat.norm(dim=1, keepdim=True)).reshape(z.shape)
    return z


def sample_for_ids(latent: LatentSpec, image_ids, seed: int, tag: str | int) -> torch.Tensor:
    """One prior draw per image id, [N, *latent.shape]."""
    if not len(image_ids):
        return torch.empty((0, *latent.shape))
    return torch.cat([sample_prior(latent, 1, stream(seed, i, tag)) for i in image_ids])


def to_prior_space(u: torch.Tensor, latent: LatentSpec, geometry: str = "free") -> torch.Tensor:
    """The optimizer's free variable u [B, D] to the generator's latent [B, *shape].

    A sphere prior is kept by reparametrization z = u / |u| (GLO's latents live on the sphere,
    and a latent off it would let G reach images it was never trained to make). The "shell"
    geometry does the same for a normal prior at radius sqrt(d), where N(0, I) puts almost all
    of its mass in high dimension (|z| / sqrt(d) = 1 +- O(1 / sqrt(d))).
    """
    if latent.prior == "sphere":
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    elif geometry == "shell":
        u = u * (u.shape[1] ** 0.5 / u.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return u.reshape(u.shape[0], *latent.shape)


def check_geometry(latent: LatentSpec, geometry: str) -> None:
    """The shell geometry is a normal prior's; the others already bound their latents."""
    if geometry == "shell" and latent.prior != "normal":
        raise RecoveryError(
            f"recovery.geometry: 'shell' is for a normal prior (the generator's latent prior is {latent.prior!r}, "
            "which already bounds the search); use 'free'"
        )
