"""jobs.sources and jobs.plan: formats, ids, the seeded limit, id checks, and a deterministic shard plan (no Ray)."""

from __future__ import annotations

import shutil

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SIDE, images, png, tiny_config, write_yaml

from jobs.fingerprint import settings_hash
from jobs.config import ConfigError, SourceConfig, load_config
from jobs.plan import check_ids, make_plan
from jobs.sources import list_source, read_items, select_rows


def _config(tmp_path, targets, **kw):
    raw = tiny_config("g.pt")
    raw["targets"] = targets
    raw.update(kw)
    return load_config(write_yaml(tmp_path / "audit.yaml", raw))


def test_parquet_bytes_column_with_ids(tiny_data):
    src = SourceConfig(uri=str(tiny_data / "train.parquet"), image_column="image", id_column="id")
    listing = list_source("train", 0, src, None)
    assert listing.rows == (12,)
    items = read_items(src, [(listing.files[0], [0, 4, 5, 11])], str(tiny_data), None)  # rows span row groups of 5
    assert [i.image_id for i in items] == ["train-000", "train-004", "train-005", "train-011"]
    assert [i.row for i in items] == [0, 4, 5, 11]
    assert all(isinstance(i.data, bytes) and i.data.startswith(b"\x89PNG") for i in items)


def test_parquet_array_column_with_shape_column_and_fixed_shape(tiny_data):
    expected = images(5, seed=3)
    for extra in ({"shape_column": "shape"}, {"shape": (SIDE, SIDE)}):
        src = SourceConfig(uri=str(tiny_data / "arrays.parquet"), array_column="pixels", id_column="uid", **extra)
        items = read_items(src, [(str(tiny_data / "arrays.parquet"), range(5))], str(tiny_data), None)
        assert [i.image_id for i in items] == ["100", "101", "102", "103", "104"]  # integer ids become strings
        for item, want in zip(items, expected):
            assert item.data.dtype == np.uint8 and item.data.shape == (SIDE, SIDE)
            np.testing.assert_array_equal(item.data, want)


def test_array_that_does_not_fit_its_shape_is_a_read_reject(tiny_data):
    src = SourceConfig(uri=str(tiny_data / "arrays.parquet"), array_column="pixels", shape=(SIDE, SIDE + 1))
    (item,) = read_items(src, [(str(tiny_data / "arrays.parquet"), [2])], str(tiny_data), None)
    assert item.data is None and "do not fit shape" in item.error


def test_png_glob_with_ids_derived_from_path(tiny_data):
    src = SourceConfig(uri=str(tiny_data / "val" / "*.png"))
    listing = list_source("val", 0, src, None)
    assert [f.rsplit("/", 1)[-1] for f in listing.files] == [f"v{i:02d}.png" for i in range(6)]
    items = read_items(src, [(f, range(0, 1)) for f in listing.files[:2]], str(tiny_data), None)
    assert [i.image_id for i in items] == ["val/v00.png", "val/v01.png"]  # relative to the config's directory
    assert items[0].data == (tiny_data / "val" / "v00.png").read_bytes()


def test_parquet_ids_derived_from_path_and_row(tiny_data):
    src = SourceConfig(uri=str(tiny_data / "train.parquet"), image_column="image")
    items = read_items(src, [(str(tiny_data / "train.parquet"), [3])], str(tiny_data), None)
    assert items[0].image_id == "train.parquet#3"


def test_sources_work_through_fsspec_memory():
    fs = fsspec.filesystem("memory")
    for i, a in enumerate(images(3, seed=5)):
        fs.pipe(f"/src-test/img{i}.png", png(a))
    src = SourceConfig(uri="memory://src-test/*.png")
    listing = list_source("val", 0, src, None)
    assert listing.files == tuple(f"memory:///src-test/img{i}.png" for i in range(3))  # fsspec memory paths are absolute
    items = read_items(src, [(f, [0]) for f in listing.files], "/", None)
    assert items[2].image_id == "memory:///src-test/img2.png" and items[2].data.startswith(b"\x89PNG")


def test_missing_files_and_columns_are_config_errors(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"targets.val\[0\].uri: no png files match"):
        make_plan(_config(tmp_path, {"val": [str(tiny_data / "nothing" / "*.png")]}))
    bad = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "img"}]}
    with pytest.raises(ConfigError, match=r"targets.train\[0\].image_column: .* has no column 'img' \(columns: id, image\)"):
        make_plan(_config(tmp_path, bad))


