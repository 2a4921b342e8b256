"""Benchmark: planning time (`memaudit audit --dry-run` without start-up) against the number of image files.

    .venv/bin/python benchmarks/plan_scaling.py                                  # 10^4, 10^5, 10^6 local; 10^4, 10^5 on S3
    .venv/bin/python benchmarks/plan_scaling.py --local 10000,100000 --s3 10000   # smaller
    .venv/bin/python benchmarks/plan_scaling.py --local 1000000 --s3 ""           # only the 10^6 local point

For each size N it writes N empty `.png` files (planning never opens an image file: one file is one row)
into a fresh folder (local disk), or N empty objects into a bucket of a moto S3 server on 127.0.0.1, then
times, in this process:

    plan      jobs.plan.make_plan(config): listing, the seeded subsample, ids, the id check, shards, the
              run's fingerprint
    listing   jobs.sources.list_files alone, right after (the store's listing: glob, sort)

and prints seconds per stage, microseconds per file and the growth exponent between consecutive sizes
(log(t2 / t1) / log(N2 / N1): 1 is linear, 2 quadratic). Target: 10^6 files plan in < 60 s.
The files are removed afterwards (unless --keep). The S3 objects are put straight into moto's in-process
backend (a PUT per object over HTTP would take longer than the planning measured); the listing goes
through s3fs and HTTP as in a real run.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "jobs" / "assets" / "models" / "glo-64.pt"  # never loaded by planning; the config needs one


def write_config(folder: Path, uri: str, endpoint: str | None) -> Path:
    import yaml

    raw = {"generator": {"torchscript": str(MODEL), "latent": {"shape": [32], "prior": "sphere"}},
           "targets": {"val": [uri], "shard_size": 256}, "output": str(folder / "out")}
    if endpoint:
        raw["storage"] = {"endpoint_url": endpoint}
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def time_plan(config_path: Path) -> tuple[float, float, int]:
    """(listing seconds, plan seconds, shards) for one config: the plan first, then the listing alone again
    (as warm as the plan's own listing was), so that plan - listing is what planning adds to the store's."""
    from jobs.config import load_config
    from jobs.plan import make_plan
    from jobs.sources import list_files

    config = load_config(config_path)
    (src,) = config.targets.splits["val"]
    t = time.perf_counter()
    plan = make_plan(config)
    planning = time.perf_counter() - t
    t = time.perf_counter()
    list_files(src, config.storage.endpoint_url)
    return time.perf_counter() - t, planning, len(plan.shards)


def local_point(n: int, root: Path) -> tuple[float, float, int]:
    folder = root / f"local-{n}"
    images = folder / "images"
    images.mkdir(parents=True)
    t = time.perf_counter()
    for i in range(n):
        os.close(os.open(images / f"img-{i:07d}.png", os.O_CREAT | os.O_WRONLY, 0o644))
    print(f"  (wrote {n} empty files in {time.perf_counter() - t:.1f}s)", flush=True)
    try:
        return time_plan(write_config(folder, str(images / "*.png"), None))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def s3_point(n: int, root: Path, server) -> tuple[float, float, int]:
    import uuid

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    endpoint, backend = server
    bucket = f"plan-{uuid.uuid4().hex[:10]}"
    backend.create_bucket(bucket, "us-east-1")
    t = time.perf_counter()
    for i in range(n):
        backend.put_object(bucket, f"images/img-{i:07d}.png", b"")
    print(f"  (put {n} empty objects in {time.perf_counter() - t:.1f}s)", flush=True)
    folder = root / f"s3-{n}"
    folder.mkdir()
    try:
        return time_plan(write_config(folder, f"s3://{bucket}/images/*.png", endpoint))
    finally:
        backend.buckets.pop(bucket, None)
        s3_backends[DEFAULT_ACCOUNT_ID]  # keep the import used: the backend stays registered for the server
        shutil.rmtree(folder, ignore_errors=True)


def start_moto():
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[name] = value
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, (f"http://{host}:{port}", s3_backends[DEFAULT_ACCOUNT_ID]["aws"])


def report(kind: str, rows: list[tuple[int, float, float, int]]) -> None:
    print(f"\n{kind}: files, shards, listing s, plan s, plan us/file, growth exponent of plan time, plan - listing s")
    previous = None
    for n, listing, plan, shards in rows:
        growth = ""
        if previous is not None and previous[1] > 0 and n != previous[0]:
            growth = f"{math.log(plan / previous[1]) / math.log(n / previous[0]):.2f}"
        print(f"  {n:>9}  {shards:>6}  {listing:8.2f}  {plan:8.2f}  {1e6 * plan / n:8.1f}  {growth:>5}  {plan - listing:8.2f}")
        previous = (n, plan)
    n, listing, plan, _ = rows[-1]
    print(f"  at {n} files listing is {100 * listing / plan:.0f}% of planning")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--local", default="10000,100000,1000000", help="comma-separated file counts on local disk")
    p.add_argument("--s3", default="10000,100000", help="comma-separated object counts on the moto S3 server")
    p.add_argument("--root", help="where to write the files (default: a temporary folder)")
    args = p.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="plan-scaling-", dir=args.root))
    try:
        sizes = [int(s) for s in args.local.split(",") if s]
        rows = []
        for n in sizes:
            print(f"local disk, {n} files", flush=True)
            rows.append((n, *local_point(n, root)))
        if rows:
            report("local disk", rows)
        sizes = [int(s) for s in args.s3.split(",") if s]
        if sizes:
            server, handle = start_moto()
            try:
                rows = []
                for n in sizes:
                    print(f"moto S3, {n} objects", flush=True)
                    rows.append((n, *s3_point(n, root, handle)))
                report("moto S3 on 127.0.0.1", rows)
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
