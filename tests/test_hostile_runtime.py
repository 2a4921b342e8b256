"""Runtime hostile cases: a generator that fails on part of its latent space or only on some batches, unfinished or
custom-named outputs in compare and history, unreadable history files, 16-bit and oversized images."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stats import reduce
from stats.history import append, history_row, read_history
from stats.history_cli import compare_main, history_main
from tests._outputs import errors, write_output
from tests._tables import table_of


def test_rejected_generated_images_count_against_the_generated_gate():
    # 10 generated images: 4 recovered exactly, 6 rejected because G returned NaN for their latents.
    rng = np.random.default_rng(0)
    table = table_of(train=rng.lognormal(-3, 0.5, 100), val=rng.lognormal(-3, 0.5, 100), generated=np.full(4, 1e-6))
    rejects = pa.table({"image_id": [f"g-{i}" for i in range(6)], "split": ["generated"] * 6,
                        "stage": ["recover"] * 6, "reason": ["generator returned NaN"] * 6})
    verdict = reduce(table, rejects).verdict
    assert verdict.label == "inconclusive"
    assert verdict.numbers["generated_success_rate"] == pytest.approx(0.4)
    assert "4 of 10" in verdict.sentence and "6 rejected" in verdict.sentence