def test_limit_is_a_seeded_subsample_that_does_not_change_between_runs():
    a = select_rows(1000, 50, 0, "train")
    assert len(a) == 50 and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, select_rows(1000, 50, 0, "train"))
    assert not np.array_equal(a, select_rows(1000, 50, 1, "train"))
    assert not np.array_equal(a, select_rows(1000, 50, 0, "val"))  # splits draw independently
    np.testing.assert_array_equal(select_rows(10, 50, 0, "train"), np.arange(10))


def test_duplicate_and_overlapping_ids_are_refused():
    with pytest.raises(ConfigError, match=r"targets.train: 1 ids occur more than once, e.g. 'a' x2"):
        check_ids({"train": ["a", "b", "a"]})
    with pytest.raises(ConfigError, match=r"2 ids are in both train and val, e.g. 'b', 'c'"):
        check_ids({"train": ["a", "b", "c"], "val": ["b", "c", "d"], "generated": ["a"]})
    check_ids({"train": ["a"], "test": ["a"]})  # only the train/val pair must be disjoint


def test_plan_overlap_is_refused_before_any_work(tmp_path, tiny_data):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}]}
    with pytest.raises(ConfigError, match="12 ids are in both train and val"):
        make_plan(_config(tmp_path, targets))


def test_plan_is_deterministic_and_cut_by_shard_size(tmp_path, tiny_data):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 7, "seed": 3},
               "shard_size": 5, "limit": {"train": 9}}
    plan = make_plan(_config(tmp_path, targets))
    again = make_plan(_config(tmp_path, targets))
    assert [s.id for s in plan.shards] == [s.id for s in again.shards]
    assert plan.shards == again.shards and plan.fingerprint == again.fingerprint
    assert plan.images == {"train": 9, "val": 6, "generated": 7}
    assert [s.size for s in plan.shards] == [5, 4, 5, 1, 5, 2]
    assert [s.id.split("-")[0] for s in plan.shards] == ["train"] * 2 + ["val"] * 2 + ["generated"] * 2
    rows = [r for s in plan.shards[:2] for _, rs in s.segments for r in rs]
    np.testing.assert_array_equal(rows, select_rows(12, 9, 0, "train"))


def test_auto_shard_size_depends_on_the_planned_images_only():
    from jobs.plan import AUTO_MAX, AUTO_MIN, auto_shard_size

    assert [auto_shard_size(n) for n in (0, 1, 428, 1024)] == [AUTO_MIN] * 4  # small audits: shards of 16
    assert [auto_shard_size(n) for n in (1025, 3018, 5000)] == [17, 48, 79]  # ceil(n / 64): about 64 shards
    assert [auto_shard_size(n) for n in (16_384, 16_385, 10**6)] == [AUTO_MAX] * 3  # large ones: shards of 256


def test_auto_shard_size_plans_the_same_shards_whatever_the_actors(tmp_path, tiny_data):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 3000, "seed": 0}}
    raw = {**tiny_config("g.pt"), "targets": targets}  # shard_size: auto, the default
    plans = [make_plan(load_config(write_yaml(tmp_path / f"audit-{actors}.yaml",
                                              {**raw, "resources": {"actors": actors, "cpus_per_actor": 1}})))
             for actors in (2, 2, 1, 7)]
    assert all(p.shards == plans[0].shards and p.fingerprint == plans[0].fingerprint for p in plans)
    plan = plans[0]
    assert plan.shard_size == 48 and plan.shard_size_auto  # ceil(3018 / 64)
    assert [s.size for s in plan.shards if s.split != "generated"] == [12, 6]
    assert len([s for s in plan.shards if s.generated]) == 63
    assert "shard size 48 (targets.shard_size auto: ceil(3018 images / 64)" in plan.describe()
    # The fingerprint hashes the resolved size: auto and the size it resolves to are the same plan.
    explicit = make_plan(load_config(write_yaml(tmp_path / "explicit.yaml",
                                                {**raw, "targets": {**targets, "shard_size": 48}})))
    assert explicit.shards == plan.shards and explicit.fingerprint == plan.fingerprint
    assert not explicit.shard_size_auto
    other = make_plan(load_config(write_yaml(tmp_path / "other.yaml", {**raw, "targets": {**targets, "shard_size": 47}})))
    assert other.fingerprint != plan.fingerprint


