"""Settings of the statistics and the verdict, with their defaults in one place.

The defaults follow the paper (Webster et al., CVPR 2019) where it gives a number
(alpha, gap threshold) and are documented choices where it does not (the success
thresholds, the minimum sizes, the false discovery rate). The success thresholds
tau_real and tau_generated apply to the results' ``mse`` column (mean squared error per
pixel of images in [-1, 1], DESIGN.md §1) whatever loss the search optimized, so that
"recovered" means the same thing for every loss; results without an ``mse`` column (a
table written by hand) fall back to ``error``. The tests and the ranking use ``error``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stats.errors import StatsError


@dataclass(frozen=True)
class StatsSettings:
    """How errors are summarized, compared and judged.

    Attributes:
        alpha: family-wise error rate of the verdict. Its rules (one-sided KS, MRE-gap,
            per-image tail, low-quantile count; stats.verdict) each give a p-value for every
            pair, and Holm's procedure over all of them keeps the chance that any fires on
            exchangeable splits at most alpha, at every split size. The paper's 1%.
        gap_threshold: the rule "mre_gap" fires only when the MRE-gap is credibly above
            this: the lower end of its bootstrap interval exceeds it and its bootstrap
            p-value for "gap <= gap_threshold" survives Holm. The paper's 10%, which the
            paper applied to the point estimate (a rule that fires by chance 27% of the
            time at 64 images per split).
        fdr: a training image is flagged in ranking.parquet when its Benjamini-Hochberg
            q-value (of its p-value against the reference split's errors) is at most this.
        pairs: the (a, b) pairs of splits the verdict judges, a the split that may be
            memorized (the training images) and b the held-out reference, e.g.
            [[train, val], [train, test]]. Each gets the tests, a ranking of a's images and
            the verdict's rules.
        low_quantile: the count rule compares the number of a-images below b's
            low_quantile-th quantile (the ceil(low_quantile * n_b)-th smallest b error) with
            its exact hypergeometric distribution under exchangeability.
        top_images: the report's "Most memorized training images" section draws the
            flagged images, at most this many (the job renders them); when none is flagged,
            the min(10, top_images) best-ranked.
        tau_real: an image of a real split counts as a success when its mse is below
            this. 0.02 is an RMS pixel error of about 0.14 on [-1, 1] (about 7% of the range,
            PSNR about 23 dB): a close, recognizable recovery. Descriptive only; it does not
            enter the verdict.
        tau_generated: exact-recovery level for the generated split: a generated
            image counts as recovered when its mse is below this. 1e-3 is an RMS pixel error
            of 0.03 (1.6% of the range, PSNR 36 dB): the search found the generator's own
            image, not merely a similar one.
        min_generated_success: the verdict is inconclusive when fewer than this fraction of
            generated images are below tau_generated, because then the search cannot be
            trusted to find a training image even if the generator memorized it. 0.9: the
            paper's supplement reports 98% with enough restarts and 68% without.
        min_split_size: train and val must each have at least this many results for the
            verdict; below it the verdict is inconclusive. At 20 per split the KS test at
            alpha 0.01 still detects a distance of about 0.5 (memorization of the GLO kind).
        bootstrap: number of bootstrap resamples for the MRE-gap confidence interval and
            its p-value; 0 leaves both empty (NaN) and takes the gap rule out of the verdict.
        confidence: level of the bootstrap confidence interval (percentile method).
        seed: seeds the bootstrap and the subsample of traces drawn in the report; the
            same inputs and seed give the same numbers.
        bins: number of histogram bins shared by all splits.
        curve_sample: at most this many traces per split (a seeded subsample) make the
            convergence curves in the report; the curves are medians and quartiles, which
            a few thousand traces estimate well, and 10 million would not fit in memory.
        near_copy_ratio: the neighbours detector counts a generated image as a near-copy
            when its nearest training image is much nearer than the second, d1/d2 below this
           ; descriptive, it does not decide whether the detector fires.
        mifid_eps: MiFID's memorization threshold (Bai et al. 2021): the detector fires when
            the mean over generated images of the smallest 1 - |cos| to a training image is
            below it. The paper's 0.1, meant for Inception features.
        ct_cells: k-means cells of the C_T test (Meehan et al. 2020), fitted on training
            features (scipy.cluster.vq.kmeans2, seeded by ``seed``).
        ct_min_generated: a C_T cell enters the statistic only with at least this many
            generated images (the paper's tau = 20/m).
        ct_max_train: C_T fits its cells and measures in-cell distances on at most this
            many training images (a seeded subsample), to bound the driver's memory.
        birthday_size: generated images per batch of the birthday test (Arora and Zhang
            2017); a batch with a near-duplicate pair suggests a support of about s^2.
        birthday_threshold: a pair closer than this is a near-duplicate; None takes the
            smallest within-batch pair distance of real images in batches of the same size.
    """

    alpha: float = 0.01
    gap_threshold: float = 0.10
    fdr: float = 0.05
    pairs: tuple[tuple[str, str], ...] = (("train", "val"),)
    low_quantile: float = 0.01
    top_images: int = 20
    tau_real: float = 0.02
    tau_generated: float = 1e-3
    min_generated_success: float = 0.9
    min_split_size: int = 20
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    bins: int = 50
    curve_sample: int = 5000
    near_copy_ratio: float = 0.5
    mifid_eps: float = 0.1
    ct_cells: int = 5
    ct_min_generated: int = 20
    ct_max_train: int = 20000
    birthday_size: int = 100
    birthday_threshold: float | None = None

    def __post_init__(self) -> None:
        _check_number("alpha", self.alpha, low=0.0, high=1.0, open_low=True, open_high=True)
        _check_number("gap_threshold", self.gap_threshold, low=-math.inf, high=1.0)
        _check_number("fdr", self.fdr, low=0.0, high=1.0, open_low=True, open_high=True)
        object.__setattr__(self, "pairs", _check_pairs(self.pairs))
        _check_number("low_quantile", self.low_quantile, low=0.0, high=0.5, open_low=True)
        _check_int("top_images", self.top_images, low=0)
        _check_number("tau_real", self.tau_real, low=0.0, high=math.inf, open_low=True)
        _check_number("tau_generated", self.tau_generated, low=0.0, high=math.inf, open_low=True)
        _check_number("min_generated_success", self.min_generated_success, low=0.0, high=1.0)
        _check_number("confidence", self.confidence, low=0.0, high=1.0, open_low=True, open_high=True)
        _check_int("min_split_size", self.min_split_size, low=1)
        _check_int("bootstrap", self.bootstrap, low=0)
        _check_int("seed", self.seed, low=0)
        _check_int("bins", self.bins, low=1)
        _check_int("curve_sample", self.curve_sample, low=1)
        _check_number("near_copy_ratio", self.near_copy_ratio, low=0.0, high=1.0)
        _check_number("mifid_eps", self.mifid_eps, low=0.0, high=1.0)
        _check_int("ct_cells", self.ct_cells, low=1)
        _check_int("ct_min_generated", self.ct_min_generated, low=1)
        _check_int("ct_max_train", self.ct_max_train, low=2)
        _check_int("birthday_size", self.birthday_size, low=2)
        if self.birthday_threshold is not None:
            _check_number("birthday_threshold", self.birthday_threshold, low=0.0, high=math.inf)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "stats") -> StatsSettings:
        """Settings from a mapping such as a config's ``stats`` section.

        Unknown keys are errors here; callers that accept a wider section pick the keys
        of ``field_names()`` first. ``where`` prefixes field names in error messages.
        """
        if not isinstance(values, Mapping):
            raise StatsError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise StatsError(
                f"{where}.{unknown[0]}: unknown setting; valid: {', '.join(field_names())}"
            )
        try:
            return cls(**dict(values))
        except StatsError as exc:
            raise StatsError(f"{where}.{exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values: pairs as lists of two names."""
        values = dataclasses.asdict(self)
        values["pairs"] = [list(p) for p in self.pairs]
        return values


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(StatsSettings))


def _check_number(
    name: str,
    value: object,
    *,
    low: float,
    high: float,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StatsError(f"{name}: expected a number, got {value!r}")
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if math.isnan(value) or too_low or too_high:
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise StatsError(f"{name}: {value!r} is outside {lo}{low}, {high}{hi}")


def _check_pairs(value: object) -> tuple[tuple[str, str], ...]:
    """Pairs as a tuple of (a, b) name tuples: each two different split names, generated excluded."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise StatsError(f"pairs: expected a list of [a, b] split pairs, got {value!r}")
    if not value:
        raise StatsError("pairs: needs at least one [a, b] pair, e.g. [[train, val]]")
    pairs = []
    for i, pair in enumerate(value):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise StatsError(f"pairs[{i}]: expected [a, b], two split names, got {pair!r}")
        a, b = pair
        if not all(isinstance(s, str) and s for s in (a, b)):
            raise StatsError(f"pairs[{i}]: split names must be non-empty strings, got {pair!r}")
        if a == b:
            raise StatsError(f"pairs[{i}]: compares {a!r} with itself")
        if "generated" in (a, b):
            raise StatsError(f"pairs[{i}]: the generated split checks the search, it is not a memorization pair")
        pairs.append((a, b))
    if len(set(pairs)) != len(pairs):
        raise StatsError(f"pairs: {pairs!r} lists a pair twice")
    return tuple(pairs)


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StatsError(f"{name}: expected an integer, got {value!r}")
    if value < low:
        raise StatsError(f"{name}: {value!r} is below the minimum {low}")
