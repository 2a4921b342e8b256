"""Peak memory of the job (driver and actors) when the number of targets grows 10x.

    python benchmarks/memory_scaling.py                  # 160 and 1600 digits images, 5 L-BFGS iterations
    python benchmarks/memory_scaling.py --iterations 20

Each size runs `python -m jobs.audit` in a fresh process (its own local Ray, 2 actors), and reads the peak
resident memory the job records in run.json: the driver's, and the largest of its actors'. Actors hold one
shard at a time and write it out, and the driver keeps only small per-shard reports until the reduce, so
neither should grow with the data. The target is a ratio under 1.2 for the 10x larger audit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "jobs" / "assets"


def config_yaml(path: Path, scale: int, iterations: int) -> Path:
    """120 train + 30 val + 10 generated images at scale 1; scale 10 is the whole digits train and val."""
    path.write_text(f"""
generator:
  torchscript: {ASSETS / "models" / "glo-1200.pt"}
  latent: {{shape: [32], prior: sphere}}
targets:
  train: [{{uri: {ASSETS / "digits" / "train.parquet"}, image_column: image, id_column: id}}]
  val: [{{uri: {ASSETS / "digits" / "val.parquet"}, image_column: image, id_column: id}}]
  generated: {{count: {10 * scale}}}
  limit: {{train: {120 * scale}, val: {30 * scale}}}
recovery: {{iterations: {iterations}}}
resources: {{actors: 2, cpus_per_actor: 1}}
job: {{progress_seconds: 30}}
""")
    return path


def run(scale: int, iterations: int, tmp: Path) -> dict:
    config = config_yaml(tmp / f"audit-{scale}.yaml", scale, iterations)
    out = tmp / f"out-{scale}"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.audit", "--config", str(config), "--out", str(out), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scale {scale}: the job failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    info = json.loads((out / "run.json").read_text())
    return {"images": sum(info["plan"]["images"].values()), "shards": info["plan"]["shards"],
            "seconds": time.perf_counter() - started, **info["memory_mb"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        small, large = (run(scale, args.iterations, Path(tmp)) for scale in (1, 10))
    print(f"memory_scaling: GLO-1200 on digits, {args.iterations} L-BFGS iterations, 2 actors, shard_size 256")
    print(f"  {'images':>7} {'shards':>6} {'wall s':>7} {'driver MiB':>11} {'actor MiB':>10} {'driver + 2 actors':>18}")
    for r in (small, large):
        total = r["driver_peak"] + 2 * r["actors_peak"]
        print(f"  {r['images']:>7} {r['shards']:>6} {r['seconds']:>7.1f} {r['driver_peak']:>11.1f} {r['actors_peak']:>10.1f} {total:>18.1f}")
    ratios = {k: large[k] / small[k] for k in ("driver_peak", "actors_peak")}
    total = (large["driver_peak"] + 2 * large["actors_peak"]) / (small["driver_peak"] + 2 * small["actors_peak"])
    print(f"  10x targets: driver x{ratios['driver_peak']:.3f}, actor x{ratios['actors_peak']:.3f}, "
          f"job x{total:.3f}  (target < 1.2)")
    return 0 if max(total, *ratios.values()) < 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
