"""The search's batch size: a default per device, and a measurement to choose one (recovery.batch_size).

How many images share one forward and backward pass decides the search's speed. On a GPU throughput
grows with the batch until the device is full; on a CPU a batch whose activations leave the caches runs
slower per image than a small one: on 2 cores the trained upsample+conv generator does about 410
image-evaluations/s at 16 and 210 at 64, and the DCGAN is flat from 8 to 64, while a 32x32 generator runs
best at 64. Hence a CPU default that shrinks with the image (default_batch_size).

The default is a fixed number per device type, not a timing taken at run time, because the batch size
reaches the last bits of a result: convolution kernels pick their algorithm by batch shape, so a trained
generator's search can follow a slightly different path at 16 than at 8 (the same images are recovered,
a few evaluations apart). A measured size would make two runs of one config differ. `rates()` measures
instead for a user who wants to pick a number (benchmarks/batch_size.py prints it).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import posixpath
import time
from typing import TYPE_CHECKING, Callable

import torch

from .errors import RecoveryError

if TYPE_CHECKING:
    from .loaded import LoadedGenerator

MAX_DEFAULT = 64
CPU_PIXELS = 1 << 18  # output values per batch on a CPU: 16 images of 3x64x64, 64 of 1x32x32, 1 of 3x256x256
CUDA_PIXELS = 1 << 24  # on a GPU: 64 images up to 3x256x256, 16 of 3x512x512, 4 of 3x1024x1024 (what fits beside
#                        a style-based generator's activations on a 24 GB card; a bigger card may take more)
CPU_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
CUDA_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
MIN_SECONDS = 0.2  # timed per size, after one warm-up step (and at least 2 steps)
MAX_STEP_SECONDS = 2.0  # a size whose one step takes longer is the last one tried (a big G on a CPU)


def default_batch_size(device: torch.device, shape: tuple[int, ...]) -> int:
    """recovery.batch_size when unset, from the device type and the audit shape (C, H, W): the largest power of two
    up to MAX_DEFAULT whose batch holds at most CPU_PIXELS output values on a CPU (the activations stay in the
    caches) or CUDA_PIXELS on a GPU (they fit in its memory)."""
    budget = CUDA_PIXELS if device.type == "cuda" else CPU_PIXELS
    values = max(1, math.prod(shape))
    return max(1, min(MAX_DEFAULT, 1 << max(0, (budget // values).bit_length() - 1)))


def rates(make_step: Callable[[int], Callable[[], None]], device: torch.device,
          sizes: tuple[int, ...] | None = None) -> dict[int, float]:
    """Images per second of make_step(b)() (one batched evaluation of b images) for each size, smallest first;
    stops at the first size that does not fit in memory or whose one step takes over MAX_STEP_SECONDS."""
    found: dict[int, float] = {}
    for b in sizes or (CUDA_SIZES if device.type == "cuda" else CPU_SIZES):
        rate, last = _rate(make_step, b, device)
        if rate is not None:
            found[b] = rate
        if last:
            break
    return found


def _rate(make_step: Callable[[int], Callable[[], None]], b: int, device: torch.device) -> tuple[float | None, bool]:
    """(images per second at batch b or None if b does not fit, whether to stop trying larger sizes)."""
    try:
        step = make_step(b)
        t = time.perf_counter()
        step()  # warm-up: allocations, kernel and oneDNN primitive selection
        _sync(device)
        first = time.perf_counter() - t
        if first > MAX_STEP_SECONDS:
            return b / first, True
        n, t = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t < MIN_SECONDS:
            step()
            n += 1
        _sync(device)
        return b * n / (time.perf_counter() - t), False
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BatchOutputError(RecoveryError):
    """G's output for one batch is not what its load check measured: a fault of G, never of one image.

    The search's per-image fallback (a G that raises is retried image by image, so only the culprits
    fail) must not catch it: batches of one might pass again, and the run would go on slowly with
    the fault hidden, so it stops the search and names the generator, the batch size and both shapes.
    """


def generator_name(generator: LoadedGenerator) -> str:
    """How the config names G, its file's name only (a URL's query string may hold a signature)."""
    spec = generator.spec
    for key in ("torchscript", "factory", "builtin", "pickle", "diffusers"):
        value = getattr(spec, key, None)
        if value:
            text = str(value)
            return f"{key} {text if key in ('factory', 'builtin') else posixpath.basename(text.split('?')[0].rstrip('/'))}"
    return "generator"


@torch.no_grad()
def single_dtype(generator: LoadedGenerator) -> torch.dtype:
    """The dtype of G's output for one latent: what every batch must match (one forward pass, per search)."""
    z = torch.zeros((1, *generator.latent.shape), device=generator.device)
    labels = torch.zeros(1, dtype=torch.long, device=generator.device) if generator.num_classes else None
    x = generator(z, labels)
    return x.dtype if isinstance(x, torch.Tensor) else torch.float32


def check_batch_output(generator: LoadedGenerator, x: torch.Tensor, dtype: torch.dtype, *,
                       range_check: bool = False) -> torch.Tensor:
    """x = G(z) for one batch [B, C, H, W]: the load check's shape (C, H, W) and the dtype of a batch of one
    (single_dtype), else BatchOutputError.

    The load check runs G on 3 latents and on 1; a G whose output changes with the batch size (a shape
    computed from it, a half-precision path for large batches) would otherwise be resized or cast
    silently. range_check (for prior draws, as the load check's): values within output_range plus
    5% of its width, as the load check requires; the search's own latents may wander, so it does not.
    """
    expected = list(generator.output_shape)
    found = list(x.shape[1:]) if isinstance(x, torch.Tensor) else None
    problem = None
    if found != expected:
        shown = found if found is not None else type(x).__name__
        problem = f"output is {shown}, but {expected} in the load check (batches of 3 and 1)"
    elif x.dtype != dtype:
        problem = f"output dtype {x.dtype}, but {dtype} for one latent"
    elif range_check and len(x):
        lo, hi = generator.spec.output_range
        slack = 0.05 * (hi - lo)
        finite = x[torch.isfinite(x)]  # NaN or inf images are each image's failure (a rejects row), not the batch's
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (lo, hi)
        if low < lo - slack or high > hi + slack:
            problem = f"output spans [{low:.3g}, {high:.3g}], outside generator.output_range [{lo:g}, {hi:g}]"
    if problem is not None:
        raise BatchOutputError(
            f"generator ({generator_name(generator)}): for a batch of {len(x)} latents its {problem}; "
            "its output must not depend on the batch size (set recovery.batch_size to a size it handles, or fix G)"
        )
    beat = _BEAT.get()
    if beat is not None:
        beat()
    return x


_BEAT: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("memaudit_beat", default=None)


@contextlib.contextmanager
def heartbeat(beat: Callable[[], None]):
    """Within the block, beat() is called after every batch of G's output is checked (check_batch_output).

    A caller that watches for a generator that never returns (the job's job.batch_timeout) learns from it
    that G still makes progress, whatever the search does between calls; a context variable rather than an
    argument, so every path to G (sampling, screening, the search, rendering) reports without a new parameter.
    """
    token = _BEAT.set(beat)
    try:
        yield
    finally:
        _BEAT.reset(token)
