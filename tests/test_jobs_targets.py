"""A checkpoint sweep's decoded targets (jobs.target_cache): decoded once, read back exactly, rejects kept,
and a cache part that does not fit (another shape, a changed source, a corrupt file) never used."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import images, png, tiny_config, write_yaml

from jobs.config import load_config
from jobs.plan import make_plan
from jobs.target_cache import TargetCache, ShardTargets, _part_bytes, _read_part, data_key, load_targets
from jobs.formats import Item
from jobs.sources import SourceImage


@pytest.fixture
def source(tmp_path):
    """train.parquet: 6 PNGs (8x8 gray) with an undecodable row in the middle."""
    rows = [png(a) for a in images(6, seed=4)]
    rows.insert(3, b"not an image")
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(len(rows))], "image": rows}), path)
    return path


def plan_for(tmp_path, tiny_generator, source):
    raw = tiny_config(tiny_generator, targets={"train": [{"uri": str(source), "image_column": "image",
                                                          "id_column": "id"}]},
                      output=str(tmp_path / "out"))
    config = load_config(write_yaml(tmp_path / "audit.yaml", raw))
    plan = make_plan(config)
    return config, plan, [s for s in plan.shards if s.split == "train"][0]


def test_the_second_load_reads_exactly_what_the_first_decoded(tmp_path, tiny_generator, source):
    config, plan, shard = plan_for(tmp_path, tiny_generator, source)
    cache = TargetCache(str(tmp_path / "cache"), data_key(config, plan))
    first = load_targets(shard, config, shape=(1, 8, 8), cache=cache)
    second = load_targets(shard, config, shape=(1, 8, 8), cache=cache)

    assert not first.from_cache and second.from_cache
    assert torch.equal(first.targets, second.targets) and second.targets.shape == (6, 1, 8, 8)
    assert [i.image_id for i in second.items] == [i.image_id for i in first.items] == ["t0", "t1", "t2", "t4", "t5", "t6"]
    assert [(i.image_id, i.row, stage) for i, stage, _ in second.rejects] == [("t3", 3, "decode")]
    assert second.rejects[0][2] == first.rejects[0][2]
    assert second.described == first.described and second.described[0] == SourceImage("PNG", 8, 8, 1)
    assert [i.source for i in second.items] == [i.source for i in first.items]


def test_a_part_that_does_not_fit_is_decoded_again(tmp_path, tiny_generator, source, caplog):
    config, plan, shard = plan_for(tmp_path, tiny_generator, source)
    cache = TargetCache(str(tmp_path / "cache"), data_key(config, plan))
    load_targets(shard, config, shape=(1, 8, 8), cache=cache)

    other_shape = load_targets(shard, config, shape=(3, 8, 8), cache=cache)  # another generator's resolution
    assert not other_shape.from_cache and other_shape.targets.shape == (6, 3, 8, 8)

    url = cache.url(shard.id, (1, 8, 8), config)
    with open(url, "wb") as f:
        f.write(b"PAR1 truncated")
    with caplog.at_level(logging.WARNING, logger="memaudit"):
        again = load_targets(shard, config, shape=(1, 8, 8), cache=cache)
    assert not again.from_cache and "unusable" in caplog.text and shard.id in caplog.text
    assert load_targets(shard, config, shape=(1, 8, 8), cache=cache).from_cache  # rewritten, good again


def test_a_changed_source_is_another_key(tmp_path, tiny_generator, source):
    config, plan, _ = plan_for(tmp_path, tiny_generator, source)
    before = data_key(config, plan)
    assert data_key(config, make_plan(config)) == before  # the same files: the same key
    table = pq.read_table(source)
    pq.write_table(table.slice(0, 5), source)  # a data snapshot that changed
    assert data_key(config, make_plan(config)) != before


def test_labels_keep_their_type_and_sources_lose_their_secrets_through_a_part(tmp_path, tiny_generator, source):
    config, plan, shard = plan_for(tmp_path, tiny_generator, source)
    signed = "https://h/x.parquet?X-Amz-Signature=secret"
    items = [Item(f"t{i}", signed, i, None, label=label) for i, label in enumerate([3, "cat", None])]
    items += [Item(f"t{i}", "s3://b/x.parquet", i, None) for i in range(3, shard.size)]
    loaded = ShardTargets(items, [SourceImage("PNG", 8, 8, 1)] * len(items), torch.rand(len(items), 1, 8, 8))
    url = str(tmp_path / "part.parquet")
    with open(url, "wb") as f:
        f.write(_part_bytes(loaded, shard))
    back = _read_part(url, shard, (1, 8, 8), None)
    assert [i.label for i in back.items[:3]] == [3, "cat", None]
    stored = pq.read_table(url, columns=["source"]).column("source").to_pylist()
    assert back.items[0].source == stored[0] == "https://h/x.parquet?<redacted>"
    assert torch.equal(back.targets, loaded.targets)


def test_the_cache_lives_on_an_object_store(tmp_path, tiny_generator, source, s3, bucket, moto_server):
    config, plan, shard = plan_for(tmp_path, tiny_generator, source)
    cache = TargetCache(f"s3://{bucket}/sweep/cache/targets", data_key(config, plan), moto_server)
    first = load_targets(shard, config, shape=(1, 8, 8), cache=cache)
    assert s3.exists(cache.url(shard.id, (1, 8, 8), config).removeprefix("s3://"))
    second = load_targets(shard, config, shape=(1, 8, 8), cache=cache)
    assert second.from_cache and torch.equal(first.targets, second.targets)
