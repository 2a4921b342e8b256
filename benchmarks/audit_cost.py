"""What a whole audit costs on trained generators, and what the cost buys.

    python benchmarks/audit_cost.py [--models natural-dcgan.pt,natural-upconv.pt,style-digits.pt,cgan-1200.pt]
                                    [--train 48] [--copies 8]
                                    [--val 48] [--generated 64] [--actors 2] [--runs before,after,paper]
                                    [--needed 16] [--keep DIR]

For each bundled trained generator (jobs/assets/models, MODEL_CARD.md: the natural-image DCGAN and upsample+conv
generators, the style-based subject searched in W, the class-conditional digit cGAN searched without labels, so
its classes are searched too) it writes one audit case as Parquet
files: train = `--train` of the generator's own training images, `--copies` exact copies (images G
generates, as a generator that copied training images reproduces them), as many noisy near-copies (another
copy plus N(0, 0.05^2) noise) and shifted near-copies (a copy moved by one pixel); val = `--val` held-out
images; generated = `--generated` images. Then it runs the whole job (`memaudit audit`, local Ray,
`--actors` actors of one CPU) once per setting, in the same process tree on the same machine:

  before   recovery.start_cap: null and targets.shard_size: 256 (memaudit before every image
           that is not recovered runs its whole budget; shards of 256 in plan order)
  after    the defaults (start_cap: auto, measured on the generated split; shard_size: auto)
  paper    recovery.protocol: paper (50 L-BFGS iterations, one start): the reference cost
  recall999  the defaults with start_cap_recall 0.999 (optional, --runs ...,recall999)

and prints per run: evaluations per image by split (median, p95), wall time, the actors' idle share
(run.json), the verdict, where the exact copies rank and whether they are flagged, whether every
near-copy ranks above every val image, the generated split's recovery rate, and for `after` each flagged
image's error against its `before` error. `--needed` real val images are also searched in-process with
every start logged, for the budget real images actually need: the evaluations after which 95% of them
are within 10% of the error they reach at the full budget (the limit any stopping rule can approach).
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, sample_generated, to_target  # noqa: E402
from stats import read_output, reduce  # noqa: E402

MODELS = ROOT / "jobs" / "assets" / "models"
RUNS = {
    "before": ["recovery.start_cap=null", "targets.shard_size=256"],
    "after": [],
    "paper": ["recovery.protocol=paper"],
    "recall999": ["recovery.start_cap_recall=0.999"],  # the cap's lever: fewer copies lost, more starts
}


def entry_for(name: str) -> tuple[dict, Path]:
    """The bundled model's models.json entry (natural and digit models, style/, cgan/) and its folder."""
    for folder in (MODELS, MODELS / "style", MODELS / "cgan"):
        entries = json.loads((folder / "models.json").read_text())
        if name in entries:
            return entries[name], folder
    raise SystemExit(f"{name}: not a bundled model (see jobs/assets/models/MODEL_CARD.md)")


def generator_config(name: str) -> tuple[dict, Path]:
    """The audit YAML's generator section for a bundled model, and where its training images are."""
    entry, folder = entry_for(name)
    if "factory" in entry:  # the style-based subject: searched in W, the default for a style-based generator
        section = {"factory": entry["factory"], "kwargs": entry["kwargs"], "checkpoint": str(folder / name)}
    else:
        section = {"torchscript": str(folder / name), "latent": entry["latent"]}
    section["output_range"] = entry["output_range"]
    if "classes" in entry:  # conditional: no label column, so the class is searched
        section["classes"] = entry["classes"]
    data = ROOT / "jobs" / "assets" / (entry["train_set"] if "/" in entry["train_set"] else f"digits/{entry['train_set']}")
    return section, data


def load(name: str):
    from jobs.config import load_config

    section, data = generator_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.yaml"
        path.write_text(yaml.safe_dump({"generator": section, "targets": {"generated": {"count": 1, "seed": 0}},
                                        "output": str(Path(tmp) / "o")}))
        spec = load_config(str(path)).generator
    return load_generator(spec, device="cpu"), section, data


