"""recover(): the latent recovery error of every target (Webster et al., CVPR 2019), as an Arrow table.

    e(x) = min over restarts r of min_z loss(A(G(z)), A(x)),   z_r ~ prior seeded by (seed, image id, r)
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from .errors import RecoveryError
from .generators import LoadedGenerator
from .objective import Objective, psnr, target_shape, to_audit_resolution
from .optim import SlotOptimizer, TaskResult
from .priors import sample_for_ids, to_prior_space
from .settings import RecoverySettings

GENERATED_TAG = "generated"  # the stream tag of generated images' z0, distinct from every restart index


def _evaluator(objective: Objective, latent, dim: int):
    """Batched loss and per-image gradient; a G that raises is retried image by image so only the culprits fail."""

    def run(points: torch.Tensor, index: torch.Tensor):
        u = points.detach().requires_grad_(True)
        loss, mse, mae = objective(to_prior_space(u, latent), index)
        (grad,) = torch.autograd.grad(loss.sum(), u)
        return loss.detach(), mse, mae, grad, [None] * len(points)

    def evaluate(points: torch.Tensor, index: torch.Tensor):
        try:
            return run(points, index)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded on the image's row, never silent
            if len(points) == 1:
                inf = torch.full((1,), float("inf"), device=points.device)
                reason = f"generator raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                return inf, inf, inf, torch.zeros(1, dim, device=points.device), [reason]
        parts = [evaluate(points[k : k + 1], index[k : k + 1]) for k in range(len(points))]
        return (*(torch.cat([p[j] for p in parts]) for j in range(4)), [p[4][0] for p in parts])

    return evaluate


def recover(
    generator: LoadedGenerator,
    targets: torch.Tensor,  # [N, C, H, W] float32 in generator.spec.output_range, at target_shape(generator, settings)
    image_ids: Sequence[str],
    *,
    settings: RecoverySettings = RecoverySettings(),
    device: str | torch.device | None = None,
    feature_net: nn.Module | None = None,
) -> pa.Table:
    """One row per target, in input order: the recovery error and how it was reached.

    Columns: image_id, error (the configured loss), mse, mae, psnr (of the best recovery under the
    operator), restarts (run), best_restart, iterations and converged (of the best restart), seconds
    (this image's share of compute), failure (null, or why G gave no finite value for any start), and
    latent / trace when settings.keep_latent / keep_trace.
    """
    if device is not None and torch.device(device) != generator.device:
        raise RecoveryError(f"device {device} differs from the generator's device {generator.device}; load the generator there")
    ids = [str(i) for i in image_ids]
    if len(ids) != len(targets):
        raise RecoveryError(f"{len(targets)} targets but {len(ids)} image ids")
    if len(set(ids)) != len(ids):
        raise RecoveryError("image ids must be unique: each seeds its own restarts")
    n = len(ids)
    latent = generator.latent
    dim = int(np.prod(latent.shape))
    objective = Objective(generator, targets, settings, feature_net)
    opt = SlotOptimizer(
        _evaluator(objective, latent, dim),
        dim,
        slots=max(1, min(settings.batch_size, n * settings.restarts)),
        method=settings.optimizer,
        iterations=settings.iterations,
        lr=settings.lr,
        history=settings.history,
        tolerance=settings.tolerance,
        keep_trace=settings.keep_trace,
        device=generator.device,
    )
    best: list[TaskResult | None] = [None] * n
    runs, seconds = [0] * n, [0.0] * n
    tasks: deque = deque((i, 0) for i in range(n))

    def make_start(image: int, restart: int) -> torch.Tensor:
        return sample_for_ids(latent, [ids[image]], settings.seed, restart).reshape(dim)

    def on_done(res: TaskResult) -> None:
        i = res.image
        runs[i] += 1
        seconds[i] += res.seconds
        cur = best[i]
        if cur is None or res.loss < cur.loss or (res.loss == cur.loss and res.restart < cur.restart):
            best[i] = res
        more = res.restart + 1 < settings.restarts
        if more and settings.adaptive_threshold is not None:
            more = not best[i].loss <= settings.adaptive_threshold
        if more:
            tasks.appendleft((i, res.restart + 1))  # depth first: finish an image's restarts before new images

    with torch.inference_mode(False), torch.enable_grad():
        opt.run(tasks, make_start, on_done)
    return _table(ids, best, runs, seconds, settings, generator, latent)


def _table(ids, best, runs, seconds, settings, generator, latent) -> pa.Table:
    finite = [r is not None and np.isfinite(r.loss) for r in best]
    mse = torch.tensor([r.mse if ok else float("nan") for r, ok in zip(best, finite)], dtype=torch.float64)
    cols = {
        "image_id": pa.array(ids, pa.string()),
        "error": pa.array([r.loss if ok else float("nan") for r, ok in zip(best, finite)], pa.float64()),
        "mse": pa.array(mse.numpy(), pa.float64()),
        "mae": pa.array([r.mae if ok else float("nan") for r, ok in zip(best, finite)], pa.float64()),
        "psnr": pa.array(psnr(mse, generator.spec.output_range).numpy(), pa.float64()),
        "restarts": pa.array(runs, pa.int32()),
        "best_restart": pa.array([r.restart for r in best], pa.int32()),
        "iterations": pa.array([r.iterations for r in best], pa.int32()),
        "converged": pa.array([r.converged for r in best], pa.bool_()),
        "seconds": pa.array(seconds, pa.float64()),
        "failure": pa.array(
            [None if ok else (r.failure or "the generator gave no finite loss from any start") for r, ok in zip(best, finite)],
            pa.string(),
        ),
    }
    if settings.keep_latent:
        dim = int(np.prod(latent.shape))
        z = torch.stack([to_prior_space(r.latent[None], latent).reshape(dim) for r in best]) if best else torch.empty(0, dim)
        cols["latent"] = pa.FixedSizeListArray.from_arrays(pa.array(z.numpy().reshape(-1), pa.float32()), dim)
    if settings.keep_trace:
        cols["trace"] = pa.array([r.trace.numpy().astype(np.float32) for r in best], pa.list_(pa.float32()))
    return pa.table(cols)


def sample_generated(
    generator: LoadedGenerator,
    image_ids: Sequence[str],
    *,
    seed: int,
    settings: RecoverySettings = RecoverySettings(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated split: z0 [N, *latent] seeded per image id, and G(z0) [N, C, H, W] at the audit resolution."""
    z0 = sample_for_ids(generator.latent, [str(i) for i in image_ids], seed, GENERATED_TAG)
    return z0, render(generator, z0, settings=settings)


@torch.no_grad()
def render(generator: LoadedGenerator, latents: torch.Tensor, *, settings: RecoverySettings = RecoverySettings()) -> torch.Tensor:
    """G(z) at the audit resolution for latents [N, *latent] (or flat [N, D]), on the CPU."""
    shape = target_shape(generator, settings)
    out = []
    for chunk in latents.split(max(1, settings.batch_size)):
        z = chunk.to(generator.device).reshape(len(chunk), *generator.latent.shape)
        out.append(to_audit_resolution(generator(z), shape).float().cpu())
    return torch.cat(out) if out else torch.empty((0, *shape))
