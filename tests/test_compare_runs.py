"""`memaudit compare` on two bundled generators audited on the same images: GLO-64 (trained on the 64 images
of train-64) against GLO-1200 (trained on 1200 images that include those 64). GLO-64 memorizes them far more."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import stats
from experiments.paper_table import ASSETS, _targets
from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover
from stats.history.cli import compare_main
from stats.history.compare import compare_runs

PER_SPLIT = 24
# Small and fast: the paper's protocol cut to 20 L-BFGS iterations still separates the two models by far.
SETTINGS = RecoverySettings(protocol="paper", iterations=20)


def audit(model: str, out) -> str:
    """A small audit written as the job writes one: results parts, the stats tables, run.json."""
    torch.set_num_threads(1)
    spec = GeneratorSpec(torchscript=str(ASSETS / "models" / model), latent=LatentSpec((32,), "sphere"),
                         output_range=(-1.0, 1.0))
    g = load_generator(spec, device="cpu")
    parts = []
    for split, parquet in (("train", "train-64.parquet"), ("val", "val.parquet")):
        ids, x = _targets(g, ASSETS / "digits" / parquet, PER_SPLIT, 0)
        part = recover(g, x, ids, settings=SETTINGS).append_column("split", pa.array([split] * len(ids)))
        (out / "results" / f"split={split}").mkdir(parents=True)
        pq.write_table(part, out / "results" / f"split={split}" / "part-0.parquet")
        parts.append(part)
    settings = {"min_split_size": 2}
    reduction = stats.reduce(pa.concat_tables(parts), settings=stats.StatsSettings(**settings))
    stats.write_outputs(str(out), reduction, "<html></html>")
    (out / "run.json").write_text(json.dumps({"status": "done", "config": {"stats": settings}}))
    return str(out)


@pytest.fixture(scope="module")
def glo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("glo")
    return audit("glo-64.pt", root / "glo-64"), audit("glo-1200.pt", root / "glo-1200")


def test_compare_shows_the_gap_difference_and_the_train_images_that_changed(glo_runs):
    a, b = glo_runs
    c = compare_runs(a, b)
    gap = {name: next(r for r in red.tests.to_pylist() if r["split_a"] == "train")["mre_gap"]
           for name, red in (("a", c.a), ("b", c.b))}
    assert gap["a"] > 0.9 and gap["a"] - gap["b"] > 0.2, gap
    tests = {r["split"]: r for r in c.tests.to_pylist()}
    # Every image is in both runs; GLO-1200 recovers GLO-64's training images worse, by a paired test.
    assert tests["train"]["n_paired"] == PER_SPLIT and tests["val"]["n_paired"] == PER_SPLIT
    assert tests["train"]["median_log10_ratio"] > 0.5 and tests["train"]["wilcoxon_pvalue"] < 1e-3
    assert tests["train"]["ks_pvalue"] < 1e-3
    train = c.images.filter(pa.compute.equal(c.images.column("split"), "train"))
    assert np.all(np.isfinite(train.column("log10_ratio").to_numpy()))
    # Read the other way round (GLO-1200 as the earlier run), the images GLO-64 memorizes are "newly flagged".
    def flagged(reduction):
        return set(reduction.ranking.filter(reduction.ranking.column("flagged")).column("image_id").to_pylist())

    became = set(compare_runs(b, a).newly_flagged().column("image_id").to_pylist())
    assert became == flagged(c.a) - flagged(c.b) and len(became) >= PER_SPLIT // 2

def test_compare_command_prints_side_by_side_and_writes_tables(glo_runs, tmp_path, capsys):
    a, b = glo_runs
    assert compare_main([a, b, "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "MRE-gap change B - A" in text and "Wilcoxon p" in text and "train: MRE" in text
    images = pq.read_table(tmp_path / "cmp" / "compare-images.parquet")
    assert images.num_rows == 2 * PER_SPLIT
    assert compare_main([a, str(tmp_path / "missing")]) == 2
    assert "no results parts" in capsys.readouterr().err
