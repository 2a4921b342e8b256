"""The checks shared by the job and `memaudit report`: completeness and train/val overlap."""

from __future__ import annotations

import io
import json
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stats import StatsError, report_from_output
from stats.checks import check_complete, overlaps, planned_counts


def results(**columns) -> pa.Table:
    base = {"image_id": ["a", "b", "c", "x", "y"], "split": ["train", "train", "train", "val", "val"],
            "error": [0.1, 0.2, 0.3, 0.4, 0.5]}
    return pa.table({**base, **columns})


REJECTS = pa.table({"image_id": ["z"], "split": ["val"], "stage": ["recover"], "reason": ["nan"]})


def test_complete_output_gives_counts_per_split():
    counts = check_complete(results(), REJECTS, {"train": 3, "val": 3})
    assert counts == {"train": {"images": 3, "results": 3, "rejects": 0, "failures": 0},
                      "val": {"images": 3, "results": 2, "rejects": 1, "failures": 1}}


@pytest.mark.parametrize(("planned", "rejects", "message"), [
    ({"train": 4, "val": 3}, REJECTS, "split train has 3 results and 0 rejects rows (0 ids repeated) for 4 planned"),
    ({"train": 3, "val": 3}, None, "split val has 2 results and 0 rejects rows (0 ids repeated) for 3 planned"),
    ({"train": 3, "val": 3}, pa.table({"image_id": ["x"], "split": ["val"]}), "split val has 2 results and 1 rejects rows (1 ids repeated)"),
])
def test_incomplete_or_repeated_rows_are_refused(planned, rejects, message):
    with pytest.raises(StatsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_complete(results(), rejects, planned)


def test_overlap_by_id_and_by_content():
    assert overlaps(results(), [("train", "val")]) == []
    same_id = results().set_column(0, "image_id", pa.array(["a", "b", "c", "x", "a"]))
    assert overlaps(same_id, [("train", "val")])[0].startswith("1 val images have the same ids as train images")
    hashed = results(target_hash=["h1", "h2", "h3", "h2", "h9"])
    (message,) = overlaps(hashed, [("train", "val")])
    assert message.startswith("1 val images have the same content as train images (by target_hash), e.g. ['x']")
    assert overlaps(hashed, [("train", "test")]) == []  # a pair without results is not checked


def test_planned_counts_come_from_run_json():
    assert planned_counts({"plan": {"images": {"train": 3, "val": 3}}}) == {"train": 3, "val": 3}
    assert planned_counts({"plan": {"images": {"train": "3"}}}) is None
    assert planned_counts(None) is None and planned_counts({"status": "done"}) is None


@pytest.fixture
def out_url():
    url = f"memory://stats-checks/{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def write(url: str, table: pa.Table, run_info: dict) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.makedirs(f"{root}/results", exist_ok=True)
    fs.pipe_file(f"{root}/results/part-0.parquet", buffer.getvalue())
    fs.pipe_file(f"{root}/run.json", json.dumps(run_info).encode())


def test_memaudit_report_refuses_what_the_job_refuses(out_url):
    rng = np.random.default_rng(0)
    n = 30
    table = pa.table({"image_id": [f"t{i}" for i in range(n)] + [f"v{i}" for i in range(n)],
                      "split": ["train"] * n + ["val"] * n, "error": rng.random(2 * n),
                      "target_hash": [f"h{i}" for i in range(2 * n)]})
    fs, root = fsspec.core.url_to_fs(out_url)
    write(out_url, table, {"plan": {"images": {"train": n + 2, "val": n}}, "status": "partial"})
    with pytest.raises(StatsError, match="split train has 30 results and 0 rejects rows .* for 32 planned images"):
        report_from_output(out_url)
    assert not fs.exists(f"{root}/report.html")

    copied = table.set_column(3, "target_hash", pa.array([f"h{i}" for i in range(n)] + [f"h{i}" for i in range(n)]))
    write(out_url, copied, {"plan": {"images": {"train": n, "val": n}}})
    with pytest.raises(StatsError, match=r"30 val images have the same content as train images .* \(no verdict written\)"):
        report_from_output(out_url)
    assert not fs.exists(f"{root}/report.html")

    write(out_url, table, {"plan": {"images": {"train": n, "val": n}}})
    assert report_from_output(out_url).verdict.label == "no evidence"
    assert fs.exists(f"{root}/report.html") and fs.exists(f"{root}/ranking.parquet")
