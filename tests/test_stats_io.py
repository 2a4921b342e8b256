"""Reading and writing outputs through fsspec, `memaudit report`, and the import boundary."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import stats
from stats import StatsError, StatsSettings, read_output, reduce, report_from_output
from stats.storage import write_atomic
from stats.cli import main


@pytest.fixture
def out_url() -> str:
    """A fresh memory:// output URL (the memory filesystem is shared by the whole process)."""
    url = f"memory://stats-tests/{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def put_parquet(url: str, table: pa.Table) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, buffer.getvalue())


def split_table(split: str, errors: np.ndarray, start: int, *, with_split: bool = True) -> pa.Table:
    columns = {
        "image_id": [f"{split}-{start + i}" for i in range(len(errors))],
        "error": errors,
        "converged": [True] * len(errors),
        "source": ["s3://bucket/x.parquet"] * len(errors),
        "latent": pa.array([[0.0, 1.0]] * len(errors), pa.list_(pa.float32())),
    }
    if with_split:
        columns["split"] = pa.array([split] * len(errors)).dictionary_encode()  # writers may store dictionaries
    return pa.table(columns)


def write_run(out: str, *, with_run_json: dict | None = None) -> pa.Table:
    """Parts across several files and splits; returns the concatenated results."""
    rng = np.random.default_rng(0)
    parts = []
    shard = 0
    for split, centre, sizes in (("train", -4, (30, 25, 5)), ("val", -3, (40, 20)), ("generated", -9, (15,))):
        start = 0
        for n in sizes:
            table = split_table(split, rng.lognormal(centre, 0.5, n), start, with_split=shard != 1)
            put_parquet(f"{out}/results/split={split}/part-{shard:05d}.parquet", table)
            parts.append(table.select(["image_id", "error", "converged"]).append_column("split", pa.array([split] * n)))
            start += n
            shard += 1
    put_parquet(f"{out}/results/split=train/.part-99999.parquet.tmp.parquet", split_table("train", np.ones(3), 0))
    put_parquet(
        f"{out}/rejects/part-00000.parquet",
        pa.table({"image_id": ["r1", "r2"], "split": ["train", "val"], "source": ["s"] * 2,
                  "row": pa.array([1, 2], pa.int64()), "stage": ["decode"] * 2, "reason": ["bad"] * 2}),
    )
    if with_run_json is not None:
        fs, root = fsspec.core.url_to_fs(out)
        fs.pipe_file(f"{root}/run.json", json.dumps(with_run_json).encode())
    return pa.concat_tables(parts)


def test_read_output_reads_parts_across_files_and_splits(out_url):
    expected = write_run(out_url)
    results, rejects, samples, run_info = read_output(out_url)
    assert results.num_rows == expected.num_rows == 135  # the hidden temporary is skipped
    assert results.schema.field("split").type == pa.string()
    assert results.column_names.count("split") == 1
    assert "latent" not in results.column_names and "source" not in results.column_names
    assert sorted(zip(results.column("image_id").to_pylist(), results.column("split").to_pylist())) == sorted(
        zip(expected.column("image_id").to_pylist(), expected.column("split").to_pylist())
    )
    assert rejects.num_rows == 2 and samples is None and run_info is None
    everything, *_ = read_output(out_url, columns=None)
    assert {"latent", "source"} <= set(everything.column_names)


def test_report_from_output_writes_tables_and_report_equal_to_reduce(out_url):
    expected = write_run(out_url)
    reduction = report_from_output(out_url)
    direct = reduce(expected, pa.table({"split": ["train", "val"]}))
    fs, root = fsspec.core.url_to_fs(out_url)
    for name, table in (("summary", direct.summary), ("tests", direct.tests), ("histograms", direct.histograms),
                        ("ranking", direct.ranking)):
        written = pq.read_table(f"{root}/{name}.parquet", filesystem=fs)
        assert written.equals(table), name
    assert reduction.verdict == direct.verdict
    html_text = fs.cat_file(f"{root}/report.html").decode()
    assert reduction.verdict.sentence.replace("<", "&lt;").replace(">", "&gt;") in html_text
    assert [p for p in fs.find(root) if "/." in p and "results" not in p] == []  # no temporaries left


def test_settings_come_from_run_json(out_url):
    write_run(out_url, with_run_json={"config": {"stats": {"alpha": 0.2, "gap_threshold": 0.5, "extra": 1}}})
    reduction = report_from_output(out_url)
    assert reduction.settings.alpha == 0.2 and reduction.settings.gap_threshold == 0.5
    assert reduction.verdict.numbers["alpha"] == 0.2
    explicit = report_from_output(out_url, settings=StatsSettings(alpha=0.05))
    assert explicit.settings.alpha == 0.05


def test_bad_settings_in_run_json_name_the_field(out_url):
    write_run(out_url, with_run_json={"config": {"stats": {"alpha": "high"}}})
    with pytest.raises(StatsError, match=r"run.json config.stats.alpha"):
        report_from_output(out_url)


def test_missing_results_and_inconsistent_parts_are_stats_errors(out_url):
    with pytest.raises(StatsError, match="no results parts"):
        read_output(out_url)
    put_parquet(f"{out_url}/results/split=val/part-0.parquet", split_table("train", np.ones(2), 0))
    with pytest.raises(StatsError, match="disagrees with the directory split=val"):
        read_output(out_url)


def test_part_without_error_column_names_the_file(out_url):
    put_parquet(f"{out_url}/results/split=val/part-7.parquet", pa.table({"image_id": ["a"]}))
    with pytest.raises(StatsError, match=r"part-7.parquet: results part has no column 'error'"):
        read_output(out_url)


def test_atomic_write_on_local_disk_leaves_only_the_file(tmp_path):
    fs = fsspec.filesystem("file")
    target = tmp_path / "deep" / "report.html"
    write_atomic(fs, str(target), b"one")
    write_atomic(fs, str(target), b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_atomic_write_gives_a_file_the_umasks_mode_so_a_shared_output_stays_readable(tmp_path):
    import os

    before = os.umask(0o022)
    try:
        write_atomic(fsspec.filesystem("file"), str(tmp_path / "report.html"), b"x")
    finally:
        os.umask(before)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_report_on_a_local_directory(tmp_path):
    url = str(tmp_path / "run")
    write_run(url)
    report_from_output(url)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"summary.parquet", "tests.parquet", "histograms.parquet",
                                                              "ranking.parquet", "report.html"}


def test_cli_prints_verdict_summary_and_report_path(out_url, capsys):
    write_run(out_url)
    assert main([out_url]) == 0
    printed = capsys.readouterr().out
    reduction = report_from_output(out_url)
    assert reduction.verdict.sentence in printed
    assert stats.format_summary(reduction) in printed
    assert f"report: {out_url}/report.html" in printed
    assert "train vs val: KS D =" in printed


def test_cli_error_is_one_line_and_exit_code_2(out_url, capsys):
    assert main([out_url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no results parts" in lines[0]
    assert main([out_url, "--storage-endpoint", "http://localhost:9000"]) == 2
    assert "s3:// outputs only" in capsys.readouterr().err


def test_importing_stats_imports_neither_torch_nor_ray():
    code = (
        "import sys, stats, stats.cli, stats.report.render, stats.report.plots, stats.io\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
