"""The fingerprint covers the content identity of every input file, so a resume never mixes two versions of
a file; an empty Parquet source is refused instead of silently dropping its split."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import images, png, tiny_config, write_yaml

from jobs.config import ConfigError, load_config
from jobs.plan import make_plan
from jobs.formats import SourceError


def _plan(tmp_path, generator, train):
    raw = tiny_config(generator, targets={"train": [{"uri": str(train), "image_column": "image", "id_column": "id"}],
                                          "generated": {"count": 2}})
    return make_plan(load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(tmp_path / "out")))


def _train(path, seed: int, n: int = 4):
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(n)], "image": [png(a) for a in images(n, seed=seed)]}), path)


def test_a_source_file_replaced_under_the_same_name_and_row_count_changes_the_fingerprint(tmp_path, tiny_generator):
    train = tmp_path / "train.parquet"
    _train(train, seed=1)
    before = _plan(tmp_path, tiny_generator, train).fingerprint
    assert _plan(tmp_path, tiny_generator, train).fingerprint == before  # unchanged input: a resume
    stat = train.stat()
    _train(train, seed=2)  # same name, same ids and row count, other images
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _plan(tmp_path, tiny_generator, train).fingerprint != before


def test_a_generator_rewritten_in_place_changes_the_fingerprint(tmp_path, tiny_generator):
    train, generator = tmp_path / "train.parquet", tmp_path / "g.pt"
    _train(train, seed=1)
    shutil.copy(tiny_generator, generator)
    before = _plan(tmp_path, str(generator), train).fingerprint
    generator.write_bytes(generator.read_bytes() + b"\0")  # retrained weights, same file name
    assert _plan(tmp_path, str(generator), train).fingerprint != before


def test_an_empty_parquet_source_is_refused_naming_it(tmp_path, tiny_generator):
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "image": pa.array([], pa.binary())}), train)
    with pytest.raises((ConfigError, SourceError), match=r"train.*holds no rows"):
        _plan(tmp_path, tiny_generator, train)