def png_bytes(x: torch.Tensor) -> bytes:
    """[C, H, W] in [-1, 1] -> PNG bytes."""
    import io

    from PIL import Image

    a = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


def real_rows(path: Path, n: int) -> pa.Table:
    table = pq.read_table(path).slice(0, n)
    image = "image" if "image" in table.column_names else table.column_names[-1]
    ident = "id" if "id" in table.column_names else table.column_names[0]
    return pa.table({"id": pc.cast(table.column(ident), pa.string()), "image": table.column(image)})


def write_case(g, section: dict, train_set: Path, args, folder: Path) -> dict:
    """The case's Parquet files and audit YAML; returns the planted ids by kind."""
    n = args.copies
    _, copies = sample_generated(g, [f"copy-{i}" for i in range(n)], seed=777)  # [n, C, H, W]
    _, bases = sample_generated(g, [f"base-{i}" for i in range(2 * n)], seed=778)
    noise = 0.05 * torch.randn(bases[:n].shape, generator=torch.Generator().manual_seed(5))
    noisy = (bases[:n] + noise).clamp(-1, 1)
    shifted = torch.roll(bases[n:], 1, dims=-1)
    shifted[..., 0] = bases[n:, ..., 0]
    planted = {"copy": [f"copy-{i}" for i in range(n)], "noisy": [f"noisy-{i}" for i in range(n)],
               "shifted": [f"shifted-{i}" for i in range(n)]}
    made = pa.table({"id": sum(planted.values(), []),
                     "image": [png_bytes(x) for x in torch.cat([copies, noisy, shifted])]})
    pq.write_table(pa.concat_tables([real_rows(train_set, args.train), made]), folder / "train.parquet")
    pq.write_table(real_rows(train_set.with_name("val.parquet"), args.val), folder / "val.parquet")
    config = {
        "generator": section,
        "targets": {"train": [{"uri": str(folder / "train.parquet"), "image_column": "image", "id_column": "id"}],
                    "val": [{"uri": str(folder / "val.parquet"), "image_column": "image", "id_column": "id"}],
                    "generated": {"count": args.generated, "seed": 0}},
        "recovery": {},
        "resources": {"actors": args.actors, "gpus_per_actor": 0, "cpus_per_actor": 1},
    }
    (folder / "audit.yaml").write_text(yaml.safe_dump(config))
    return planted


