"""What losing worker nodes costs an audit: wall time against an undisturbed run, rows exactly once, shards re-run.

    python benchmarks/node_loss.py                        # 0, 1, 2 and 3 of 4 workers lost, seed 0
    python benchmarks/node_loss.py --losses 0 2 --seed 3 --health-check-ms 1000

The issue-24 case on one machine: a Ray cluster (ray.cluster_utils.Cluster on 127.0.0.1) of a head with no
CPUs, where this process drives, and 4 worker nodes of one logical CPU each; inputs and outputs on an
S3-compatible server (moto, 127.0.0.1). 32 train images (8 of them planted copies: the generator's own
images) and 24 val images, 14 shards of 4, one actor per worker. The generator is
tests/node_loss_models.SlowTiny: the tests' tiny generator with a sleep in every search batch, so a shard
lasts seconds without loading this (shared, 2-core) machine's CPUs, and the timings are the dispatch's.

Each scenario runs the same audit to its own output while the main thread kills k worker nodes (their
processes SIGKILLed, no drain, as a spot reclamation would) at moments drawn with the seed, uniformly over
20-80% of the undisturbed run's wall time; the nodes are not replaced. Ray's health checks are its defaults
unless --health-check-ms sets the period (5 missed checks mark a node dead). Printed per scenario: wall time
and its ratio to the undisturbed run, the rows (planned, written, distinct), the verdict, the shards that
went back to the queue (only those in flight on a lost node should), how long after its shard's call
failed the GCS held each lost node dead (the shard itself goes back at once; this only decides that it
did not use up a retry), and any shard that failed.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
WORKERS, TRAIN, PLANTED, VAL, SHARD = 4, 32, 8, 24, 4


def environment() -> None:
    """Loopback only, explicit auth mode, no usage stats, fake credentials for moto; before Ray is imported."""
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(REPO), os.environ.get("PYTHONPATH")) if p)
    sys.path[:0] = [str(TESTS), str(REPO)]


def inputs(s3, bucket: str, delay: float) -> None:
    """train.parquet (8 planted copies: SlowTiny's own images, as PNG) and val.parquet on the store."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from node_loss_models import SlowTiny

    def png(a) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(TRAIN - PLANTED + VAL)]
    with torch.no_grad():
        g = SlowTiny(marks="", delay=delay).eval()
        made = g(torch.from_numpy(rng.standard_normal((PLANTED, 8)).astype("float32")))  # [8, 1, 8, 8] in [-1, 1]
    planted = [np.round((m[0].numpy() + 1) * 127.5).astype(np.uint8) for m in made]
    train = planted + noise[: TRAIN - PLANTED]
    for name, arrays in (("train", train), ("val", noise[TRAIN - PLANTED:])):
        table = pa.table({"id": [f"{name}-{i:03d}" for i in range(len(arrays))], "image": [png(a) for a in arrays]})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        s3.pipe(f"{bucket}/in/{name}.parquet", buf.getvalue())


def config(bucket: str, endpoint: str, name: str, marks: Path, delay: float):
    import yaml

    from jobs.config import load_config

    raw = {
        "generator": {"factory": "node_loss_models:SlowTiny", "kwargs": {"marks": str(marks), "delay": delay},
                      "latent": {"shape": [8], "prior": "normal"}, "output_range": [-1, 1]},
        "targets": {"train": [{"uri": f"s3://{bucket}/in/train.parquet", "image_column": "image", "id_column": "id"}],
                    "val": [{"uri": f"s3://{bucket}/in/val.parquet", "image_column": "image", "id_column": "id"}],
                    "shard_size": SHARD},
        "recovery": {"iterations": 5, "batch_size": 16},
        "resources": {"actors": WORKERS, "cpus_per_actor": 1},
        "stats": {"bootstrap": 0, "min_split_size": 2},
        "job": {"progress_seconds": 30, "shard_retries": 0},  # a lost node must not need a retry
        "storage": {"endpoint_url": endpoint},
        "output": f"s3://{bucket}/{name}/",
    }
    path = marks.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


