"""Typed, frozen settings for one recovery run; defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RecoveryError

LOSSES = ("mse", "mae", "features")
OPERATORS = ("identity", "mask", "pool")
OPTIMIZERS = ("lbfgs", "adam", "sgd")
PRIORS = ("normal", "uniform", "sphere")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecoveryError(f"{name}: {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class LatentSpec:
    """The generator's latent: shape without the batch dimension, and the prior restarts draw from.

    normal: N(0, I); uniform: U(-1, 1) per coordinate; sphere: uniform on the unit sphere (GLO).
    """

    shape: tuple[int, ...]
    prior: str = "normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s <= 0 for s in self.shape):
            raise RecoveryError(f"generator.latent.shape: must be a non-empty list of positive ints, got {list(self.shape)}")
        _choice("generator.latent.prior", self.prior, PRIORS)


@dataclass(frozen=True)
class GeneratorSpec:
    """Where a generator comes from; exactly one of torchscript, factory, builtin.

    factory is 'package.module:callable' called with kwargs; builtin is a key of recovery.models.BUILTINS.
    A checkpoint is loaded with torch.load(weights_only=True) unless trust_checkpoint is set (which runs pickle).
    """

    latent: LatentSpec
    torchscript: str | None = None
    factory: str | None = None
    builtin: str | None = None
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    output_range: tuple[float, float] = (-1.0, 1.0)
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        given = [k for k in ("torchscript", "factory", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise RecoveryError(
                "generator: give exactly one of torchscript, factory, builtin"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        lo, hi = (float(v) for v in self.output_range)
        if not lo < hi:
            raise RecoveryError(f"generator.output_range: need [low, high] with low < high, got {list(self.output_range)}")
        object.__setattr__(self, "output_range", (lo, hi))
        if self.torchscript and (self.checkpoint or self.kwargs):
            raise RecoveryError("generator: a torchscript generator takes no checkpoint or kwargs")
        if self.factory and ":" not in self.factory:
            raise RecoveryError(f"generator.factory: expected 'package.module:callable', got {self.factory!r}")
        if self.checkpoint_key and not self.checkpoint:
            raise RecoveryError("generator.checkpoint_key: given without a checkpoint")


@dataclass(frozen=True)
class OperatorSpec:
    """A, the operator applied to both G(z) and the target before the loss (DESIGN §1).

    mask: only pixels inside boxes [top, left, height, width] count (local recovery, inpainting);
    pool: average pooling by factor (coarse structure only).
    """

    kind: str = "identity"
    boxes: tuple[tuple[int, int, int, int], ...] = ()
    factor: int = 2

    def __post_init__(self) -> None:
        _choice("recovery.operator.kind", self.kind, OPERATORS)
        boxes = tuple(tuple(int(v) for v in b) for b in self.boxes)
        object.__setattr__(self, "boxes", boxes)
        if self.kind == "mask":
            if not boxes:
                raise RecoveryError("recovery.operator.boxes: a mask needs at least one [top, left, height, width] box")
            for i, b in enumerate(boxes):
                if len(b) != 4 or b[0] < 0 or b[1] < 0 or b[2] <= 0 or b[3] <= 0:
                    raise RecoveryError(f"recovery.operator.boxes[{i}]: expected [top, left, height, width] with height, width > 0, got {list(b)}")
        if self.kind == "pool" and int(self.factor) < 1:
            raise RecoveryError(f"recovery.operator.factor: must be >= 1, got {self.factor}")


@dataclass(frozen=True)
class RecoverySettings:
    """Everything that changes a recovery result (so all of it goes into the job's fingerprint).

    loss: the objective and the reported `error`; mse per pixel is the paper's.
    optimizer: lbfgs (paper default, ~50 iterations), adam or sgd (~500 iterations).
    iterations: optimizer iterations per restart (an L-BFGS iteration may evaluate G more than once in its line search).
    restarts: random starts per image, best kept. adaptive_threshold: if set, restarts after the first run only
      for images whose best error is still above it.
    lr: step size; None picks the optimizer's default (lbfgs 1.0 with line search, adam 0.05; sgd (momentum 0.9)
      sizes each image's steps so its first moves 1% of the latent's norm, since MSE gradients scale with the image).
    history: L-BFGS memory. tolerance: an image stops when an iteration lowers its loss by less than this fraction
      (1e-5: about a hundred float32 roundings; smaller only chases noise) or its loss is below 1e-10 (exact).
    resolution: audit side length; None uses the generator's output size, smaller pools G(z) down to it.
    keep_latent / keep_trace: add the recovered latent / the error after each iteration to the results.
    """

    loss: str = "mse"
    operator: OperatorSpec = OperatorSpec()
    optimizer: str = "lbfgs"
    iterations: int = 50
    restarts: int = 1
    adaptive_threshold: float | None = None
    batch_size: int = 64
    seed: int = 0
    lr: float | None = None
    history: int = 10
    tolerance: float = 1e-5
    resolution: int | None = None
    keep_latent: bool = False
    keep_trace: bool = False

    def __post_init__(self) -> None:
        _choice("recovery.loss", self.loss, LOSSES)
        _choice("recovery.optimizer", self.optimizer, OPTIMIZERS)
        for name in ("iterations", "restarts", "batch_size", "history"):
            if int(getattr(self, name)) < 1:
                raise RecoveryError(f"recovery.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise RecoveryError(f"recovery.lr: must be > 0, got {self.lr}")
        if self.resolution is not None and int(self.resolution) < 1:
            raise RecoveryError(f"recovery.resolution: must be >= 1, got {self.resolution}")
