"""recover(): the latent recovery error of every target (Webster et al., CVPR 2019), as an Arrow table.

    e(x) = min over restarts r of min_z loss(A(G(z)), A(x)),   z_r ~ prior seeded by (seed, image id, r)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from . import batching
from .batching import BatchOutputError, check_batch_output, single_dtype
from .errors import RecoveryError
from .loaded import LoadedGenerator
from .objective import Objective, psnr, target_shape, to_audit_resolution
from .optim import MAX_ITERATIONS, StopRules
from .optimizers import make_optimizer
from .priors import check_geometry, sample_for_ids, stream, to_prior_space
from .restarts import ImageSearch, RestartScheduler
from .screening import Screener
from .settings import RecoverySettings

log = logging.getLogger("memaudit.recovery")

GENERATED_TAG = "generated"  # the stream tag of generated images' z0, distinct from every restart index
GENERATED_LABEL_TAG = "generated-label"  # and of their classes


def _latent_fn(latent, geometry: str):
    return lambda u: to_prior_space(u, latent, geometry)


def _evaluator(objective: Objective, to_latent, dim: int, penalty: float):
    """Batched loss and per-image gradient; a G that raises is retried image by image so only the culprits fail."""

    def run(points: torch.Tensor, index: torch.Tensor):
        u = points.detach().requires_grad_(True)
        z = to_latent(u)  # [n, *latent]
        loss, mse, mae = objective(z, index)
        if penalty:
            loss = loss + penalty * z.reshape(len(z), -1).square().mean(1)  # lambda |z|^2 / d
        (grad,) = torch.autograd.grad(loss.sum(), u)
        return loss.detach(), mse, mae, grad, [None] * len(points)

    warned = []

    def evaluate(points: torch.Tensor, index: torch.Tensor):
        try:
            return run(points, index)
        except (torch.OutOfMemoryError, BatchOutputError):  # the device's or G's fault, not one image's
            raise
        except Exception as e:  # noqa: BLE001 - recorded on the image's row, never silent
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if len(points) == 1:
                inf = torch.full((1,), float("inf"), device=points.device)
                return inf, inf, inf, torch.zeros(1, dim, device=points.device), [f"generator raised {message}"]
            if not warned:  # a G that fails only on large batches would otherwise run len(points) times slower, unsaid
                warned.append(True)
                log.warning("generator (%s) raised on a batch of %d latents (%s); retrying image by image, which is "
                            "slower: if it fails only on large batches, set recovery.batch_size lower",
                            batching.generator_name(objective.generator), len(points), message)
        parts = [evaluate(points[k : k + 1], index[k : k + 1]) for k in range(len(points))]
        return (*(torch.cat([p[j] for p in parts]) for j in range(4)), [p[4][0] for p in parts])

    return evaluate


def batch_size_for(generator: LoadedGenerator, settings: RecoverySettings) -> int:
    """settings.batch_size, or when unset the device's default for the audit shape (recovery.batching: on a CPU
    16 at 3x64x64, 64 at 1x32x32, 1 at 3x256x256; on CUDA 64 up to 3x256x256, 4 at 3x1024x1024)."""
    return settings.batch_size or batching.default_batch_size(generator.device, target_shape(generator, settings))


def evaluation_step(generator: LoadedGenerator, settings: RecoverySettings, b: int, *,
                    feature_net: nn.Module | None = None, seed: int = 0) -> Callable[[], None]:
    """One batched evaluation of the search (loss and latent gradient for b random targets, through G, the
    operator and the loss) as a function, for timing batch sizes (recovery.batching.rates)."""
    latent, plan = generator.latent, settings.plan()
    dim, to_latent = int(np.prod(latent.shape)), _latent_fn(latent, plan.geometry)
    lo, hi = generator.spec.output_range
    seeded = torch.Generator().manual_seed(seed)
    targets = torch.rand((b, *target_shape(generator, settings)), generator=seeded) * (hi - lo) + lo  # [b, C, H, W]
    labels = torch.zeros(b, dtype=torch.long) if generator.num_classes else None
    objective = Objective(generator, targets, replace(settings, batch_size=b), feature_net, labels)
    evaluate = _evaluator(objective, to_latent, dim, settings.latent_penalty)
    points = generator.draw(b, seeded, 0 if generator.num_classes else None).reshape(b, dim).to(generator.device)
    index = torch.arange(b, device=generator.device)

    def step() -> None:
        with torch.inference_mode(False), torch.enable_grad():
            evaluate(points, index)

    return step


def recover(
    generator: LoadedGenerator,
    targets: torch.Tensor,  # [N, C, H, W] float32 in generator.spec.output_range, at target_shape(generator, settings)
    image_ids: Sequence[str],
    *,
    settings: RecoverySettings = RecoverySettings(),
    device: str | torch.device | None = None,
    feature_net: nn.Module | None = None,
    encoder: nn.Module | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """One row per target, in input order: the recovery error and how it was reached.

    Columns: image_id, error (the configured loss), mse, mae, psnr (of the best recovery under the
    operator), restarts (run), best_restart, iterations and converged (of the best restart), seconds
    (this image's share of compute), failure (null, or why G gave no finite value for any start), and
    latent / trace when settings.keep_latent / keep_trace.

    encoder: an optional learned start (recovery.train_encoder, fitted to G's own samples): its guess
    E(x) [N, D] joins the screening of every image's first start. A style-based generator searched in W or W+
    adds its w_avg there too.

    labels: for a conditional generator, each target's class index [N] (int64, 0 <= label < K); then the
    table has a `label` column. Without labels the class is searched with the starts (recovery.screening: each
    start's screening draws are spread over the classes and the best (class, draw) pair starts the search, so
    it costs about what a known class does); `label` is the class of the best start, `label_searched` is true.
    Labels for an unconditional generator are an error.

    progress: called with the number of images finished so far each time an image's search ends (the job
    reports images done inside a shard with it).
    """
    if device is not None and torch.device(device) != generator.device:
        raise RecoveryError(f"device {device} differs from the generator's device {generator.device}; load the generator there")
    ids = [str(i) for i in image_ids]
    if len(ids) != len(targets):
        raise RecoveryError(f"{len(targets)} targets but {len(ids)} image ids")
    if len(set(ids)) != len(ids):
        raise RecoveryError("image ids must be unique: each seeds its own restarts")
    if settings.start == "encoder" and encoder is None:
        raise RecoveryError("recovery.start: 'encoder' needs an encoder; pass encoder=recovery.train_encoder(generator, ...)")
    if settings.start == "prior" and encoder is not None:
        raise RecoveryError("recovery.start: is 'prior', so the encoder passed would be ignored; "
                            "set start='encoder' (or 'auto') to use it")
    if labels is not None and not generator.num_classes:
        raise RecoveryError("labels given for an unconditional generator (no generator.classes); a label column needs a conditional G(z, c)")
    if settings.batch_size is None:
        settings = replace(settings, batch_size=batch_size_for(generator, settings))
    if generator.num_classes and labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != len(ids):
            raise RecoveryError(f"{len(ids)} targets but {len(labels)} labels")
        bad = (labels < 0) | (labels >= generator.num_classes)
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            raise RecoveryError(f"image {ids[k]}: label {int(labels[k])} is outside generator.classes (0..{generator.num_classes - 1})")
    try:
        return _recover(generator, targets, ids, settings, feature_net, encoder, labels, progress)
    except torch.OutOfMemoryError:
        raise _out_of_memory(generator, settings) from None


def _out_of_memory(generator: LoadedGenerator, settings: RecoverySettings) -> RecoveryError:
    """The error for a batch that does not fit on the device: what was tried and the setting that fixes it."""
    shape = "x".join(map(str, target_shape(generator, settings)))
    return RecoveryError(f"out of {generator.device.type} memory searching {settings.batch_size} images of {shape} side by "
                         f"side; set recovery.batch_size lower (e.g. {max(1, settings.batch_size // 2)})")


def _recover(generator: LoadedGenerator, targets: torch.Tensor, ids: list[str], settings: RecoverySettings,
             feature_net: nn.Module | None, encoder: nn.Module | None, labels: torch.Tensor | None,
             progress: Callable[[int], None] | None = None) -> pa.Table:
    n = len(ids)
    latent, plan = generator.latent, settings.plan()
    check_geometry(latent, plan.geometry)
    dim = int(np.prod(latent.shape))
    class_search = bool(generator.num_classes) and labels is None
    objective = Objective(generator, targets, settings, feature_net,
                          torch.zeros(n, dtype=torch.long) if class_search else labels)  # a class search sets them per start
    to_latent = _latent_fn(latent, plan.geometry)
    guesses = _guesses(encoder, targets, settings.batch_size, generator.device)  # [N, 1, D] or None
    if generator.anchor is not None:
        anchor = generator.anchor.reshape(1, 1, dim).expand(n, 1, dim)
        guesses = anchor if guesses is None else torch.cat([guesses, anchor], 1)
    screen = Screener(objective, to_latent, ids, settings, plan, guesses, class_search=class_search)
    scheduler = RestartScheduler(n, plan, exact_level=settings.exact_level, adaptive_threshold=settings.adaptive_threshold,
                                 screen=screen)
    rules = StopRules(exact_level=settings.exact_level, patience=settings.patience,
                      stall_ratio=settings.stall_ratio, tolerance=settings.tolerance, stop_mse=plan.stop_mse)
    opt = make_optimizer(
        settings.optimizer,
        _evaluator(objective, to_latent, dim, settings.latent_penalty),
        dim,
        slots=max(1, min(settings.batch_size, n)),
        lr=settings.lr,
        history=settings.history,
        rules=rules,
        keep_trace=settings.keep_trace,
        trace_length=min(plan.iterations or MAX_ITERATIONS, plan.budget or MAX_ITERATIONS),
        device=generator.device,
    )
    with torch.inference_mode(False), torch.enable_grad():
        opt.run(scheduler.next_tasks, scheduler.on_done if progress is None else _counting(scheduler, progress))
    table = _table(ids, scheduler.images, settings, generator, to_latent)
    if class_search:  # the class of each image's best start
        found = [screen.chosen[(i, s.best.restart)] for i, s in enumerate(scheduler.images)]
        return table.append_column("label", pa.array(found, pa.int32())).append_column("label_searched", pa.array([True] * n))
    if labels is not None:
        return table.append_column("label", pa.array(labels.numpy(), pa.int32()))
    return table


def _counting(scheduler: RestartScheduler, progress: Callable[[int], None]):
    """scheduler.on_done that also calls progress(images finished so far) when an image's last start ends
    (on_done queued no further start for it)."""
    finished = 0

    def on_done(result) -> None:
        nonlocal finished
        queued = len(scheduler.pending)
        scheduler.on_done(result)
        if len(scheduler.pending) == queued:
            finished += 1
            progress(finished)

    return on_done


@torch.no_grad()
def _guesses(encoder: nn.Module | None, targets: torch.Tensor, chunk: int, device: torch.device) -> torch.Tensor | None:
    """The encoder's latent for every target, [N, D] on the CPU; None without an encoder."""
    if encoder is None:
        return None
    parts = [encoder(targets[j : j + chunk].to(device)).float().cpu() for j in range(0, len(targets), max(1, chunk))]
    return torch.cat(parts).reshape(len(targets), 1, -1)


def _error(r, settings: RecoverySettings, z: torch.Tensor) -> float:
    """The configured loss of the best point, without the latent penalty that was optimized with it."""
    if settings.loss == "mse":
        return r.mse
    if settings.loss == "mae":
        return r.mae
    return r.loss - settings.latent_penalty * float(z.square().mean())


def _table(ids: list[str], images: list[ImageSearch], settings: RecoverySettings, generator, to_latent) -> pa.Table:
    best = [s.best for s in images]
    finite = [r is not None and np.isfinite(r.loss) for r in best]
    nan = float("nan")
    dim = int(np.prod(generator.latent.shape))
    z = to_latent(torch.stack([r.latent for r in best])).reshape(len(best), dim) if best else torch.empty(0, dim)  # [N, D]
    mse = torch.tensor([r.mse if ok else nan for r, ok in zip(best, finite)], dtype=torch.float64)
    cols = {
        "image_id": pa.array(ids, pa.string()),
        "error": pa.array([_error(r, settings, zi) if ok else nan for r, ok, zi in zip(best, finite, z)], pa.float64()),
        "mse": pa.array(mse.numpy(), pa.float64()),
        "mae": pa.array([r.mae if ok else nan for r, ok in zip(best, finite)], pa.float64()),
        "psnr": pa.array(psnr(mse, generator.spec.output_range).numpy(), pa.float64()),
        "restarts": pa.array([s.starts for s in images], pa.int32()),
        "best_restart": pa.array([r.restart for r in best], pa.int32()),
        "iterations": pa.array([r.iterations for r in best], pa.int32()),
        "converged": pa.array([r.converged for r in best], pa.bool_()),
        "stop": pa.array([r.stop for r in best], pa.string()),
        "evaluations": pa.array([s.evaluations for s in images], pa.int64()),
        "evaluations_to_exact": pa.array([s.evaluations_to_exact for s in images], pa.int64()),
        "latent_norm": pa.array((z.double().norm(dim=1) / dim**0.5).numpy(), pa.float64()),
        "seconds": pa.array([s.seconds for s in images], pa.float64()),
        "failure": pa.array(
            [None if ok else (r.failure or "the generator gave no finite loss from any start") for r, ok in zip(best, finite)],
            pa.string(),
        ),
    }
    if settings.keep_latent:
        cols["latent"] = pa.FixedSizeListArray.from_arrays(pa.array(z.float().numpy().reshape(-1), pa.float32()), dim)
    if settings.keep_trace:
        cols["trace"] = pa.array([r.trace.numpy().astype(np.float32) for r in best], pa.list_(pa.float32()))
    return pa.table(cols)


def generated_labels(generator: LoadedGenerator, image_ids: Sequence[str], *, seed: int) -> torch.Tensor | None:
    """The generated split's classes: one uniform draw per image id (seeded by seed and id), [N] int64; None
    for an unconditional generator."""
    if not generator.num_classes:
        return None
    k = generator.num_classes
    return torch.tensor([int(torch.randint(0, k, (1,), generator=stream(seed, str(i), GENERATED_LABEL_TAG))) for i in image_ids],
                        dtype=torch.long)


def sample_generated(
    generator: LoadedGenerator,
    image_ids: Sequence[str],
    *,
    seed: int,
    settings: RecoverySettings = RecoverySettings(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated split: z0 [N, *latent] seeded per image id, and G(z0) [N, C, H, W] at the audit resolution.

    z0 is in the searched space (w for a style-based generator searched in W); a conditional generator's images
    are of the classes generated_labels(generator, image_ids, seed=seed) gives."""
    ids = [str(i) for i in image_ids]
    labels = generated_labels(generator, ids, seed=seed)
    if generator.latent.prior == "mapped" or labels is not None:
        draws = [generator.draw(1, stream(seed, i, GENERATED_TAG), int(labels[j]) if labels is not None else None) for j, i in enumerate(ids)]
        z0 = torch.cat(draws) if draws else torch.empty((0, *generator.latent.shape))
    else:
        z0 = sample_for_ids(generator.latent, ids, seed, GENERATED_TAG)
    return z0, render(generator, z0, settings=settings, labels=labels, range_check=True)


@torch.no_grad()
def render(generator: LoadedGenerator, latents: torch.Tensor, *, settings: RecoverySettings = RecoverySettings(),
           labels: torch.Tensor | None = None, range_check: bool = False) -> torch.Tensor:
    """G(z) (G(z, c) for labels [N] int64) at the audit resolution for latents [N, *latent] (or flat [N, D]), on the CPU.

    range_check: the latents are prior draws, so the output must lie in output_range as at load (batching.py)."""
    shape = target_shape(generator, settings)
    out = []
    step = batch_size_for(generator, settings)
    dtype = single_dtype(generator) if len(latents) else None
    for j, chunk in enumerate(latents.split(step)):
        z = chunk.to(generator.device).reshape(len(chunk), *generator.latent.shape)
        c = labels[j * step : j * step + len(chunk)] if labels is not None else None
        x = check_batch_output(generator, generator(z, c), dtype, range_check=range_check)  # [b, C, H, W] as at load
        out.append(to_audit_resolution(x, shape).float().cpu())
    return torch.cat(out) if out else torch.empty((0, *shape))
