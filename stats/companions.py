"""Run the selected companion detectors on one audit's neighbours and features (issue 12).

    found = evaluate(["neighbours", "mifid", "ct", "birthday"], neighbours=nb, mifid=md, features=feats,
                     settings=StatsSettings(), metric="l2")
    found.table     # detectors.parquet
    found.cells     # C_T's per-cell table (ct_cells.parquet)
    found.birthday  # each generated batch's closest pair (birthday.parquet)

`neighbours` and `mifid` come from stats.nearest.merge_neighbours over the job's kNN parts; `features` maps a
split to (ids, [N, D] features) for the splits the statistics need in memory: the generated and held-out
images, and a seeded sample of at most ct_max_train training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.copying import CELLS_SCHEMA, ct_test
from stats.detectors import (BIRTHDAY_SCHEMA, COMPANIONS, DETECTORS_SCHEMA, birthday_test, detectors_table,
                             mifid_test, neighbours_test, skipped)
from stats.errors import StatsError
from stats.settings import StatsSettings

Features = dict[str, tuple[list[str], np.ndarray]]


@dataclass(frozen=True)
class Companions:
    table: pa.Table = field(default_factory=DETECTORS_SCHEMA.empty_table)
    cells: pa.Table = field(default_factory=CELLS_SCHEMA.empty_table)
    birthday: pa.Table = field(default_factory=BIRTHDAY_SCHEMA.empty_table)


def evaluate(selected: list[str] | tuple[str, ...], *, neighbours: pa.Table | None, mifid: pa.Table | None,
             features: Features, settings: StatsSettings, metric: str = "l2", generated: str = "generated",
             reference: str | None = None, train: str | None = None) -> Companions:
    """The rows of the selected companions (COMPANIONS; "recovery" is ignored here), in the order given.

    reference and train default to the first memorization pair's b and a (settings.pairs[0])."""
    train = train or settings.pairs[0][0]
    reference = reference or settings.pairs[0][1]
    unknown = [d for d in selected if d not in COMPANIONS + ("recovery",)]
    if unknown:
        raise StatsError(f"detectors: {unknown[0]!r} is not one of recovery, {', '.join(COMPANIONS)}")
    rows, cells, pairs = [], CELLS_SCHEMA.empty_table(), BIRTHDAY_SCHEMA.empty_table()
    empty = ([], np.zeros((0, 0)))
    gen_ids, gen = features.get(generated, empty)
    for name in (d for d in selected if d != "recovery"):
        if name == "neighbours":
            rows.append(neighbours_test(neighbours, settings, generated=generated, reference=reference)
                        if neighbours is not None else skipped(name, "no nearest neighbours were computed"))
        elif name == "mifid":
            rows.append(mifid_test(_split_values(mifid, generated), settings, reference=_split_values(mifid, reference))
                        if mifid is not None else skipped(name, "no MiFID distances were computed"))
        elif name == "ct":
            row, cells = ct_test(features.get(train, empty)[1], features.get(reference, empty)[1], gen, settings,
                                 metric=metric)
            rows.append(row)
        elif name == "birthday":
            real = [features[s][1] for s in (reference, train) if s in features and len(features[s][1])]
            row, pairs = birthday_test(gen_ids, gen, np.concatenate(real) if real else np.zeros((0, 0)), settings,
                                       metric=metric)
            rows.append(row)
    return Companions(detectors_table(rows), cells, pairs)


def _split_values(table: pa.Table, split: str) -> np.ndarray:
    mine = table.filter(pc.equal(table.column("query_split"), split))
    return mine.column("mifid_distance").to_numpy(zero_copy_only=False).astype(np.float64)
