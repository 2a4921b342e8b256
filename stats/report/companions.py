"""The report's companion-detector section, and reading the detectors' files of an output.

    <out>/detectors.parquet   one row per detector (stats.detect.detectors.DETECTORS_SCHEMA)
    <out>/ct_cells.parquet    C_T per cell (stats.detect.copying.CELLS_SCHEMA)
    <out>/birthday.parquet    each generated batch's closest pair (stats.detect.detectors.BIRTHDAY_SCHEMA)
    <out>/pairs.parquet       rendered image pairs (PAIRS_SCHEMA): the closest generated/train pairs and the
                              birthday test's closest pairs, as PNG bytes, for a person to judge
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stats.errors import StatsError
from stats.report.html import escape, img, table
from stats.text import number

PAIRS_SCHEMA = pa.schema([
    ("kind", pa.string()),  # neighbours | birthday
    ("query_id", pa.string()),
    ("query_split", pa.string()),
    ("other_id", pa.string()),
    ("other_split", pa.string()),
    ("distance", pa.float64()),
    ("query_png", pa.binary()),
    ("other_png", pa.binary()),
])
FILES = {"detectors": "detectors.parquet", "cells": "ct_cells.parquet", "birthday": "birthday.parquet",
         "pairs": "pairs.parquet", "neighbours": "neighbours.parquet"}
SHOWN = 10  # rows of the birthday table
PAIRS_SHOWN = 24  # rendered pairs of each kind
CELLS_SHOWN = 50  # rows of the C_T cell table, the most negative Z_U first


@dataclass(frozen=True)
class CompanionFiles:
    """The detectors' outputs of one audit; any may be None (not selected, or an older output)."""

    detectors: pa.Table | None = None
    cells: pa.Table | None = None
    birthday: pa.Table | None = None
    pairs: pa.Table | None = None
    neighbours: pa.Table | None = None  # neighbours.parquet, for the extraction list (stats.detect.extraction)


def read_companions(out_url: str, *, storage_options: dict[str, Any] | None = None) -> CompanionFiles:
    """The detectors' files under an output, those that exist."""
    from stats.io import open_output

    fs, root = open_output(out_url, storage_options)
    found: dict[str, pa.Table | None] = {}
    for key, name in FILES.items():
        path = posixpath.join(root, name)
        try:
            found[key] = pq.read_table(path, filesystem=fs) if fs.exists(path) else None
        except (OSError, pa.ArrowInvalid) as exc:
            raise StatsError(f"{path}: cannot read as Parquet ({exc})") from None
    return CompanionFiles(**found)


def detectors_section(files: CompanionFiles | None) -> str:
    """Every detector's row, the closest generated/train pairs, C_T's cells and the birthday pairs."""
    if files is None or files.detectors is None or files.detectors.num_rows == 0:
        return ""
    rows = files.detectors.to_pylist()
    parts = ['<section id="detectors"><h2>Companion detectors</h2>',
             _pairs_html(files.pairs, "neighbours", "Closest generated / training pairs",
                         "Generated images with the smallest distance to their nearest training image, each beside "
                         "that training image: a copy looks the same."),
             "<p>Each detector is a test of its own, at the verdict's alpha (the label above is the recovery "
             "test's). Nearest neighbours: generated images nearer to a training image than held-out images are; "
             "MiFID: Bai et al.'s memorization distance; C_T: Meehan et al.'s data-copying statistic (&lt; 0 means "
             "copying); birthday: near-duplicates within batches of generated images (Arora and Zhang).</p>",
             table(["detector", "statistic", "value", "threshold", "p", "fired", "count", "reason"],
                   [[r["detector"], r["statistic_name"], r["statistic"], r["threshold"], number(r["p_value"], 2),
                     "yes" if r["fired"] else "no", r["count"], r["reason"]] for r in rows],
                   text_columns=(1, 4, 5, 7))]
    if files.cells is not None and files.cells.num_rows:
        parts.append("<h3>C_T per cell</h3><p>k-means cells of the training features; Z_U &lt; 0 where generated "
                     "images sit closer to the cell's training images than held-out images do; kept cells have "
                     "enough generated images and are weighted by their held-out mass.</p>")
        cells = files.cells.sort_by([("z_u", "ascending")]).slice(0, CELLS_SHOWN)
        if files.cells.num_rows > cells.num_rows:
            parts.append(f"<p>The {cells.num_rows} cells with the most negative Z_U of {files.cells.num_rows}; all "
                         "are in ct_cells.parquet.</p>")
        parts.append(table(["cell", "train", "held-out", "generated", "held-out mass", "Z_U", "kept"],
                           [[r["cell"], r["n_train"], r["n_val"], r["n_generated"], r["val_mass"], r["z_u"],
                             "yes" if r["kept"] else "no"] for r in cells.to_pylist()], text_columns=(6,),
                           table_id="ct-cells", searchable=True, tall=True))
    if files.birthday is not None and files.birthday.num_rows:
        shown = files.birthday.slice(0, SHOWN).to_pylist()
        parts.append(f"<h3>Birthday test: closest pairs</h3><p>The closest pair of each batch, nearest first "
                     f"({len(shown)} of {files.birthday.num_rows} batches).</p>")
        parts.append(table(["batch", "image a", "image b", "distance", "near-duplicate"],
                           [[r["batch"], r["id_a"], r["id_b"], r["distance"], "yes" if r["duplicate"] else "no"]
                            for r in shown], text_columns=(1, 2, 4)))
        parts.append(_pairs_html(files.pairs, "birthday", None, None))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _pairs_html(pairs: pa.Table | None, kind: str, title: str | None, intro: str | None) -> str:
    if pairs is None or pairs.num_rows == 0:
        return ""
    chosen = pairs.filter(pc.equal(pairs.column("kind"), kind))
    mine = chosen.slice(0, PAIRS_SHOWN).to_pylist()
    if not mine:
        return ""
    more = f" The first {len(mine)} of {chosen.num_rows}; all are in pairs.parquet." if chosen.num_rows > len(mine) else ""
    out = [f"<h3>{escape(title)}</h3><p>{escape(intro)}{more}</p>"] if title else ([f"<p>{more}</p>"] if more else [])
    tiles = []
    for r in mine:
        images = "".join(img(png, f"{split} {name}") for png, split, name in (
            (r["query_png"], r["query_split"], r["query_id"]), (r["other_png"], r["other_split"], r["other_id"])) if png)
        tiles.append(f'<div class="tile"><div class="pair">{images}</div><div>d {escape(number(r["distance"]))}</div>'
                     f'<div class="id" title="{escape(r["query_id"])} / {escape(r["other_id"])}">'
                     f'{escape(r["query_split"])}: {escape(r["query_id"])}</div>'
                     f'<div class="id">{escape(r["other_split"])}: {escape(r["other_id"])}</div></div>')
    out.append(f'<div class="grid">{"".join(tiles)}</div>')
    return "\n".join(out)
