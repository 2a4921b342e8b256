"""The output's bookkeeping without Ray: which shards are done, what --overwrite removes,
and outputs that are refused outright."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config, write_yaml

from jobs import outputs
from jobs.config import load_config
from jobs.errors import ConfigError

FP = "a" * 64
PLANNED = {"train-00000000-000000000": "train", "train-00000000-000000004": "train", "val-11111111-000000000": "val"}


def _part(rows: int, fingerprint: str = FP, shard: str = "s") -> bytes:
    return outputs.part_bytes(pa.table({"image_id": [f"i{k}" for k in range(rows)]}), fingerprint=fingerprint, shard_id=shard)


def _write_shard(out, shard: str, *, results: bytes | None, rejects: bytes | None) -> None:
    split = PLANNED[shard]
    for url, data in ((outputs.results_url(str(out), split, shard), results), (outputs.rejects_url(str(out), shard), rejects)):
        if data is not None:
            path = out / url[len(str(out)) + 1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def test_a_shard_is_done_only_when_both_parts_are_there_and_readable(tmp_path, caplog):
    a, b, c = PLANNED
    _write_shard(tmp_path, a, results=_part(4), rejects=_part(0))  # done
    _write_shard(tmp_path, b, results=None, rejects=_part(0))  # results part missing
    _write_shard(tmp_path, c, results=_part(2), rejects=b"PAR1 cut short")  # rejects part corrupt
    with caplog.at_level(logging.WARNING, logger="memaudit"):
        done = outputs.prepare(str(tmp_path), fingerprint=FP, config={}, previous=None, planned=PLANNED, endpoint_url=None)
    assert done == {a}
    assert f"shard {b} is not done (missing {outputs.results_url(str(tmp_path), 'train', b)})" in caplog.text
    assert f"shard {c} is not done (unreadable {outputs.rejects_url(str(tmp_path), c)}" in caplog.text


def test_parts_of_another_audit_are_refused(tmp_path):
    a = next(iter(PLANNED))
    _write_shard(tmp_path, a, results=_part(4, "b" * 64), rejects=_part(0, "b" * 64))
    with pytest.raises(ConfigError, match=r"already holds a part .* of an audit with another fingerprint"):
        outputs.prepare(str(tmp_path), fingerprint=FP, config={}, previous=None, planned=PLANNED, endpoint_url=None)


def test_overwrite_removes_only_what_memaudit_wrote(tmp_path):
    a = next(iter(PLANNED))
    _write_shard(tmp_path, a, results=_part(4), rejects=_part(0))
    mine = tmp_path / "results" / "split=train" / "part-by-hand.parquet"
    pq.write_table(pa.table({"x": [1]}), mine)  # a part-* name, but no memaudit metadata
    notes = tmp_path / "results" / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "report.html").write_text("old report")
    (tmp_path / "run.json").write_text("{}")
    outputs.clear(str(tmp_path), None)
    assert not list(tmp_path.glob("r*/**/part-train-*.parquet")) and not (tmp_path / "report.html").exists()
    assert mine.exists() and notes.read_text() == "mine"  # not memaudit's: kept, even inside results/
    assert (tmp_path / "run.json").exists()  # the lease holder's run.json stays


@pytest.mark.parametrize("out, why", [("", "empty"), ("/", "the filesystem root"), ("s3://bucket/", "the root of a bucket")])
def test_an_empty_or_root_output_is_refused(tmp_path, tiny_generator, tiny_data, out, why):
    path = write_yaml(tmp_path / "audit.yaml", tiny_config(tiny_generator, targets={"val": [str(tiny_data / "val" / "*.png")]}))
    with pytest.raises(ConfigError, match=f"output: .*{why}"):
        load_config(path, out=out)


def test_a_shard_whose_parts_hold_other_ids_than_planned_is_not_done(tmp_path, caplog):
    a, b, _ = PLANNED
    _write_shard(tmp_path, a, results=_part(3), rejects=_part(0))  # i0 i1 i2: as planned
    _write_shard(tmp_path, b, results=_part(3), rejects=_part(0))  # the right count, but not the planned ids
    planned_ids = {a: ["i2", "i0", "i1"], b: ["j0", "j1", "j2"]}
    with caplog.at_level(logging.WARNING, logger="memaudit"):
        done = outputs.prepare(str(tmp_path), fingerprint=FP, config={}, previous=None, planned=PLANNED,
                               endpoint_url=None, expected=planned_ids.get)
    assert done == {a}
    assert f"shard {b} is not done (its parts hold 3 rows for 3 planned images; missing e.g. ['j0', 'j1']" in caplog.text
