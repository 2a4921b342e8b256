"""What the Ray job costs over running recovery in one process, for the same 256-image audit.

    python benchmarks/ray_overhead.py                 # digits, GLO-64, 128 train + 128 val, defaults (50 L-BFGS its)
    python benchmarks/ray_overhead.py --iterations 20 --repeats 3

In-process: read the Parquet rows, recovery.to_target, recovery.recover on all 256 targets, then
stats.reduce, best/median/worst samples (recover again + render) and the HTML report: the whole audit, in
one process, with torch on --threads threads (default 1: on this 2-core machine shared with other work,
torch's intra-op threads made the same run 25x slower, 137 s against 5 s; pass --threads 2 to see it).
Ray job: jobs.driver.run_audit with 2 actors (1 CPU each), which also plans, writes the per-shard parts,
reads them back and writes run.json. Ray's start-up is excluded: ray.init, and the actors' start-up (a
Ray worker process importing torch and our packages: the in-process run has paid its own imports before
its clock starts). Both figures are printed, with and without the actors' start-up.
The target is Ray wall time (Ray start-up excluded) <= 1.15x in-process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "jobs" / "assets"


def config_yaml(path: Path, iterations: int, shard_size: int) -> Path:
    path.write_text(f"""
generator:
  torchscript: {ASSETS / "models" / "glo-64.pt"}
  latent: {{shape: [32], prior: sphere}}
targets:
  train: [{{uri: {ASSETS / "digits" / "train-256.parquet"}, image_column: image, id_column: id}}]
  val: [{{uri: {ASSETS / "digits" / "val.parquet"}, image_column: image, id_column: id}}]
  limit: 128
  shard_size: {shard_size}
recovery: {{iterations: {iterations}}}
resources: {{actors: 2, cpus_per_actor: 1}}
job: {{progress_seconds: 60}}
""")
    return path


def in_process(config, plan, threads: int) -> float:
    """The same audit in this process, torch on `threads` threads; returns wall seconds."""
    import torch

    import recovery
    import stats
    from jobs.sources import read_items

    torch.set_num_threads(threads)
    started = time.perf_counter()
    g = recovery.load_generator(config.generator, device="cpu")
    shape = recovery.target_shape(g, config.recovery)
    tables = []
    for split in ("train", "val"):
        src = config.targets.splits[split][0]
        segments = [seg for s in plan.shards if s.split == split for seg in s.segments]
        items = read_items(src, segments, config.base_dir, None)
        targets = torch.stack([recovery.to_target(i.data, shape=shape, output_range=g.spec.output_range) for i in items])
        table = recovery.recover(g, targets, [i.image_id for i in items], settings=config.recovery)
        tables.append(table.append_column("split", pa.array([split] * table.num_rows)))
    results = pa.concat_tables(tables)
    reduction = stats.reduce(results, None, settings=config.stats)
    rows = []
    for split in ("train", "val"):  # best / median / worst, recovered again and rendered, as the job does
        part = results.filter(pa.compute.equal(results.column("split"), split))
        order = np.argsort(part.column("error").to_numpy())
        pick = [int(order[0]), int(order[(len(order) - 1) // 2]), int(order[-1])]
        src = config.targets.splits[split][0]
        items = read_items(src, [(src.uri, sorted(int(i) for i in _rows(plan, split, pick)))], config.base_dir, None)
        targets = torch.stack([recovery.to_target(i.data, shape=shape, output_range=g.spec.output_range) for i in items])
        from dataclasses import replace

        again = recovery.recover(g, targets, [i.image_id for i in items], settings=replace(config.recovery, keep_latent=True))
        z = torch.tensor(np.array(again.column("latent").to_pylist(), dtype=np.float32))
        for t, r in zip(targets, recovery.render(g, z, settings=config.recovery)):
            rows.append({"target": recovery.to_png(t), "recovery": recovery.to_png(r)})
    html = stats.render_report(reduction, results=results)
    with tempfile.TemporaryDirectory() as out:
        pq.write_table(results, f"{out}/results.parquet")
        Path(out, "report.html").write_text(html)
    return time.perf_counter() - started


def _rows(plan, split: str, positions: list[int]) -> list[int]:
    rows = [r for s in plan.shards if s.split == split for _, seg in s.segments for r in seg]
    return [rows[p] for p in positions]


def ray_job(config) -> tuple[float, dict]:
    from jobs.driver import run_audit

    started = time.perf_counter()
    outcome = run_audit(config, overwrite=True)
    if outcome.exit_code != 0:
        raise SystemExit(f"the Ray job failed: {outcome.failed}")
    return time.perf_counter() - started, outcome.run_info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--shard-size", type=int, default=32, help="images per shard (256 images: 8 shards on 2 actors)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process run")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    import ray

    from jobs.config import load_config
    from jobs.plan import make_plan

    logging.getLogger("memaudit").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(config_yaml(Path(tmp) / "audit.yaml", args.iterations, args.shard_size), out=f"{tmp}/out")
        plan = make_plan(config)
        assert plan.total_images == 256, plan.images
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
        time.sleep(5)  # let Ray's prestarted workers settle
        cores = os.cpu_count() or 1
        try:
            local, job, warm = [], [], []
            for r in range(args.repeats):  # interleaved, so background load hits both alike
                local.append(in_process(config, plan, args.threads))
                seconds, info = ray_job(config)
                job.append(seconds)
                warm.append(seconds - info["timing_s"]["actor_start"])
                print(f"  repeat {r + 1}: in-process {local[-1]:.2f}s, Ray job {job[-1]:.2f}s of which actor start-up "
                      f"{info['timing_s']['actor_start']:.2f}s", flush=True)
        finally:
            ray.shutdown()
    base = statistics.median(local)
    total, excl = statistics.median(job), statistics.median(warm)
    print(f"ray_overhead: 256 images (128 train + 128 val), GLO-64, {args.iterations} L-BFGS iterations, {cores} cores, "
          f"shard_size {args.shard_size}, medians of {args.repeats}")
    print(f"  in-process, {args.threads} torch thread(s):           {base:7.2f} s")
    print(f"  Ray job, 2 actors x 1 CPU:               {total:7.2f} s   (ray.init excluded)")
    print(f"  Ray job without the actors' start-up:    {excl:7.2f} s")
    print(f"  ratio Ray / in-process: {excl / base:.3f} without actor start-up (target <= 1.15), "
          f"{total / base:.3f} with it")
    print(f"  Ray job peak memory: driver {info['memory_mb']['driver_peak']} MiB, "
          f"actor {info['memory_mb']['actors_peak']} MiB")
    return 0 if excl / base <= 1.15 else 1


if __name__ == "__main__":
    sys.exit(main())
