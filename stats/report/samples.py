"""Recoveries drawn in the report (samples.parquet): checks and the difference image.

Ranks: best, median and worst per split, and top-<n> for the training images ranked n-th
in ranking.parquet (the "Most memorized training images" section).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from stats.errors import StatsError
from stats.inputs import RANKS, SAMPLES_REQUIRED, TOP, is_sample_rank, require_table, string_column


@dataclass(frozen=True)
class SampleImages:
    """One sample ready to embed: PNG bytes of target, recovery and |target - recovery|.

    A part that could not be made is None, and `problem` says why; the report shows it.
    """

    split: str
    rank: str
    image_id: str
    error: float | None
    target: bytes | None
    recovery: bytes | None
    difference: bytes | None
    problem: str | None


def check_samples(samples: pa.Table) -> pa.Table:
    """The samples table with its columns checked; rank must be best, median, worst or top-<n>."""
    require_table(samples, "samples", SAMPLES_REQUIRED)
    string_column(samples, "split", "samples")
    ranks = set(pc.unique(samples.column("rank")).to_pylist())
    unknown = sorted(str(r) for r in ranks if not is_sample_rank(r))
    if unknown:
        raise StatsError(f"samples: column 'rank' has {unknown[0]!r}; valid: {', '.join(RANKS)}, {TOP}<n>")
    for name in ("target", "recovery"):
        dtype = samples.column(name).type
        if not (pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)):
            raise StatsError(f"samples: column {name!r} must hold PNG bytes (binary), got {dtype}")
    return samples


def prepare(row: dict[str, object]) -> SampleImages:
    """Decode a samples row and make its difference image; decoding problems are reported, not raised."""
    problems = []
    target, target_png, problem = _decode(row["target"], "target")
    problems += [problem] if problem else []
    recovery, recovery_png, problem = _decode(row["recovery"], "recovery")
    problems += [problem] if problem else []
    difference = None
    if target is not None and recovery is not None:
        if target.size != recovery.size:
            (tw, th), (rw, rh) = target.size, recovery.size
            problems.append(f"target is {tw}x{th} but recovery is {rw}x{rh}: no difference image")
        else:
            mode = "L" if target.mode == recovery.mode == "L" else "RGB"
            a = np.asarray(target.convert(mode), dtype=np.int16)
            b = np.asarray(recovery.convert(mode), dtype=np.int16)
            difference = _encode(Image.fromarray(np.abs(a - b).astype(np.uint8)))
    error = row["error"]
    return SampleImages(
        split=str(row["split"]),
        rank=str(row["rank"]),
        image_id=str(row["image_id"]),
        error=None if error is None else float(error),
        target=target_png,
        recovery=recovery_png,
        difference=difference,
        problem="; ".join(problems) or None,
    )


def _decode(data: object, name: str) -> tuple[Image.Image | None, bytes | None, str | None]:
    """(image, PNG bytes to embed, problem)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        return None, None, f"{name} image is missing"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return None, None, f"{name} image cannot be decoded ({exc})"
    png = bytes(data) if image.format == "PNG" else _encode(image.convert("RGB"))
    return image, png, None


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
