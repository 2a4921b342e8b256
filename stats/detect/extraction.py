"""Extraction by generation (Carlini et al. 2023): training images that the model's own samples copy.

    table = extractions(neighbours, near_copy_ratio=0.5)     # one row per extracted training image
    html = extraction_section(companions, settings)          # the report's list of them

A generated image is a copy of its nearest training image when two things hold on the neighbours detector's
distances (neighbours.parquet: pixel L2, or the user's feature network such as an SSCD export):

- Carlini's relative criterion: the nearest training image is much nearer than the others, d1 / d2 below
  near_copy_ratio (the neighbours detector's own near-copy count);
- an absolute one: d1 is below every held-out image's nearest-train distance, so no unseen real image is ever
  this near to a training image (without held-out distances only the first is applied).

The first alone also picks a generated image that merely sits in a sparse corner of the data; the second keeps
the copies that generalization does not explain. The table lists each extracted training image once, with its
copies. Used by the report for any generator; the question is usually asked of diffusion models.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.report.html import escape, table
from stats.detect.nearest import first_and_second
from stats.text import number

SCHEMA = pa.schema([
    ("train_id", pa.string()),
    ("copies", pa.int64()),  # generated images whose nearest training image this is, under both criteria
    ("generated_ids", pa.list_(pa.string())),  # nearest first
    ("distance", pa.float64()),  # d1 of its closest copy
    ("ratio", pa.float64()),  # d1 / d2 of its closest copy
])
SHOWN = 50


def copies(neighbours: pa.Table, *, near_copy_ratio: float, generated: str = "generated",
           reference: str = "val") -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """The generated images that copy a training image: (generated ids, train ids, d1, d1 / d2), nearest first."""
    ids, d1, d2, train_ids = first_and_second(neighbours, generated)
    _, v1, _, _ = first_and_second(neighbours, reference)
    floor = float(v1.min()) if len(v1) else np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d2 > 0, d1 / d2, np.where(d1 == 0, 0.0, 1.0))  # no second neighbour: never a copy
    ratio = np.nan_to_num(ratio, nan=1.0)
    keep = np.flatnonzero((ratio < near_copy_ratio) & (d1 < floor))
    keep = keep[np.argsort(d1[keep], kind="stable")]
    return [ids[i] for i in keep], [train_ids[i] for i in keep], d1[keep], ratio[keep]


def extractions(neighbours: pa.Table | None, *, near_copy_ratio: float, generated: str = "generated",
                reference: str = "val") -> pa.Table:
    """One row per extracted training image (SCHEMA), the one with the nearest copy first."""
    if neighbours is None or neighbours.num_rows == 0:
        return SCHEMA.empty_table()
    gen_ids, train_ids, d1, ratio = copies(neighbours, near_copy_ratio=near_copy_ratio, generated=generated,
                                           reference=reference)
    found: dict[str, list[int]] = defaultdict(list)
    for j, t in enumerate(train_ids):
        found[t].append(j)  # j runs nearest first, so each list is too
    rows = [{"train_id": t, "copies": len(js), "generated_ids": [gen_ids[j] for j in js],
             "distance": float(d1[js[0]]), "ratio": float(ratio[js[0]])} for t, js in found.items()]
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["distance"]), schema=SCHEMA)


def extraction_section(companions: Any, settings: Any) -> str:
    """The report's list of extracted training images; empty without neighbours or without a generated split."""
    neighbours = getattr(companions, "neighbours", None) if companions is not None else None
    if neighbours is None or neighbours.num_rows == 0:
        return ""
    if not pc.any(pc.equal(neighbours.column("query_split"), "generated")).as_py():
        return ""
    held_out = settings.pairs[0][1] if settings.pairs else "val"  # the configured held-out split, as the detectors'
    found = extractions(neighbours, near_copy_ratio=settings.near_copy_ratio, reference=held_out)
    generated = len(set(first_and_second(neighbours, "generated")[0]))
    copied = int(pc.sum(found.column("copies")).as_py() or 0) if found.num_rows else 0
    intro = (f"{found.num_rows} training images have a near-copy among {generated} generated images ({copied} "
             f"copies): the nearest training image is under {settings.near_copy_ratio:g} times as far as the "
             "second (Carlini et al.'s criterion) and nearer than any held-out image is to its nearest training "
             "image.")
    parts = [f'<section id="extraction"><h2>Extraction by generation</h2><p>{escape(intro)}</p>']
    if found.num_rows:
        rows = found.slice(0, SHOWN).to_pylist()
        if found.num_rows > len(rows):
            parts.append(f"<p>The {len(rows)} with the nearest copies of {found.num_rows}.</p>")
        parts.append(table(["training image", "copies", "generated copies (nearest first)", "distance", "d1/d2"],
                           [[r["train_id"], r["copies"], ", ".join(r["generated_ids"][:8]), number(r["distance"]),
                             number(r["ratio"])] for r in rows], text_columns=(2,), table_id="extraction",
                           searchable=True, tall=True))
    parts.append("</section>")
    return "\n".join(parts)
