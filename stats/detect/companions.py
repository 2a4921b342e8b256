"""Run the selected companion detectors on one audit's neighbours and features.

    found = evaluate(["neighbours", "mifid", "ct", "birthday"], neighbours=nb, mifid=md, features=feats,
                     settings=StatsSettings(), metric="l2")
    found.table     # detectors.parquet
    found.cells     # C_T's per-cell table (ct_cells.parquet)
    found.birthday  # each generated batch's closest pair (birthday.parquet)

`neighbours` and `mifid` come from stats.detect.nearest.merge_neighbours over the job's kNN parts; `features` maps a
split to (ids, [N, D] features) for the splits the statistics need in memory: the generated and held-out
images, and a seeded sample of at most ct_max_train training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.detect.copying import CELLS_SCHEMA, ct_test
from stats.detect.detectors import (BIRTHDAY_SCHEMA, DETECTORS_SCHEMA, DetectorResult, birthday_test, detectors_table,
                             mifid_test, neighbours_test, skipped)
from stats.errors import StatsError
from stats.settings import StatsSettings

Features = dict[str, tuple[list[str], np.ndarray]]
EMPTY = ([], np.zeros((0, 0)))


@dataclass(frozen=True)
class Inputs:
    """What a companion's statistic may read: the merged kNN (stats.detect.nearest.merge_neighbours), the MiFID
    distances, the features in memory per split, and which splits play generated, reference (held out) and train."""

    neighbours: pa.Table | None
    mifid: pa.Table | None
    features: Features
    settings: StatsSettings
    metric: str
    generated: str
    reference: str
    train: str


@dataclass(frozen=True)
class Companion:
    """One companion detector. `needs` tells the job what to compute for it: "knn" (nearest train images of every
    generated and held-out image), "mifid" (the cosine pass over every tile) and "features" (features in memory)."""

    name: str
    needs: frozenset[str]
    run: Callable[[Inputs], tuple[DetectorResult, dict[str, pa.Table]]]


def _neighbours(x: Inputs) -> tuple[DetectorResult, dict[str, pa.Table]]:
    if x.neighbours is None:
        return skipped("neighbours", "no nearest neighbours were computed"), {}
    return neighbours_test(x.neighbours, x.settings, generated=x.generated, reference=x.reference), {}


def _mifid(x: Inputs) -> tuple[DetectorResult, dict[str, pa.Table]]:
    if x.mifid is None:
        return skipped("mifid", "no MiFID distances were computed"), {}
    return mifid_test(_split_values(x.mifid, x.generated), x.settings,
                      reference=_split_values(x.mifid, x.reference)), {}


def _ct(x: Inputs) -> tuple[DetectorResult, dict[str, pa.Table]]:
    row, cells = ct_test(x.features.get(x.train, EMPTY)[1], x.features.get(x.reference, EMPTY)[1],
                         x.features.get(x.generated, EMPTY)[1], x.settings, metric=x.metric)
    return row, {"cells": cells}


def _birthday(x: Inputs) -> tuple[DetectorResult, dict[str, pa.Table]]:
    gen_ids, gen = x.features.get(x.generated, EMPTY)
    real = [x.features[s][1] for s in (x.reference, x.train) if s in x.features and len(x.features[s][1])]
    row, pairs = birthday_test(gen_ids, gen, np.concatenate(real) if real else np.zeros((0, 0)), x.settings,
                               metric=x.metric, held_out=x.features.get(x.reference, EMPTY)[1])
    return row, {"birthday": pairs}


# The companions, in the order the report lists them. A new detector is one module with its statistic and
# one line here; the job reads `needs` to compute its inputs, and `detectors:` in the config accepts its name.
REGISTRY: dict[str, Companion] = {c.name: c for c in (
    Companion("neighbours", frozenset({"knn"}), _neighbours),
    Companion("mifid", frozenset({"knn", "mifid"}), _mifid),
    Companion("ct", frozenset({"features"}), _ct),
    Companion("birthday", frozenset({"features"}), _birthday),
)}
def needs(selected: list[str] | tuple[str, ...]) -> frozenset[str]:
    """What the job must compute for the selected detectors (the union of their `needs`)."""
    return frozenset().union(*(REGISTRY[d].needs for d in selected if d in REGISTRY))


@dataclass(frozen=True)
class Companions:
    table: pa.Table = field(default_factory=DETECTORS_SCHEMA.empty_table)
    cells: pa.Table = field(default_factory=CELLS_SCHEMA.empty_table)
    birthday: pa.Table = field(default_factory=BIRTHDAY_SCHEMA.empty_table)


def evaluate(selected: list[str] | tuple[str, ...], *, neighbours: pa.Table | None, mifid: pa.Table | None,
             features: Features, settings: StatsSettings, metric: str = "l2", generated: str = "generated",
             reference: str | None = None, train: str | None = None) -> Companions:
    """The rows of the selected companions (REGISTRY; "recovery" is ignored here), in the order given.

    reference and train default to the first memorization pair's b and a (settings.pairs[0])."""
    unknown = [d for d in selected if d not in REGISTRY and d != "recovery"]
    if unknown:
        raise StatsError(f"detectors: {unknown[0]!r} is not one of recovery, {', '.join(REGISTRY)}")
    inputs = Inputs(neighbours, mifid, features, settings, metric, generated,
                    reference or settings.pairs[0][1], train or settings.pairs[0][0])
    rows, extra = [], {}
    for name in (d for d in selected if d != "recovery"):
        row, tables = REGISTRY[name].run(inputs)
        rows.append(row)
        extra.update(tables)
    return Companions(detectors_table(rows), extra.get("cells", CELLS_SCHEMA.empty_table()),
                      extra.get("birthday", BIRTHDAY_SCHEMA.empty_table()))


def _split_values(table: pa.Table, split: str) -> np.ndarray:
    mine = table.filter(pc.equal(table.column("query_split"), split))
    return mine.column("mifid_distance").to_numpy(zero_copy_only=False).astype(np.float64)
