"""Confounds: differences between a memorization pair's splits that shift errors by themselves.

JPEG artefacts, a downscale from a larger original, or a gray image audited by an RGB
generator change how well an image can be recovered whatever the generator learned. When
train and val differ in source format, original size or channel count, a gap between
their errors need not be memorization, so the verdict and the report say so. The
results' ``format``, ``orig_width``, ``orig_height`` and ``channels`` columns (added by the
job from each image's header) carry what is compared; without them nothing is checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.columns import numeric
from stats.errors import StatsError

SHARE = 0.10  # a categorical difference counts when the splits' shares differ by more than this (total variation)
SIZE_RATIO = 1.25  # original sizes differ when the median pixel counts differ by more than this factor
CONSEQUENCE = "this difference alone can shift recovery errors, so a gap between them need not be memorization"
CATEGORICAL = (("format", "source format"), ("channels", "channel count"))


def confounds(results: pa.Table, rows: Mapping[str, np.ndarray], pairs: Iterable[tuple[str, str]]) -> list[str]:
    """One warning per (pair, property) in which the pair's two splits differ."""
    width, height = numeric(results, "orig_width"), numeric(results, "orig_height")
    warnings = []
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        ra, rb = rows[a], rows[b]
        for column, what in CATEGORICAL:
            if column in results.column_names:
                shares = [_shares(results, column, r) for r in (ra, rb)]
                warnings += _categorical(a, b, what, *shares)
        if width is not None and height is not None:
            warnings += _size(a, b, width, height, ra, rb)
    return warnings


def _categorical(a: str, b: str, what: str, share_a: dict[str, float], share_b: dict[str, float]) -> list[str]:
    if not share_a or not share_b:
        return []
    distance = 0.5 * sum(abs(share_a.get(k, 0.0) - share_b.get(k, 0.0)) for k in set(share_a) | set(share_b))
    if distance <= SHARE:
        return []
    return [f"{a} and {b} differ in {what} ({a}: {_shown(share_a)}; {b}: {_shown(share_b)}): {CONSEQUENCE}"]


def _size(a: str, b: str, width: np.ndarray, height: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> list[str]:
    pixels_a, pixels_b = width[ra] * height[ra], width[rb] * height[rb]
    pixels_a, pixels_b = pixels_a[~np.isnan(pixels_a)], pixels_b[~np.isnan(pixels_b)]
    if not len(pixels_a) or not len(pixels_b):
        return []
    ma, mb = float(np.median(pixels_a)), float(np.median(pixels_b))
    if ma <= 0 or mb <= 0 or max(ma, mb) / min(ma, mb) <= SIZE_RATIO:
        return []
    return [
        f"{a} and {b} differ in original size (median {a}: {_dims(width[ra], height[ra])}; "
        f"{b}: {_dims(width[rb], height[rb])}): {CONSEQUENCE}"
    ]


def _shares(results: pa.Table, name: str, rows: np.ndarray) -> dict[str, float]:
    """Share of each value among the rows' non-null values (pyarrow's value_counts, no Python loop over rows)."""
    column = results.column(name)
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_null(kind)):
        raise StatsError(f"results: column {name!r} must hold strings or integers, got {column.type}")
    counted = pc.value_counts(pc.drop_null(column.take(pa.array(rows))))
    values, counts = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
    total = sum(counts)
    return {str(v): c / total for v, c in zip(values, counts)} if total else {}


def _shown(shares: dict[str, float]) -> str:
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {v:.0%}" for k, v in top)


def _dims(width: np.ndarray, height: np.ndarray) -> str:
    return f"{np.nanmedian(width):.0f}x{np.nanmedian(height):.0f}"