class Lines(logging.Handler):
    """memaudit's log records, kept with their times (the benchmark reads the losses from them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, pattern: str) -> list[tuple[float, re.Match]]:
        return [(r.created, m) for r in self.records if (m := re.search(pattern, r.getMessage()))]


def scenario(cluster, workers: list, bucket: str, endpoint: str, work: Path, k: int, baseline: float | None,
             rng: random.Random, delay: float) -> dict:
    """One audit with k worker nodes killed at seeded moments; returns its figures. workers: the live worker
    nodes in the order they were added (the seed picks among them by position)."""
    from jobs.driver import run_audit
    from stats import read_output

    while len(workers) < WORKERS:
        temp = tempfile.mkdtemp(prefix="rw-", dir="/tmp")  # a temp dir per node, as real nodes have their own
        workers.append(cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", temp_dir=temp))
        workers[-1].bench_temp = temp
    name = f"lost-{k}"
    marks = work / f"marks-{name}"
    marks.mkdir()
    cfg = config(bucket, endpoint, name, marks, delay)
    moments = sorted(rng.uniform(0.2, 0.8) * (baseline or 0) for _ in range(k))
    lines = Lines()
    logging.getLogger("memaudit").addHandler(lines)
    result: dict = {}

    def drive() -> None:  # in a thread: the main thread kills the nodes
        try:
            result["outcome"] = run_audit(cfg, local=False, address=cluster.address)
        except BaseException as exc:  # noqa: BLE001 - raised again below
            result["error"] = exc

    driver = threading.Thread(target=drive, daemon=True)
    started = time.time()
    driver.start()
    for moment in moments:  # in the main thread: Cluster's node processes are ours to kill
        time.sleep(max(0.0, started + moment - time.time()))
        if driver.is_alive():
            node = workers.pop(rng.randrange(len(workers)))
            cluster.remove_node(node, allow_graceful=False)
            shutil.rmtree(node.bench_temp, ignore_errors=True)
    driver.join()
    wall = time.time() - started
    logging.getLogger("memaudit").removeHandler(lines)
    if "error" in result:
        raise result["error"]
    outcome = result["outcome"]
    results, rejects, _, info = read_output(cfg.output, storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    keys = list(zip(results.column("split").to_pylist(), results.column("image_id").to_pylist()))
    stopped = lines.matching(r"stopped while running shard (\S+) .*: the shard goes back to the queue")
    when = {m.group(1): t for t, m in stopped}
    settled = lines.matching(r"lost: shard (\S+) went back to the queue")
    return {"losses": k, "exit": outcome.exit_code, "wall": wall, "ratio": wall / baseline if baseline else 1.0,
            "planned": TRAIN + VAL, "rows": results.num_rows + (rejects.num_rows if rejects is not None else 0),
            "distinct": len(set(keys)), "verdict": info.get("verdict", {}).get("label"),
            "requeued": [m.group(1) for _, m in stopped],
            "settle": [round(t - when.get(m.group(1), t), 1) for t, m in settled],
            "failed": dict(outcome.failed), "moments": [round(m, 1) for m in moments]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--losses", type=int, nargs="+", default=[0, 1, 2, 3], help="worker nodes killed per scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.2, help="SlowTiny's sleep per search batch, seconds")
    p.add_argument("--health-check-ms", type=int, help="the GCS's health-check period (default: Ray's, 3000)")
    args = p.parse_args(argv)
    environment()
    import ray
    import s3fs
    from moto.server import ThreadedMotoServer
    from ray.cluster_utils import Cluster

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://%s:%d" % server.get_host_and_port()
    s3 = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    bucket = "node-loss"
    s3.mkdir(bucket)
    inputs(s3, bucket, args.delay)
    work = Path(tempfile.mkdtemp(prefix="node-loss-"))
    workers: list = []
    system = ({"health_check_period_ms": args.health_check_ms, "health_check_initial_delay_ms": 0}
              if args.health_check_ms else {})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False, "_system_config": system})

    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        from jobs import raylink

        raylink.quiet_ray_errors()
        logging.getLogger("memaudit").setLevel(logging.INFO)  # the losses are read from memaudit's lines
        rng = random.Random(args.seed)
        rows, baseline = [], None
        for k in [0] + [k for k in args.losses if k]:
            row = scenario(cluster, workers, bucket, endpoint, work, k, baseline, rng, args.delay)
            baseline = baseline or row["wall"]
            rows.append(row)
            print(describe(row), flush=True)
        return 0 if all(r["exit"] == 0 and r["rows"] == r["distinct"] == r["planned"] for r in rows) else 1
    finally:
        ray.shutdown()
        cluster.shutdown()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        for node in workers:
            shutil.rmtree(node.bench_temp, ignore_errors=True)


def describe(row: dict) -> str:
    return (f"{row['losses']} of {WORKERS} workers lost (at {row['moments']} s): exit {row['exit']}, wall "
            f"{row['wall']:.1f} s ({row['ratio']:.2f}x undisturbed), rows {row['rows']} of {row['planned']} "
            f"({row['distinct']} distinct), verdict {row['verdict']}, shards re-run {len(row['requeued'])} "
            f"{row['requeued']}, node held dead after {row['settle']} s, failed {row['failed'] or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
