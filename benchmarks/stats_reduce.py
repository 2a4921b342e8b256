"""Benchmark: the full stats reduce over 10 million result rows in 3 splits.

    /work/venv/bin/python benchmarks/stats_reduce.py                 # 10M rows, temp dir
    /work/venv/bin/python benchmarks/stats_reduce.py --rows 1000000 --out /tmp/bench --keep

Writes results as hive-partitioned Parquet parts (results/split=<split>/part-<n>.parquet,
every column of DESIGN.md §5 but the latents), plus a few thousand rejects, in a child
process; then, in this process, times each stage of what `memaudit report OUT` does:
read, group (validation), summary, tests, histograms, verdict, report, write. Prints
seconds per stage and the peak resident memory of this process (ru_maxrss), which the
data generation does not inflate. Target: under 30 s and 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

SPLITS = (("train", 0.45), ("val", 0.45), ("generated", 0.10))
ROWS_PER_PART = 100_000


def generate(out: str, rows: int, seed: int) -> None:
    """Write the synthetic run: train errors slightly below val, generated far below."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centre = {"train": -3.6, "val": -3.5, "generated": -8.0}
    shard = 0
    for split, share in SPLITS:
        count = int(rows * share)
        os.makedirs(f"{out}/results/split={split}", exist_ok=True)
        for start in range(0, count, ROWS_PER_PART):
            n = min(ROWS_PER_PART, count - start)
            index = pa.array(np.arange(start, start + n))
            error = rng.lognormal(centre[split], 0.6, n)
            table = pa.table(
                {
                    "image_id": pc.binary_join_element_wise(split, pc.cast(index, pa.string()), "-"),
                    "split": pa.repeat(pa.scalar(split), n),
                    "source": pa.repeat(pa.scalar(f"s3://bucket/ffhq/{split}/shard-{shard:05d}.parquet"), n),
                    "error": error,
                    "mse": error,
                    "mae": np.sqrt(error),
                    "psnr": 10 * np.log10(4.0 / error),
                    "restarts": np.full(n, 4, np.int32),
                    "best_restart": rng.integers(0, 4, n, dtype=np.int32),
                    "iterations": np.full(n, 50, np.int32),
                    "converged": rng.random(n) < 0.97,
                    "seconds": rng.gamma(2.0, 0.05, n),
                }
            )
            pq.write_table(table, f"{out}/results/split={split}/part-{shard:05d}.parquet")
            shard += 1
    os.makedirs(f"{out}/rejects", exist_ok=True)
    rejects = 3000
    pq.write_table(
        pa.table(
            {
                "image_id": [f"bad-{i}" for i in range(rejects)],
                "split": [SPLITS[i % 2][0] for i in range(rejects)],
                "source": ["s3://bucket/ffhq/train/shard-00000.parquet"] * rejects,
                "row": pa.array(range(rejects), pa.int64()),
                "stage": ["decode"] * rejects,
                "reason": ["cannot identify image file"] * rejects,
            }
        ),
        f"{out}/rejects/part-00000.parquet",
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(out: str) -> None:
    start_rss = peak_rss_mb()
    import stats
    from stats import reduction as reduction_module
    from stats.report import render as report_module

    seconds: dict[str, float] = {}
    peak_after: dict[str, float] = {}

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began
                peak_after[name] = peak_rss_mb()

        return wrapper

    # Time the stages where reduce() and report_from_output() call them.
    for name, attribute in (
        ("group+validate", "group_results"),
        ("summary", "summarize"),
        ("tests", "compare"),
        ("histograms", "histogram_table"),
        ("verdict", "decide"),
    ):
        setattr(reduction_module, attribute, timed(name, getattr(reduction_module, attribute)))
    report_module.render_report = timed("report", report_module.render_report)
    report_module.stats_io.read_output = timed("read", report_module.stats_io.read_output)
    report_module.stats_io.write_outputs = timed("write", report_module.stats_io.write_outputs)

    began = time.perf_counter()
    result = stats.report_from_output(out)
    total = time.perf_counter() - began

    rows = sum(result.summary.column("count").to_pylist())
    print(f"rows: {rows:,} in {len(result.summary)} splits; cpus: {os.cpu_count()}")
    for name in ("read", "group+validate", "summary", "tests", "histograms", "verdict", "report", "write"):
        print(f"  {name:<16} {seconds.get(name, 0.0):7.2f} s   peak RSS so far {peak_after.get(name, 0.0):6.0f} MB")
    print(f"  {'total':<16} {total:7.2f} s   (target < 30 s)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB   (target < 2048 MB; {start_rss:.0f} MB before importing stats)")
    print(f"verdict: {result.verdict.sentence}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--out", help="output directory (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data; reuse it when present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()

    if args.generate:
        generate(args.out, args.rows, args.seed)
        return
    out = args.out or tempfile.mkdtemp(prefix="memaudit-bench-")
    try:
        if not os.path.isdir(os.path.join(out, "results")):
            began = time.perf_counter()
            command = [sys.executable, __file__, "--generate", "--out", out]
            command += ["--rows", str(args.rows), "--seed", str(args.seed)]
            subprocess.run(command, check=True)
            print(f"generated {args.rows:,} rows under {out} in {time.perf_counter() - began:.1f} s (not timed below)")
        measure(out)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
