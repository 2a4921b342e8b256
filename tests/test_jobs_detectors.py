"""The companion detectors end to end on a local Ray: features once per image under <out>/features/,
reused by a re-run; neighbours.parquet, detectors.parquet and the report's section; --overwrite clears them."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config, write_yaml

from jobs import outputs
from jobs.config import ConfigError, load_config
from jobs.driver import run_audit
from stats import report_from_output

pytestmark = pytest.mark.slow


def _config(tmp_path, tiny_data, tiny_generator, **extra):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 24, "seed": 0}, "shard_size": 8}
    sections = {"detectors": ["recovery", "neighbours", "mifid", "ct", "birthday"],
                "features": {"space": "pixel", "crop": 6, "k": 3}, **extra}
    raw = tiny_config(tiny_generator, targets=targets, **sections)
    raw["stats"].update({"ct_cells": 2, "ct_min_generated": 4, "birthday_size": 6})
    return load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(tmp_path / "out"))


def test_detectors_end_to_end_with_reuse_of_the_features(ray_local, tiny_data, tiny_generator, tmp_path):
    config = _config(tmp_path, tiny_data, tiny_generator)
    first = run_audit(config)
    assert first.exit_code == 0
    out = tmp_path / "out"
    parts = sorted((out / "features").rglob("part-*.parquet"))
    features = [p for p in parts if "split=" in str(p)]
    assert len(features) == 2 + 1 + 3  # train (12 in shards of 8), val (6), generated (24)
    train = pq.read_table([p for p in features if "split=train" in str(p)][0])
    assert len(train.column("feature")[0].as_py()) == 36  # 1 channel, 6x6 center crop
    neighbours = pq.read_table(out / "neighbours.parquet")
    assert neighbours.column_names == ["query_id", "query_split", "rank", "train_id", "distance", "space"]
    assert set(neighbours.column("query_split").to_pylist()) == {"val", "generated"}
    assert neighbours.num_rows == (6 + 24) * 3 and set(neighbours.column("space").to_pylist()) == {"pixel-crop6"}
    train_ids = set(train.column("image_id").to_pylist()) | set(
        pq.read_table([p for p in features if "split=train" in str(p)][1]).column("image_id").to_pylist())
    assert set(neighbours.column("train_id").to_pylist()) <= train_ids
    detectors = pq.read_table(out / "detectors.parquet")
    assert detectors.column("detector").to_pylist() == ["neighbours", "mifid", "ct", "birthday"]
    assert not any(r.startswith("not run") for r in detectors.column("reason").to_pylist())
    assert pq.read_table(out / "ct_cells.parquet").num_rows == 2
    assert pq.read_table(out / "birthday.parquet").num_rows == 4  # 24 generated in batches of 6
    pairs = pq.read_table(out / "pairs.parquet")
    nearest = pairs.filter(pc.equal(pairs.column("kind"), "neighbours"))
    assert nearest.num_rows == 8 and all(p.startswith(b"\x89PNG") for p in nearest.column("other_png").to_pylist())
    html = (out / "report.html").read_text()
    assert '<section id="detectors">' in html and "Closest generated / training pairs" in html
    assert any(r.startswith("detector 'neighbours'") for r in first.reduction.verdict.reasons)
    assert first.run_info["config"]["detectors"] == ["recovery", "neighbours", "mifid", "ct", "birthday"]

    stamps = {p: p.stat().st_mtime_ns for p in parts}
    second = run_audit(config)  # the same config: every part is reused, the tables come out the same
    assert second.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    assert pq.read_table(out / "detectors.parquet").equals(detectors)

    # The driver, when it holds G on its CPU, renders the same pairs without an actor.
    import recovery
    from jobs.detectors import _pairs
    from jobs.plan import make_plan
    from stats import read_output

    results = read_output(str(out), columns=None)[0]
    here = _pairs(None, config, make_plan(config), results, neighbours, pq.read_table(out / "birthday.parquet"),
                  recovery.load_generator(config.generator, device="cpu"))
    assert here.equals(pairs)

    rebuilt = report_from_output(str(out))  # `memaudit report OUT` re-reads the detectors' files
    assert rebuilt.verdict.reasons == first.reduction.verdict.reasons
    assert '<section id="detectors">' in (out / "report.html").read_text()

    outputs.clear(str(out), None)  # what --overwrite does first: the detectors' files and parts go too
    assert not (out / "features").exists() and not (out / "detectors.parquet").exists()


def test_detectors_config_is_checked_before_any_work(tiny_data, tiny_generator, tmp_path):
    with pytest.raises(ConfigError, match=r"detectors\[1\]: 'knn' is not one of"):
        _config(tmp_path, tiny_data, tiny_generator, detectors=["recovery", "knn"])
    with pytest.raises(ConfigError, match="features.net: space: net needs"):
        _config(tmp_path, tiny_data, tiny_generator, features={"space": "net"})
    with pytest.raises(ConfigError, match="features.metric: 'cos' is not one of l2, l1, cosine"):
        _config(tmp_path, tiny_data, tiny_generator, features={"metric": "cos"})
