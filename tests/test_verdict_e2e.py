"""End to end on a trained generator: copies planted in train top the ranking and make the verdict
"memorization"; without them the verdict is not.

The bundled digits DCGAN (jobs/assets/models/dcgan.pt, trained on all 1200 training digits, no memorization
in the paper's sense) audits 30 of its training digits plus 5 images sampled from the generator itself
(exactly reachable: what a generator that copied its training images would do) against 60 held-out digits.
The search is forced to converge (2 restarts of up to 100 L-BFGS iterations). One recover() per split; the
two verdicts come from the same results, with and without the planted rows. The generated split's gate is
tested in test_stats_verdict (the planted images double as generated ones here).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated, to_target
from stats import reduce

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
PLANTED = [f"planted-{i}" for i in range(5)]

pytestmark = pytest.mark.slow


def _digits(name: str, n: int) -> tuple[list[str], torch.Tensor]:
    table = pq.read_table(ASSETS / "digits" / name).slice(0, n)
    images = [to_target(data, shape=(1, 32, 32)) for data in table.column("image").to_pylist()]
    return [str(i) for i in table.column("id").to_pylist()], torch.stack(images)  # [n, 1, 32, 32] in [-1, 1]


@pytest.fixture(scope="module")
def results() -> pa.Table:
    generator = load_generator(GeneratorSpec(torchscript=str(ASSETS / "models" / "dcgan.pt"),
                                             latent=LatentSpec((32,), "normal")), device="cpu")
    train_ids, train = _digits("train.parquet", 30)
    val_ids, val = _digits("val.parquet", 60)
    _, planted = sample_generated(generator, PLANTED, seed=123)  # images G reproduces exactly
    settings = RecoverySettings(iterations=100, restarts=2)
    parts = []
    for split, ids, targets in (("train", train_ids + PLANTED, torch.cat([train, planted])), ("val", val_ids, val)):
        table = recover(generator, targets, ids, settings=settings)
        parts.append(table.append_column("split", pa.array([split] * table.num_rows)))
    return pa.concat_tables(parts)


def test_planted_copies_top_the_ranking_and_the_verdict_is_memorization(results):
    reduction = reduce(results)
    verdict = reduction.verdict
    assert verdict.label == "memorization", verdict.sentence
    assert "images" in verdict.rules_fired
    ranking = reduction.ranking
    assert ranking.num_rows == 35
    assert sorted(ranking.column("image_id").to_pylist()[:5]) == PLANTED  # the planted images top the ranking
    flagged = ranking.filter(ranking.column("flagged")).column("image_id").to_pylist()
    assert flagged and set(flagged) <= set(PLANTED)
    assert f"{len(flagged)} training image" in verdict.sentence
    assert verdict.numbers["strongest_image"] in PLANTED


def test_without_copies_the_verdict_is_not_memorization(results):
    clean = results.filter(pc.invert(pc.is_in(results.column("image_id"), value_set=pa.array(PLANTED))))
    reduction = reduce(clean)
    assert reduction.verdict.label == "no evidence", reduction.verdict.sentence
    assert not any(reduction.ranking.column("flagged").to_pylist())
