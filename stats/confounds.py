"""Confounds: differences between a memorization pair's splits that shift errors by themselves (issue 10).

JPEG artefacts, a downscale from a larger original, or a gray image audited by an RGB
generator change how well an image can be recovered whatever the generator learned. When
train and val differ in source format, original size or channel count, a gap between
their errors need not be memorization, so the verdict and the report say so. The
results' ``format``, ``orig_width``, ``orig_height`` and ``channels`` columns (added by the
job from each image's header) carry what is compared; without them nothing is checked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

from stats.columns import numeric, strings

SHARE = 0.10  # a categorical difference counts when the splits' shares differ by more than this (total variation)
SIZE_RATIO = 1.25  # original sizes differ when the median pixel counts differ by more than this factor
CONSEQUENCE = "this difference alone can shift recovery errors, so a gap between them need not be memorization"


def confounds(results: pa.Table, rows: Mapping[str, np.ndarray], pairs: Iterable[tuple[str, str]]) -> list[str]:
    """One warning per (pair, property) in which the pair's two splits differ."""
    formats = strings(results, "format")
    channels = numeric(results, "channels")
    width, height = numeric(results, "orig_width"), numeric(results, "orig_height")
    warnings = []
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        ra, rb = rows[a], rows[b]
        if formats is not None:
            warnings += _categorical(a, b, "source format", formats[ra], formats[rb])
        if channels is not None:
            warnings += _categorical(a, b, "channel count", channels[ra], channels[rb])
        if width is not None and height is not None:
            warnings += _size(a, b, width[ra] * height[ra], width[rb] * height[rb], width, height, ra, rb)
    return warnings


def _categorical(a: str, b: str, what: str, xa: np.ndarray, xb: np.ndarray) -> list[str]:
    share_a, share_b = _shares(xa), _shares(xb)
    if not share_a or not share_b:
        return []
    distance = 0.5 * sum(abs(share_a.get(k, 0.0) - share_b.get(k, 0.0)) for k in set(share_a) | set(share_b))
    if distance <= SHARE:
        return []
    return [f"{a} and {b} differ in {what} ({a}: {_shown(share_a)}; {b}: {_shown(share_b)}): {CONSEQUENCE}"]


def _size(a: str, b: str, pa_: np.ndarray, pb: np.ndarray, width: np.ndarray, height: np.ndarray,
          ra: np.ndarray, rb: np.ndarray) -> list[str]:
    pa_, pb = pa_[~np.isnan(pa_)], pb[~np.isnan(pb)]
    if not len(pa_) or not len(pb):
        return []
    ma, mb = float(np.median(pa_)), float(np.median(pb))
    if ma <= 0 or mb <= 0 or max(ma, mb) / min(ma, mb) <= SIZE_RATIO:
        return []
    return [
        f"{a} and {b} differ in original size (median {a}: {_dims(width[ra], height[ra])}; "
        f"{b}: {_dims(width[rb], height[rb])}): {CONSEQUENCE}"
    ]


def _shares(values: np.ndarray) -> dict[str, float]:
    present = [v for v in values.tolist() if v is not None and v == v]  # drop None and NaN
    counts = Counter(_label(v) for v in present)
    return {k: c / len(present) for k, c in counts.items()} if present else {}


def _label(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _shown(shares: dict[str, float]) -> str:
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {v:.0%}" for k, v in top)


def _dims(width: np.ndarray, height: np.ndarray) -> str:
    return f"{np.nanmedian(width):.0f}x{np.nanmedian(height):.0f}"