def run_job(folder: Path, name: str, overrides: list[str]) -> tuple[float, Path]:
    out = folder / f"out-{name}"
    cmd = [sys.executable, "-m", "jobs.cli", "audit", "--config", str(folder / "audit.yaml"), "--out", str(out),
           "--quiet", *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode not in (0, 1):
        raise SystemExit(f"{name}: memaudit audit exited {done.returncode}\n{done.stderr[-3000:]}")
    (out / "wall.json").write_text(json.dumps({"seconds": seconds}))
    return seconds, out


def describe(name: str, seconds: float, out: Path, planted: dict, before: pa.Table | None) -> pa.Table:
    results, rejects, _, info = read_output(str(out), columns=None)
    red = reduce(results, rejects)
    by = {s: results.filter(pc.equal(results.column("split"), s)) for s in ("train", "val", "generated")}
    real = pa.concat_tables([by["train"], by["val"]])
    print(f"  {name}: {seconds:.0f} s wall, actor idle share {info.get('actor_idle_share', float('nan')):.0%}, "
          f"start cap {(info.get('search') or {}).get('start_cap', {}).get('cap') if isinstance((info.get('search') or {}).get('start_cap'), dict) else 'none'}")
    for split, t in (("real", real), ("generated", by["generated"])):
        ev = t.column("evaluations").to_numpy()
        print(f"    {split:9s} evaluations/image median {np.median(ev):.0f}, p95 {np.percentile(ev, 95):.0f}")
    gen_mse = by["generated"].column("mse").to_numpy()
    print(f"    generated below 1e-3: {np.mean(gen_mse < 1e-3):.1%}; verdict: {red.verdict.label}")
    ranking = red.ranking
    ids = ranking.column("image_id").to_pylist()
    flagged = set(ranking.filter(ranking.column("flagged")).column("image_id").to_pylist())
    copies = planted["copy"]
    print(f"    copies rank {sorted(ids.index(c) + 1 for c in copies)}, flagged {sum(c in flagged for c in copies)}"
          f"/{len(copies)}; other images flagged: {len(flagged - set(copies))}")
    err = dict(zip(results.column("image_id").to_pylist(), results.column("error").to_numpy()))
    val_min = float(np.min(by["val"].column("error").to_numpy()))
    for kind in ("noisy", "shifted"):
        above = sum(err[i] < val_min for i in planted[kind])
        print(f"    {kind} near-copies below every val error: {above}/{len(planted[kind])}")
    if before is not None:
        old = dict(zip(before.column("image_id").to_pylist(), before.column("error").to_numpy()))
        ratio = np.array([err[i] / old[i] for i in real.column("image_id").to_pylist() if old.get(i, 0) > 0])
        print(f"    real images' error / their `before` error: median {np.median(ratio):.3f}, "
              f"p95 {np.percentile(ratio, 95):.3f}, max {ratio.max():.3f}")
    if before is not None and flagged:
        ratio = [err[i] / old[i] for i in flagged if i in old and old[i] > 0]
        print(f"    flagged images' error / their `before` error: max {max(ratio):.3f}, median {np.median(ratio):.3f}")
    return results


def budget_needed(g, train_set: Path, n: int) -> None:
    """Every start of `n` val images logged at the full budget: when are 95% within 10% of their final error?"""
    import importlib

    rr = importlib.import_module("recovery.recover")
    log: list[tuple[int, int, float]] = []  # (image, evaluations so far, best mse so far)

    class Logged(rr.RestartScheduler):
        def on_done(self, result):
            super().on_done(result)
            state = self.images[result.image]
            log.append((result.image, state.evaluations, state.best.mse))

    original, rr.RestartScheduler = rr.RestartScheduler, Logged
    try:
        val = real_rows(train_set.with_name("val.parquet"), n)
        targets = torch.stack([to_target(b, shape=g.output_shape, output_range=g.spec.output_range)
                               for b in val.column("image").to_pylist()])
        rr.recover(g, targets, val.column("id").to_pylist(), settings=RecoverySettings(start_cap=None))  # classes searched
    finally:
        rr.RestartScheduler = original
    final = {i: e for i, _, e in log}
    for b in range(50, 1550, 50):
        within = [min([e for j, ev, e in log if j == i and ev <= b], default=np.inf) <= 1.1 * final[i] for i in final]
        if np.mean(within) >= 0.95:
            print(f"  budget actually needed by real images: {b} evaluations (95% of {len(final)} within 10% of "
                  f"their error at the full budget)")
            return
    print("  budget actually needed by real images: the full budget")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="natural-dcgan.pt,natural-upconv.pt")
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--val", type=int, default=48)
    ap.add_argument("--generated", type=int, default=64)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--runs", default="before,after,paper")
    ap.add_argument("--needed", type=int, default=16, help="val images for the budget-needed figure (0: skip)")
    ap.add_argument("--keep", help="write the cases and outputs here instead of a temporary folder")
    ap.add_argument("--reuse-before", action="store_true", help="with --keep: read the `before` run kept there (its "
                    "wall time is run.json's) instead of running it again")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for model in args.models.split(","):
        args.model = model
        g, section, train_set = load(model)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.keep or tmp) / model.removesuffix(".pt")
            folder.mkdir(parents=True, exist_ok=True)
            planted = write_case(g, section, train_set, args, folder)
            print(f"{model}: train {args.train} + {3 * args.copies} planted, val {args.val}, generated {args.generated}",
                  flush=True)
            before = None
            for name in args.runs.split(","):
                out = folder / f"out-{name}"
                if name == "before" and args.reuse_before and (out / "run.json").exists():
                    seconds = json.loads((out / "wall.json").read_text())["seconds"]  # as that run took it
                else:
                    seconds, out = run_job(folder, name, RUNS[name])
                table = describe(name, seconds, out, planted, before)
                before = table if name == "before" else before
                sys.stdout.flush()
            if args.needed:
                budget_needed(g, train_set, args.needed)


if __name__ == "__main__":
    main()
