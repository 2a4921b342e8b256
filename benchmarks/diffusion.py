"""Diffusion models (recovery.diffusion, recovery.diffusion_stats): what each statistic separates, extraction by
generation, the verdict's false-positive rate, and throughput, on the two bundled DDPMs.

    python benchmarks/diffusion.py                    # about 10-15 minutes on 2 busy cores
    python benchmarks/diffusion.py --quick            # fewer images, splits and samples (a smoke run)

Subjects (experiments/train_ddpm.py, jobs/assets/models/ddpm-*): ddpm-64 trained on the first 64 training
digits, ddpm-1200 on all 1200; val.parquet (300) is never seen by either.

1. Per statistic (denoise, inversion, proximal): train-vs-val AUC = P(statistic of a training image < that of
   a held-out one) (0.5: no signal) and the verdict (stats.reduce, the job's calibrated tests) with that
   statistic as `error`. ddpm-64: its 64 training images; ddpm-1200: the first 300 of its 1200.
2. Extraction by generation: N images sampled from seeded noise by the model's DDIM sampler; a training image is
   extracted when a sample copies it (stats.detect.extraction: pixel L2, d1/d2 < near_copy_ratio and nearer than any
   held-out image); the rate is extracted training images / training images, against N.
3. False positives: the verdict on ddpm-1200's statistics over random splits of its 300 held-out images
   plus the 297 spare digits (all unseen, so exchangeable) into 64 "train" and 300 "val"; the rate must stay
   within alpha + 2 SE.
4. Throughput: UNet evaluations/s and images/s of each statistic, batched (64 images a call) and one image at
   a time, in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import GeneratorSpec, RecoverySettings, load_generator, sample_generated, to_target  # noqa: E402
from recovery.diffusion_stats import (COLUMNS, _noises, audit_diffusion, denoise_error, inversion,  # noqa: E402
                                      proximal_error)
from stats import StatsSettings, reduce  # noqa: E402
from stats.detect.extraction import extractions  # noqa: E402
from stats.detect.nearest import NEIGHBOURS_SCHEMA  # noqa: E402

ASSETS = ROOT / "jobs" / "assets"
SUBJECTS = {"ddpm-64": ("train-64.parquet", 64), "ddpm-1200": ("train.parquet", 300)}


def digits(name: str, n: int | None = None, side: int = 16) -> tuple[list[str], torch.Tensor]:
    table = pq.read_table(ASSETS / "digits" / name)
    table = table.slice(0, n) if n else table
    x = torch.stack([to_target(b, shape=(1, side, side)) for b in table.column("image").to_pylist()])
    return [str(i) for i in table.column("id").to_pylist()], x  # [N, 1, side, side] in [-1, 1]


def model(name: str):
    return load_generator(GeneratorSpec(diffusers=str(ASSETS / "models" / name)), device="cpu")


def audit(g, splits: dict[str, tuple[list[str], torch.Tensor]]) -> pa.Table:
    parts = []
    for split, (ids, x) in splits.items():
        t = audit_diffusion(g, x, ids, settings=RecoverySettings(seed=0, batch_size=64))
        parts.append(t.append_column("split", pa.array([split] * t.num_rows)))
    return pa.concat_tables(parts)


def auc(train: np.ndarray, val: np.ndarray) -> float:
    """P(train < val) + P(tie) / 2."""
    return float(((train[:, None] < val[None, :]).mean() + 0.5 * (train[:, None] == val[None, :]).mean()))


def with_error(results: pa.Table, column: str) -> pa.Table:
    i = results.column_names.index("error")
    return results.set_column(i, "error", results.column(column))


def part1(results: dict[str, pa.Table], settings: StatsSettings) -> None:
    print("\n1. train-vs-val AUC and verdict per statistic")
    print(f"{'model':10s} {'statistic':10s} {'AUC':>6s}  verdict")
    for name, r in results.items():
        for stat, column in COLUMNS.items():
            values = {s: r.filter(pa.compute.equal(r.column("split"), s)).column(column).to_numpy() for s in ("train", "val")}
            verdict = reduce(with_error(r, column), settings=settings).verdict
            print(f"{name:10s} {stat:10s} {auc(values['train'], values['val']):6.3f}  {verdict.label}")


def per_timestep(splits: dict[str, dict], times: tuple[int, ...] = (10, 25, 50, 100, 200, 300, 500, 700, 900)) -> None:
    """The denoising error's train-vs-val AUC at single timesteps (2 noises each): where the signal is."""
    print("\n1b. denoising error's AUC at single timesteps (2 noises each)")
    print(f"{'model':10s} " + " ".join(f"{t:>6d}" for t in times))
    for name, data in splits.items():
        g = model(name)
        out = []
        for t in times:
            err = {}
            for split, (ids, x) in data.items():
                noises = _noises(ids, 0, 2, tuple(x.shape[1:]))
                err[split] = torch.cat([denoise_error(g.module, x[s : s + 64], noises[s : s + 64], (t,))
                                        for s in range(0, len(ids), 64)]).numpy()
            out.append(auc(err["train"], err["val"]))
        print(f"{name:10s} " + " ".join(f"{a:6.3f}" for a in out))


def neighbours_table(queries: dict[str, tuple[list[str], torch.Tensor]], train: tuple[list[str], torch.Tensor],
                     k: int = 5) -> pa.Table:
    """The job's neighbours.parquet for pixel L2, computed here exactly (small sets)."""
    train_ids, tx = train
    rows = []
    for split, (ids, x) in queries.items():
        d = torch.cdist(x.flatten(1).double(), tx.flatten(1).double())  # [n, m]
        dist, idx = d.topk(min(k, d.shape[1]), largest=False)
        for i, qid in enumerate(ids):
            for r in range(dist.shape[1]):
                rows.append({"query_id": qid, "query_split": split, "rank": r + 1, "train_id": train_ids[int(idx[i, r])],
                             "distance": float(dist[i, r]), "space": "pixel"})
    return pa.Table.from_pylist(rows, schema=NEIGHBOURS_SCHEMA)


