"""Per-image membership statistics of a diffusion model, as the results rows latent recovery would give.

    table = audit_diffusion(g, targets, ids, settings=RecoverySettings(seed=0))   # g from recovery.diffusion

Three statistics, each a column (lower = the model explains the image better, as with a recovery error):

- `denoise_error`: the loss-based membership statistic (Matsumoto et al. 2023; Carlini et al. 2023's loss
  threshold): the mean over the timesteps t in generator.diffusion.timesteps and `noises` seeded noises eps of
  ||eps - eps_theta(sqrt(a_t) x + sqrt(1 - a_t) eps, t)||^2 per pixel. A model that memorized x denoises it better.
- `inversion_error`: the per-pixel MSE between x and its DDIM reconstruction, the model's own deterministic sampler
  run from x's DDIM-inverted noise (recovery.diffusion.DDIM.invert): how well the model reproduces the image
  from a latent, the closest analogue of latent recovery. The inverted noise is the row's `latent`, so the
  report renders the reconstruction with G itself.
- `proximal_error`: PIA's statistic (Kong et al., ICLR 2024): the same denoising error with the noise taken as the
  model's own eps_theta(x, 0) instead of a random draw, so no sampling noise enters the statistic.

generator.diffusion.statistic names the one copied into `error`. Every random draw is seeded by (seed, image id),
so an image's row depends on neither its batch nor the order (the UNet's own arithmetic aside, as for recover).
The statistics are forward passes only: no gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from .diffusion import DDIM
from .errors import RecoveryError
from .loaded import LoadedGenerator
from .objective import psnr
from .priors import stream
from .settings import RecoverySettings

COLUMNS = {"denoise": "denoise_error", "inversion": "inversion_error", "proximal": "proximal_error"}
DEFAULT_BATCH = 64


def _noises(ids: Sequence[str], seed: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """count seeded standard normal draws per image: [N, count, C, H, W], the same whatever the batch."""
    if not len(ids):
        return torch.empty((0, count, *shape))
    return torch.stack([torch.randn((count, *shape), generator=stream(seed, i, "diffusion-noise")) for i in ids])


@torch.no_grad()
def denoise_error(ddim: DDIM, x0: torch.Tensor, noises: torch.Tensor, timesteps: Sequence[int],
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """x0 [B, C, H, W], noises [B, K*M, C, H, W] (M per timestep) -> [B] float64 mean ||eps - eps_theta||^2 per pixel."""
    b, k = len(x0), len(timesteps)
    m = noises.shape[1] // k
    total = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for j, t in enumerate(timesteps):
        eps = noises[:, j * m : (j + 1) * m].reshape(b * m, *x0.shape[1:])  # [B*M, C, H, W]
        a = ddim.alpha_bar[t]
        xt = a.sqrt() * x0.repeat_interleave(m, 0) + (1 - a).sqrt() * eps
        lab = labels.repeat_interleave(m, 0) if labels is not None else None
        err = (eps - ddim.eps(xt, torch.tensor(t, device=x0.device), lab)).pow(2).flatten(1).mean(1)  # [B*M]
        total += err.double().view(b, m).mean(1)
    return total / k


@torch.no_grad()
def proximal_error(ddim: DDIM, x0: torch.Tensor, timesteps: Sequence[int], labels: torch.Tensor | None = None) -> torch.Tensor:
    """x0 [B, C, H, W] -> [B] float64: the denoising error with eps = eps_theta(x0, 0) (PIA's proximal initialization)."""
    eps0 = ddim.eps(x0, torch.tensor(0, device=x0.device), labels)  # [B, C, H, W]
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    for t in timesteps:
        a = ddim.alpha_bar[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps0
        total += (eps0 - ddim.eps(xt, torch.tensor(t, device=x0.device), labels)).pow(2).flatten(1).mean(1).double()
    return total / len(timesteps)


@torch.no_grad()
def inversion(ddim: DDIM, x0: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [B, C, H, W] -> (its inverted noise [B, C, H, W], its DDIM reconstruction [B, C, H, W] clamped to [-1, 1])."""
    z = ddim.invert(x0, labels)
    return z, ddim(z, labels)


def evaluations_per_image(generator: LoadedGenerator) -> int:
    """UNet evaluations one image costs: denoise K*M, proximal 1 + K, inversion and reconstruction 2 * steps."""
    d = generator.spec.diffusion
    k = len(d.timesteps)
    return k * d.noises + 1 + k + 2 * d.steps


def audit_diffusion(
    generator: LoadedGenerator,
    targets: torch.Tensor,  # [N, C, H, W] float32 in [-1, 1] at the model's resolution
    image_ids: Sequence[str],
    *,
    settings: RecoverySettings = RecoverySettings(),
    labels: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    **_search: object,  # recover()'s search-only arguments (feature_net, encoder): nothing to search here
) -> pa.Table:
    """One row per target, in input order, with recover()'s columns (error, mse, mae, psnr, ..., latent) and the
    three statistics; `error` is generator.diffusion.statistic's column, `mse`/`mae`/`psnr` the reconstruction's."""
    ddim = generator.module
    if not isinstance(ddim, DDIM):
        raise RecoveryError("audit_diffusion needs a generator loaded from generator.diffusers")
    ids = [str(i) for i in image_ids]
    if len(ids) != len(targets):
        raise RecoveryError(f"{len(targets)} targets but {len(ids)} image ids")
    if len(set(ids)) != len(ids):
        raise RecoveryError("image ids must be unique: each seeds its own noises")
    d = generator.spec.diffusion
    shape = tuple(targets.shape[1:])
    if shape != generator.output_shape:
        raise RecoveryError(f"targets are {list(shape)}, the model's images {list(generator.output_shape)}")
    step = settings.batch_size or DEFAULT_BATCH
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("denoise", "proximal", "mse", "mae", "latent")}
    seconds: list[float] = []
    for start in range(0, len(ids), step):
        began = time.perf_counter()
        chunk = ids[start : start + step]
        x0 = targets[start : start + step].to(generator.device, torch.float32)  # [B, C, H, W]
        lab = labels[start : start + step].to(generator.device) if labels is not None else None
        noises = _noises(chunk, settings.seed, len(d.timesteps) * d.noises, shape).to(generator.device)
        parts["denoise"].append(denoise_error(ddim, x0, noises, d.timesteps, lab).cpu())
        parts["proximal"].append(proximal_error(ddim, x0, d.timesteps, lab).cpu())
        z, rec = inversion(ddim, x0, lab)
        diff = (rec - x0).double().flatten(1)
        parts["mse"].append(diff.pow(2).mean(1).cpu())
        parts["mae"].append(diff.abs().mean(1).cpu())
        parts["latent"].append(z.flatten(1).float().cpu())
        seconds += [(time.perf_counter() - began) / len(chunk)] * len(chunk)
        if progress is not None:
            progress(start + len(chunk))
    return _table(ids, parts, seconds, generator)


def _table(ids: list[str], parts: dict, seconds: list[float], generator: LoadedGenerator) -> pa.Table:
    n, dim = len(ids), int(np.prod(generator.output_shape))
    cat = {k: torch.cat(v) if v else torch.empty((0, dim) if k == "latent" else 0) for k, v in parts.items()}
    stats = {"denoise": cat["denoise"], "inversion": cat["mse"], "proximal": cat["proximal"]}
    error = stats[generator.spec.diffusion.statistic]
    finite = torch.isfinite(torch.stack([stats[k] for k in stats])).all(0) if n else torch.ones(0, dtype=torch.bool)
    peak = psnr(cat["mse"], generator.spec.output_range)  # [N] dB
    z = cat["latent"]  # [N, D]
    cols = {
        "image_id": pa.array(ids, pa.string()),
        "error": pa.array(error.numpy(), pa.float64()),
        "mse": pa.array(cat["mse"].numpy(), pa.float64()),
        "mae": pa.array(cat["mae"].numpy(), pa.float64()),
        "psnr": pa.array(peak.numpy(), pa.float64()),
        "restarts": pa.array([1] * n, pa.int32()),
        "best_restart": pa.array([0] * n, pa.int32()),
        "iterations": pa.array([generator.spec.diffusion.steps] * n, pa.int32()),
        "converged": pa.array([True] * n, pa.bool_()),
        "stop": pa.array(["diffusion"] * n, pa.string()),
        "evaluations": pa.array([evaluations_per_image(generator)] * n, pa.int64()),
        "evaluations_to_exact": pa.array([None] * n, pa.int64()),
        "latent_norm": pa.array((z.double().norm(dim=1) / math.sqrt(dim)).numpy(), pa.float64()),
        "seconds": pa.array(seconds, pa.float64()),
        "failure": pa.array([None if ok else "a diffusion statistic was not finite" for ok in finite.tolist()], pa.string()),
        "denoise_error": pa.array(stats["denoise"].numpy(), pa.float64()),
        "inversion_error": pa.array(stats["inversion"].numpy(), pa.float64()),
        "proximal_error": pa.array(stats["proximal"].numpy(), pa.float64()),
        "latent": pa.FixedSizeListArray.from_arrays(pa.array(z.numpy().reshape(-1), pa.float32()), dim),
    }
    return pa.table(cols)
