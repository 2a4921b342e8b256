"""Settings of the statistics and the verdict, with their defaults in one place.

The defaults follow the paper (Webster et al., CVPR 2019) where it gives a number
(alpha, gap threshold) and are documented choices where it does not (the success
thresholds, the minimum sizes). All thresholds on errors are in the units of the
results' ``error`` column: by default the mean squared error per pixel of images in
[-1, 1] (DESIGN §1); a run that names another loss should set tau_real and tau_generated.
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
        alpha: significance level of the train/val KS test; the rule "ks" fires when both
            the two-sided KS p-value and the one-sided p-value (train errors smaller) are
            below it. The paper's 1%.
        gap_threshold: the rule "mre_gap" fires when (MRE(val) - MRE(train)) / MRE(val)
            exceeds it. The paper's 10%.
        tau_real: an image of a real split counts as a success when its error is below
            this. 0.02 is an RMS pixel error of about 0.14 on [-1, 1] (about 7% of the range,
            PSNR about 23 dB): a close, recognizable recovery. Descriptive only; it does not
            enter the verdict.
        tau_generated: success threshold for the generated split. 0.01 is an RMS pixel error
            of 0.1 (5% of the range, PSNR 26 dB): the search found the generator's own image
            up to a small residual. The generated MREs in the paper's tables are below it.
        min_generated_success: the verdict is inconclusive when fewer than this fraction of
            generated images are below tau_generated, because then the search cannot be
            trusted to find a training image even if the generator memorized it. 0.9: the
            paper's supplement reports 98% with enough restarts and 68% without.
        min_split_size: train and val must each have at least this many results for the
            verdict; below it the verdict is inconclusive. At 20 per split the KS test at
            alpha 0.01 still detects a distance of about 0.5 (memorization of the GLO kind).
        bootstrap: number of bootstrap resamples for the MRE-gap confidence interval;
            0 leaves the interval empty (NaN).
        confidence: level of the bootstrap confidence interval (percentile method).
        seed: seeds the bootstrap and the subsample of traces drawn in the report; the
            same inputs and seed give the same numbers.
        bins: number of histogram bins shared by all splits.
        curve_sample: at most this many traces per split (a seeded subsample) make the
            convergence curves in the report; the curves are medians and quartiles, which
            a few thousand traces estimate well, and 10 million would not fit in memory.
    """

    alpha: float = 0.01
    gap_threshold: float = 0.10
    tau_real: float = 0.02
    tau_generated: float = 0.01
    min_generated_success: float = 0.9
    min_split_size: int = 20
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    bins: int = 50
    curve_sample: int = 5000

    def __post_init__(self) -> None:
        _check_number("alpha", self.alpha, low=0.0, high=1.0, open_low=True, open_high=True)
        _check_number("gap_threshold", self.gap_threshold, low=-math.inf, high=1.0)
        _check_number("tau_real", self.tau_real, low=0.0, high=math.inf, open_low=True)
        _check_number("tau_generated", self.tau_generated, low=0.0, high=math.inf, open_low=True)
        _check_number("min_generated_success", self.min_generated_success, low=0.0, high=1.0)
        _check_number("confidence", self.confidence, low=0.0, high=1.0, open_low=True, open_high=True)
        _check_int("min_split_size", self.min_split_size, low=1)
        _check_int("bootstrap", self.bootstrap, low=0)
        _check_int("seed", self.seed, low=0)
        _check_int("bins", self.bins, low=1)
        _check_int("curve_sample", self.curve_sample, low=1)

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
        return dataclasses.asdict(self)


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


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StatsError(f"{name}: expected an integer, got {value!r}")
    if value < low:
        raise StatsError(f"{name}: {value!r} is below the minimum {low}")