def part2(counts: list[int], settings: StatsSettings) -> None:
    print("\n2. extraction by generation: training images with a generated near-copy")
    print(f"{'model':10s} {'N':>5s} {'extracted':>9s} {'rate':>7s} {'copies':>7s}  seconds")
    val = digits("val.parquet")
    for name, (train_set, _) in SUBJECTS.items():
        g = model(name)
        train = digits(train_set)
        ids = [f"generated-{i:06d}" for i in range(max(counts))]
        started = time.time()
        _, images = sample_generated(g, ids, seed=0)  # [N, 1, 16, 16]
        seconds = time.time() - started
        for n in counts:
            nb = neighbours_table({"generated": (ids[:n], images[:n]), "val": val}, train)
            found = extractions(nb, near_copy_ratio=settings.near_copy_ratio)
            copies = int(sum(found.column("copies").to_pylist())) if found.num_rows else 0
            print(f"{name:10s} {n:5d} {found.num_rows:9d} {found.num_rows / len(train[0]):7.1%} {copies:7d}  "
                  f"{seconds * n / max(counts):.0f}")


def part3(g, trials: int, settings: StatsSettings) -> None:
    print(f"\n3. false-positive rate of the verdict on ddpm-1200, {trials} random splits of unseen digits")
    val_ids, val = digits("val.parquet")
    spare_ids, spare = digits("spare.parquet")
    table = audit(g, {"pool": (val_ids + spare_ids, torch.cat([val, spare]))})
    rng = np.random.default_rng(0)
    n = table.num_rows
    fired = {stat: 0 for stat in COLUMNS}
    for _ in range(trials):
        order = rng.permutation(n)
        split = np.array(["unused"] * n, dtype=object)
        split[order[:64]], split[order[64:364]] = "train", "val"
        trial = table.set_column(table.column_names.index("split"), "split", pa.array(split.tolist(), pa.string()))
        trial = trial.filter(pa.compute.not_equal(trial.column("split"), "unused"))
        for stat, column in COLUMNS.items():
            fired[stat] += reduce(with_error(trial, column), settings=settings).verdict.label == "memorization"
    alpha = settings.alpha
    bound = alpha + 2 * np.sqrt(alpha * (1 - alpha) / trials)
    for stat, k in fired.items():
        print(f"  {stat:10s} {k}/{trials} = {k / trials:.3f}  (alpha + 2 SE = {bound:.3f}) "
              f"{'ok' if k / trials <= bound else 'TOO HIGH'}")


def part4(g, images: int) -> None:
    print(f"\n4. throughput, {images} images, 1 CPU thread")
    ids, x = digits("val.parquet", images)
    d = g.spec.diffusion
    k, noises = len(d.timesteps), _noises(ids, 0, len(d.timesteps) * d.noises, tuple(x.shape[1:]))
    runs = {
        "denoise": (lambda xs, ns: denoise_error(g.module, xs, ns, d.timesteps), k * d.noises),
        "proximal": (lambda xs, ns: proximal_error(g.module, xs, d.timesteps), 1 + k),
        "inversion": (lambda xs, ns: inversion(g.module, xs), 2 * d.steps),
    }
    print(f"{'statistic':10s} {'evals/img':>9s} {'batched img/s':>13s} {'evals/s':>8s} {'one-by-one img/s':>16s} {'evals/s':>8s} {'speed-up':>8s}")
    for stat, (fn, per) in runs.items():
        started = time.perf_counter()
        with torch.no_grad():
            for s in range(0, images, 64):
                fn(x[s : s + 64], noises[s : s + 64])
        batched = images / (time.perf_counter() - started)
        started = time.perf_counter()
        with torch.no_grad():
            for i in range(images):
                fn(x[i : i + 1], noises[i : i + 1])
        single = images / (time.perf_counter() - started)
        print(f"{stat:10s} {per:9d} {batched:13.1f} {batched * per:8.0f} {single:16.1f} {single * per:8.0f} "
              f"{batched / single:7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, splits and samples")
    parser.add_argument("--trials", type=int, default=200, help="random splits for the false-positive rate")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 13")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = StatsSettings(bootstrap=0)  # the verdict's tests; the gap's bootstrap interval is not needed here
    val_n = 100 if args.quick else None
    results = {}
    if "1" in args.parts or "3" in args.parts:
        for name, (train_set, n) in SUBJECTS.items():
            started = time.time()
            g = model(name)
            results[name] = audit(g, {"train": digits(train_set, 32 if args.quick else n),
                                      "val": digits("val.parquet", val_n)})
            print(f"{name}: {results[name].num_rows} images audited in {time.time() - started:.0f}s")
    if "1" in args.parts:
        part1(results, settings)
        per_timestep({name: {"train": digits(train_set, 32 if args.quick else n), "val": digits("val.parquet", val_n)}
                      for name, (train_set, n) in SUBJECTS.items()})
    if "2" in args.parts:
        part2([16, 64] if args.quick else [16, 64, 256], settings)
    if "3" in args.parts:
        part3(model("ddpm-1200"), 20 if args.quick else args.trials, settings)
    if "4" in args.parts:
        part4(model("ddpm-1200"), 16 if args.quick else 128)


if __name__ == "__main__":
    main()
