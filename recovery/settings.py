"""Typed, frozen settings for one recovery run; defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import RecoveryError

LOSSES = ("mse", "mae", "features")
OPERATORS = ("identity", "mask", "pool")
OPTIMIZERS = ("lbfgs", "adam", "sgd")
PRIORS = ("normal", "uniform", "sphere", "mapped")
SPACES = ("z", "w", "w_plus")
NOISES = ("const", "zero", "optimize")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
ENCODINGS = ("one_hot", "index")
PROTOCOLS = ("adaptive", "paper")
STARTS = ("auto", "prior", "encoder")
GEOMETRIES = ("free", "shell")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecoveryError(f"{name}: {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class LatentSpec:
    """The generator's latent: shape without the batch dimension, and the prior restarts draw from.

    normal: N(0, I); uniform: U(-1, 1) per coordinate; sphere: uniform on the unit sphere (GLO);
    mapped: w = mapping(z), z ~ N(0, I) (a style-based generator searched in W or W+; set by the loader, not by users).
    """

    shape: tuple[int, ...]
    prior: str = "normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s <= 0 for s in self.shape):
            raise RecoveryError(f"generator.latent.shape: must be a non-empty list of positive ints, got {list(self.shape)}")
        _choice("generator.latent.prior", self.prior, PRIORS)


@dataclass(frozen=True)
class ClassesSpec:
    """A conditional generator's classes: G(z, c), c one of `names`, fed to G as `encoding`.

    one_hot: c is a float [B, K] one-hot row (StyleGAN2-ADA's c_dim = K); index: c is an int64 [B] class index.
    """

    names: tuple[str, ...]
    encoding: str = "one_hot"

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise RecoveryError("generator.classes.names: a conditional generator needs at least one class")
        if len(set(names)) != len(names):
            raise RecoveryError(f"generator.classes.names: duplicate names in {list(names)}")
        _choice("generator.classes.encoding", self.encoding, ENCODINGS)

    def index(self, label: object, where: str = "label") -> int:
        """The class index of a label given by name (or by its position when the names are 0..K-1)."""
        key = str(label)
        if key not in self.names:
            raise RecoveryError(f"{where}: {label!r} is not one of generator.classes.names ({', '.join(self.names[:20])})")
        return self.names.index(key)


DIFFUSION_STATISTICS = ("denoise", "inversion", "proximal")


@dataclass(frozen=True)
class DiffusionSettings:
    """How a diffusion model (generator.diffusers) is audited (recovery/diffusion_stats.py); every statistic is a
    results column, `statistic` names the one that becomes `error` (the verdict's, the ranking's, the report's).

    denoise: the loss-based membership statistic (Matsumoto et al. 2023), the mean over `timesteps` and `noises`
      seeded noises of ||eps - eps_theta(x_t, t)||^2 per pixel. inversion: the per-pixel MSE between the image
      and its DDIM reconstruction (deterministic inversion over `steps` steps to the last timestep, then sampling
      back): the analogue of latent recovery. proximal: PIA's statistic (Kong et al. 2024), the denoising error at
      `timesteps` with the model's own eps_theta(x_0, 0) as the noise instead of a random one.
    steps: DDIM steps of the sampler (the generated split, the samples) and of the inversion.
    """

    statistic: str = "denoise"
    timesteps: tuple[int, ...] = (50, 100, 150, 200, 250, 300)
    noises: int = 2
    steps: int = 50

    def __post_init__(self) -> None:
        _choice("generator.diffusion.statistic", self.statistic, DIFFUSION_STATISTICS)
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        if not self.timesteps or any(t < 0 for t in self.timesteps):
            raise RecoveryError(f"generator.diffusion.timesteps: a non-empty list of timesteps >= 0, got {list(self.timesteps)}")
        if self.noises < 1:
            raise RecoveryError(f"generator.diffusion.noises: at least 1, got {self.noises}")
        if self.steps < 2:
            raise RecoveryError(f"generator.diffusion.steps: at least 2, got {self.steps}")


@dataclass(frozen=True)
class GeneratorSpec:
    """Where a generator comes from; exactly one of torchscript, factory, builtin, pickle.

    factory is 'package.module:callable' called with kwargs; builtin is a key of recovery.models.BUILTINS.
    A checkpoint is loaded with torch.load(weights_only=True) unless trust_checkpoint is set (which runs pickle).
    Style-based generators: a factory returning a module with `mapping` and `synthesis`
    (StyleGAN2-ADA's interface), torchscript as {mapping: url, synthesis: url}, or a StyleGAN2-ADA / StyleGAN3
    network pickle (`pickle`, network `pickle_key`, only with trust_checkpoint). space: z | w | w_plus (None: w
    for a style-based generator, z otherwise); noise: const (the module's noise buffers, default) | zero |
    optimize (per image, with noise_penalty times the noise regularizer); w_avg_samples: mapped draws averaged
    for the start when the mapping has no w_avg buffer. latent may be None for a style-based generator (z_dim
    comes from it). classes: G(z, c) is conditional (see ClassesSpec). memory_format: auto (channels-last
    convolutions on a CPU when the generator gives the same images in it) | channels_last | contiguous
    (recovery/memory_format.py).
    """

    latent: LatentSpec | None = None
    torchscript: str | dict | None = None
    factory: str | None = None
    builtin: str | None = None
    pickle: str | None = None
    pickle_key: str = "G_ema"
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    output_range: tuple[float, float] = (-1.0, 1.0)
    trust_checkpoint: bool = False
    space: str | None = None
    noise: str = "const"
    noise_penalty: float = 1e-3
    w_avg_samples: int = 10_000
    classes: ClassesSpec | None = None
    memory_format: str = "auto"
    diffusers: str | None = None  # a diffusers save_pretrained folder (UNet2DModel + scheduler): recovery/diffusion.py
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)

    def __post_init__(self) -> None:
        given = [k for k in ("torchscript", "factory", "builtin", "pickle", "diffusers") if getattr(self, k)]
        if len(given) != 1:
            raise RecoveryError(
                "generator: give exactly one of torchscript, factory, builtin, pickle, diffusers"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        lo, hi = (float(v) for v in self.output_range)
        if not lo < hi:
            raise RecoveryError(f"generator.output_range: need [low, high] with low < high, got {list(self.output_range)}")
        object.__setattr__(self, "output_range", (lo, hi))
        if self.torchscript and (self.checkpoint or self.kwargs):
            raise RecoveryError("generator: a torchscript generator takes no checkpoint or kwargs")
        if isinstance(self.torchscript, dict) and sorted(self.torchscript) != ["mapping", "synthesis"]:
            raise RecoveryError(f"generator.torchscript: a style-based generator is {{mapping: <url>, synthesis: <url>}}, "
                                f"got keys {sorted(self.torchscript)}")
        if self.factory and ":" not in self.factory:
            raise RecoveryError(f"generator.factory: expected 'package.module:callable', got {self.factory!r}")
        if self.checkpoint_key and not self.checkpoint:
            raise RecoveryError("generator.checkpoint_key: given without a checkpoint")
        if self.pickle and (self.checkpoint or self.kwargs):
            raise RecoveryError("generator: a network pickle takes no checkpoint or kwargs (the pickle holds both)")
        if self.pickle and not self.trust_checkpoint:
            raise RecoveryError(
                f"generator.pickle: {self.pickle} is a Python pickle, and loading it runs code from it; "
                "set generator.trust_checkpoint: true if you trust the file"
            )
        if self.space is not None:
            _choice("generator.space", self.space, SPACES)
        _choice("generator.noise", self.noise, NOISES)
        _choice("generator.memory_format", self.memory_format, MEMORY_FORMATS)
        if not self.noise_penalty >= 0:
            raise RecoveryError(f"generator.noise_penalty: must be >= 0, got {self.noise_penalty}")
        if int(self.w_avg_samples) < 10_000:
            raise RecoveryError(f"generator.w_avg_samples: must be >= 10000 (the mean of fewer draws is a noisy start), got {self.w_avg_samples}")
        if self.latent is not None and self.latent.prior == "mapped":
            raise RecoveryError("generator.latent.prior: 'mapped' is set by the loader for W spaces; give z's prior (normal)")


@dataclass(frozen=True)
class OperatorSpec:
    """A, the operator applied to both G(z) and the target before the loss (DESIGN.md §1).

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
class SearchPlan:
    """The search's shape once `protocol` has filled what the user left unset (None = unbounded).

    iterations: cap per start (None: until the start converges, stalls or the budget runs out);
    stop_mse: a start ends as recovered once its MSE is below this (0: only at float32 precision);
    restarts: starts per image (None: adaptive, a new start while the image is above exact_level
    and has budget); screening: prior draws per start, the best of which starts the search;
    budget: generator evaluations per image over all starts and screening (None: no cap).
    start_cap: adaptive restarts only: starts per image that is not recovered (None: until the budget).
    """

    iterations: int | None
    restarts: int | None
    screening: int
    budget: int | None
    geometry: str
    stop_mse: float
    start_cap: int | None = None


# The adaptive defaults. Measured on trained generators (benchmarks/convergence.py):
# a handful of screened starts, each run to convergence, restarted while above exact_level.
DEFAULT_BUDGET = 1500
DEFAULT_SCREENING = 16
DEFAULT_STOP_MSE = 1e-4
PAPER = SearchPlan(iterations=50, restarts=1, screening=1, budget=None, geometry="free", stop_mse=0.0)
ADAPTIVE = SearchPlan(iterations=None, restarts=None, screening=DEFAULT_SCREENING, budget=None, geometry="free",
                      stop_mse=DEFAULT_STOP_MSE)


@dataclass(frozen=True)
class RecoverySettings:
    """Everything that changes a recovery result (so all of it goes into the job's fingerprint).

    protocol: "adaptive" (default) runs every start until it converges or stalls and restarts an
      image from a fresh seeded start while its MSE is above exact_level, until `budget` generator
      evaluations are spent; "paper" is Webster et al.'s fixed protocol (50 L-BFGS iterations, one
      unscreened start, no budget). Fields set explicitly override what the protocol fills in; setting
      `iterations` or `restarts` asks for a fixed protocol, the other one then taking the paper's value.
    loss: the objective and the reported `error`; mse per pixel is the paper's.
    optimizer: lbfgs (paper default), adam or sgd.
    iterations: cap on optimizer iterations per start; None: until the start converges or stalls
      (an L-BFGS iteration may evaluate G more than once in its line search).
    restarts: starts per image, best kept; None: adaptive (see protocol). adaptive_threshold: with a
      fixed count, restart after the first start only images whose best error is above it.
    budget: generator evaluations per image, over all its starts and screening draws; None: no cap
      when restarts is fixed, DEFAULT_BUDGET when it is adaptive.
    screening: prior draws per start, evaluated in one batched forward pass; the best one starts
      the search (1: the plain random start).
    start: "prior" draws every start from the prior; "encoder" adds a learned guess E(x) to the screening of each
      image's first start, E trained on the generator's own samples only (recovery.train_encoder, encoder_steps
      Adam steps of 64 samples; the job trains it once per generator and caches it beside the outputs). "auto"
      (the default) is "encoder" when recover() is given an encoder and "prior" otherwise; the job gives one
      when the audit has at least encoder_min_images images, where E's one-off training pays for itself (on
      the trained upsample+conv generator E cut evaluations per image from ~275 to ~85 after ~10 CPU-minutes
      of training: worth it beyond about 1000 images).
    encoder_min_images: with start "auto", the audit size (all splits) from which the job trains the encoder.
    start_cap: with adaptive restarts, the most starts an image that is not yet recovered gets. An image
      that is not in G's range (an unseen real image) never reaches exact_level, so without a cap it restarts until
      its budget is gone, and real images are nearly all of an audit. A start recovers an in-range image (a
      generated one, or a training image G copies) with some probability p that does not depend on the image's
      split, so S starts recover it with probability 1 - (1 - p)^S: the cap is the number of starts at which an
      in-range image is found with probability start_cap_recall. "auto" (the default): the job measures it on the
      generated split, searched first with no cap (stats.start_cap: a lower confidence bound on p, and at least the
      most starts any generated image needed), then searches the real splits with it; recover() on its own,
      which has no generated split to measure on, treats "auto" as no cap. An int: that many starts. None: no
      cap (every unrecovered image runs its whole budget, as before the cap existed).
    start_cap_recall: with start_cap "auto", the share of in-range images the cap must let through (0.999: on the
      bundled trained subjects 0.99 saved one more start per real image but left one near-copy of 16 on the
      conditional subject unfound, which 0.999 found; benchmarks/audit_cost.py).
    exact_level: the MSE (per pixel, on the generator's output scale, whatever the loss) below which
      an image counts as recovered: it ends adaptive restarts and `evaluations_to_exact` records when
      it was reached. 1e-3 is an RMS pixel error of 0.03 on [-1, 1] (PSNR 36 dB). For a generator with
      another output range, scale it (and stop_mse) by ((high - low) / 2)^2.
    stop_mse: a start ends, recovered, once its MSE is below this. None: 1e-4 (PSNR 46 dB, ten times below
      exact_level; going on to float32 precision costs about ten times the evaluations and changes no
      conclusion), 0 under the paper protocol; 0 runs until the loss is below 1e-10.
    geometry: "free" searches all of R^d; "shell" (normal prior only) keeps z on the sphere of
      radius sqrt(d), where almost all of N(0, I)'s mass lies, as the sphere prior does for GLO.
    latent_penalty: lambda of lambda * |z|^2 / d added to the optimized loss (not to the reported
      errors); 0 is off. It is in the loss's units: MSE of a good recovery is ~1e-3, so ~1e-4.
    patience, stall_ratio: a start that is above exact_level stalls when its loss is still above stall_ratio times
      its loss `patience` iterations earlier (0.9: it fell by less than 10% in 20 iterations); it then ends (and an
      adaptive search restarts). On trained generators many starts crawl through 1e-2..1e-3 before converging
      fast, so a stricter rule (0.5) cut most of them off and recovered fewer images with more restarts. These
      are L-BFGS iterations; Adam and SGD get ten times as many, as they need about ten times the iterations.
    lr: step size; None picks the optimizer's default (lbfgs 1.0 with line search, adam 0.05; sgd (momentum 0.9)
      sizes each image's steps so its first moves 1% of the latent's norm, since MSE gradients scale with the image).
    history: L-BFGS memory: curvature pairs kept per image (30: on the trained natural-image generators a quarter
      fewer evaluations than 10, at 2 x history x D floats per slot).
    tolerance: a start converges when an iteration lowers its loss by less than this fraction and a quasi-Newton
      step predicts no more (1e-5: about a hundred float32 roundings), or its loss is below 1e-10 (exact).
    resolution: audit side length; None uses the generator's output size, smaller pools G(z) down to it.
    batch_size: images searched side by side in one forward and backward pass; None (the default) shrinks with
      the image: on a CPU 16 at 3x64x64, on CUDA 64 up to 3x256x256 and 4 at 3x1024x1024 (recovery.batching). Which images are recovered does not depend on it; with convolution
      kernels that choose their algorithm by batch shape the last digits of a trained generator's errors may.
    keep_latent / keep_trace: add the recovered latent / the error after each iteration to the results.
    """

    protocol: str = "adaptive"
    loss: str = "mse"
    operator: OperatorSpec = OperatorSpec()
    optimizer: str = "lbfgs"
    iterations: int | None = None
    restarts: int | None = None
    budget: int | None = None
    screening: int | None = None
    start: str = "auto"
    encoder_steps: int = 2000
    encoder_min_images: int = 5000
    start_cap: int | str | None = "auto"
    start_cap_recall: float = 0.999
    exact_level: float = 1e-3
    stop_mse: float | None = None
    geometry: str | None = None
    latent_penalty: float = 0.0
    patience: int = 20
    stall_ratio: float = 0.9
    adaptive_threshold: float | None = None
    batch_size: int | None = None
    seed: int = 0
    lr: float | None = None
    history: int = 30
    tolerance: float = 1e-5
    resolution: int | None = None
    keep_latent: bool = False
    keep_trace: bool = False

    def __post_init__(self) -> None:
        _choice("recovery.protocol", self.protocol, PROTOCOLS)
        _choice("recovery.loss", self.loss, LOSSES)
        _choice("recovery.start", self.start, STARTS)
        _choice("recovery.optimizer", self.optimizer, OPTIMIZERS)
        if self.geometry is not None:
            _choice("recovery.geometry", self.geometry, GEOMETRIES)
        for name in ("iterations", "restarts", "budget", "screening", "encoder_steps", "encoder_min_images", "batch_size", "history", "patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise RecoveryError(f"recovery.{name}: must be >= 1, got {value}")
        for name in ("lr", "exact_level"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise RecoveryError(f"recovery.{name}: must be > 0, got {value}")
        if self.stop_mse is not None and not 0 <= self.stop_mse <= self.exact_level:
            raise RecoveryError(f"recovery.stop_mse: must be in [0, exact_level = {self.exact_level:g}], got {self.stop_mse}")
        if isinstance(self.start_cap, str) and self.start_cap != "auto":
            raise RecoveryError(f"recovery.start_cap: must be 'auto', an int >= 1 or null, got {self.start_cap!r}")
        if isinstance(self.start_cap, bool) or (isinstance(self.start_cap, int) and self.start_cap < 1):
            raise RecoveryError(f"recovery.start_cap: must be 'auto', an int >= 1 or null, got {self.start_cap!r}")
        if not 0 < self.start_cap_recall < 1:
            raise RecoveryError(f"recovery.start_cap_recall: must be in (0, 1), got {self.start_cap_recall}")
        if not 0 < self.stall_ratio < 1:
            raise RecoveryError(f"recovery.stall_ratio: must be in (0, 1), got {self.stall_ratio}")
        if not self.latent_penalty >= 0:
            raise RecoveryError(f"recovery.latent_penalty: must be >= 0, got {self.latent_penalty}")
        if self.resolution is not None and int(self.resolution) < 1:
            raise RecoveryError(f"recovery.resolution: must be >= 1, got {self.resolution}")

    def plan(self) -> SearchPlan:
        """What this search runs: the protocol's values for every field left unset."""
        base = PAPER if self.protocol == "paper" else ADAPTIVE
        if self.iterations is not None or self.restarts is not None:
            base = replace(base, iterations=PAPER.iterations, restarts=PAPER.restarts)  # a fixed protocol was asked for
        restarts = self.restarts if self.restarts is not None else base.restarts
        budget = self.budget
        if budget is None and restarts is None:
            budget = DEFAULT_BUDGET
        return SearchPlan(
            iterations=self.iterations if self.iterations is not None else base.iterations,
            restarts=restarts,
            screening=self.screening if self.screening is not None else base.screening,
            budget=budget,
            geometry=self.geometry if self.geometry is not None else base.geometry,
            stop_mse=self.stop_mse if self.stop_mse is not None else base.stop_mse,
            start_cap=self.start_cap if restarts is None and isinstance(self.start_cap, int) else None,
        )
