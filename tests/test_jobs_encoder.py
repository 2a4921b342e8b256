"""The learned start in the job (recovery.start: encoder): trained once, cached beside the outputs, shared by
every actor and reused by a resumed run."""

from __future__ import annotations

import pytest
from conftest import tiny_config, write_yaml

from jobs.config import load_config
from jobs.driver import run_audit
from stats import read_output

pytestmark = pytest.mark.slow


def test_encoder_is_trained_once_and_reused(ray_local, tiny_data, tiny_generator, tmp_path):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 5, "seed": 0}, "shard_size": 4}
    recovery = {"iterations": 5, "batch_size": 16, "start": "encoder", "encoder_steps": 30}
    path = write_yaml(tmp_path / "audit.yaml", tiny_config(tiny_generator, targets=targets, recovery=recovery))
    out = tmp_path / "out"
    config = load_config(path, out=str(out))
    assert run_audit(config).exit_code == 0
    cached = sorted((out / "cache").glob("encoder-*.pt"))
    assert len(cached) == 1  # one encoder for all 7 shards and both actors
    stamp = cached[0].stat().st_mtime_ns
    results, rejects, _, _ = read_output(str(out), columns=None)
    assert results.num_rows + rejects.num_rows == 12 + 6 + 5
    assert (results.column("evaluations").to_numpy() >= 2).all()  # E's guess was scored beside the prior draw
    # the same config again: nothing left to run, and the cached encoder is neither retrained nor replaced
    assert run_audit(load_config(path, out=str(out))).exit_code == 0
    assert sorted((out / "cache").glob("encoder-*.pt")) == cached and cached[0].stat().st_mtime_ns == stamp
    # another encoder setting is another key: a new file beside the first (under --overwrite, as the config differs)
    other = load_config(path, out=str(out), overrides=["recovery.encoder_steps=31"])
    assert run_audit(other, overwrite=True).exit_code == 0
    assert len(list((out / "cache").glob("encoder-*.pt"))) == 2  # the cache is keyed by weights and settings: kept


def test_auto_start_trains_the_encoder_only_for_an_audit_large_enough(ray_local, tiny_data, tiny_generator, tmp_path):
    import json

    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 5, "seed": 0}, "shard_size": 8}
    for threshold, start in ((23, "encoder"), (24, "prior")):  # the audit has 12 + 6 + 5 = 23 images
        recovery = {"iterations": 5, "encoder_steps": 30, "encoder_min_images": threshold}  # start: auto (default)
        path = write_yaml(tmp_path / f"audit-{threshold}.yaml", tiny_config(tiny_generator, targets=targets,
                                                                              recovery=recovery))
        out = tmp_path / f"out-{threshold}"
        assert run_audit(load_config(path, out=str(out))).exit_code == 0
        info = json.loads((out / "run.json").read_text())
        assert info["search"]["start"].startswith(f"{start} (auto: 23 images")
        assert len(list(out.glob("cache/encoder-*.pt"))) == (start == "encoder")
        assert read_output(str(out), columns=None)[0].num_rows == 23