def test_plan_and_fingerprint_do_not_depend_on_where_config_and_data_live(tmp_path, tiny_data):
    # Paths under the config's directory enter ids relative to it (a `ray job submit` working_dir moves them).
    a = tmp_path / "a"
    shutil.copytree(tiny_data, a / "data")
    targets = {"train": [{"uri": "data/train.parquet", "image_column": "image"}], "val": ["data/val/*.png"],
               "shard_size": 4}
    write_yaml(a / "audit.yaml", {**tiny_config("g.pt"), "targets": targets})
    shutil.copytree(a, tmp_path / "b")
    plan_a, plan_b = (make_plan(load_config(d / "audit.yaml")) for d in (a, tmp_path / "b"))
    assert [s.id for s in plan_a.shards] == [s.id for s in plan_b.shards]
    assert plan_a.fingerprint == plan_b.fingerprint
    src = load_config(tmp_path / "b" / "audit.yaml").targets.splits["train"][0]
    items = read_items(src, plan_b.shards[0].segments, str(tmp_path / "b"), None)
    assert items[0].image_id == "data/train.parquet#0"


def test_plan_fingerprint_changes_when_files_are_added(tmp_path, tiny_data):
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "val", data)
    config = _config(tmp_path, {"val": [str(data / "*.png")]})
    before = make_plan(config).fingerprint
    (data / "v99.png").write_bytes(png(images(1, seed=9)[0]))
    after = make_plan(config)
    assert after.fingerprint != before and settings_hash(config) == settings_hash(config)
    assert after.images["val"] == 7


def test_parquet_row_counts_come_from_footers(tmp_path):
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"image": [b"x"] * 100}), path, row_group_size=7)
    src = SourceConfig(uri=str(path), image_column="image")
    assert list_source("train", 0, src, None).rows == (100,)


def test_locating_rows_in_many_files_matches_a_file_by_file_walk():
    """SourceListing.locate (one binary search per row) gives what walking every file would."""
    import numpy as np

    from jobs.formats import SourceListing

    rng = np.random.default_rng(0)
    rows = tuple(int(r) for r in rng.integers(0, 5, size=300))  # files of 0..4 rows, empty ones among them
    listing = SourceListing("train", 0, SourceConfig(uri="x/*.parquet"), tuple(f"f{i}" for i in range(300)), rows)
    positions = np.sort(rng.choice(listing.total, size=200, replace=False))
    walk, start = [], 0
    for f, n in enumerate(rows):
        inside = positions[(positions >= start) & (positions < start + n)] - start
        if inside.size:
            walk.append((f, inside.tolist()))
        start += n
    assert [(f, r.tolist()) for f, r in listing.locate(positions)] == walk


def test_a_new_format_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    """A format the registry did not know (one .npy array per file): registered, it is inferred from the
    extension, listed, planned, given ids and read by the same code paths as Parquet and PNG."""
    import io

    from jobs.formats import FORMATS, ImageFiles, Item

    class NpyFiles(ImageFiles):
        def read(self, src, segments, base_dir, endpoint_url):
            return [Item(i.image_id, i.source, 0, np.load(io.BytesIO(i.data)).astype(np.uint8))
                    for i in super().read(src, segments, base_dir, endpoint_url)]

    for k, a in enumerate(images(3, seed=4)):
        np.save(tmp_path / f"img{k}.npy", a)
    src = SourceConfig(uri=str(tmp_path / "*.npy"))
    assert src.format is None  # unknown before it is registered
    monkeypatch.setitem(FORMATS, "npy", NpyFiles("npy"))
    src = SourceConfig(uri=str(tmp_path / "*.npy"))
    assert src.format == "npy"
    listing = list_source("train", 0, src, None)
    assert listing.rows == (1, 1, 1)
    items = read_items(src, FORMATS["npy"].segments(listing, np.arange(3)), str(tmp_path), None)
    assert [i.image_id for i in items] == ["img0.npy", "img1.npy", "img2.npy"]
    assert all(i.error is None and i.data.shape == (SIDE, SIDE) for i in items)
