"""Sanity check of the bundled demo generators: does latent recovery find the expected pattern?

Run from the repository root (after `python experiments/train_models.py`):

    python experiments/check_models.py                       # all models, 64 train / 64 val / 64 generated
    python experiments/check_models.py --only glo-64 --n 128

For each model in jobs/assets/models/models.json it recovers n training images (the first n of
the model's own training set), n validation images (the first n of val.parquet, never trained on)
and n images sampled from the generator itself, and prints median per-pixel MSE per split, the
MRE-gap = (MRE_val - MRE_train) / MRE_val and the two-sided KS p-value (DESIGN.md §2).

Expected (the paper's Table 1 pattern): GLO-64 gap > 0.3 and KS p < 1e-3, the gap shrinking as
the training set grows; DCGAN p > 0.01 and |gap| < 0.1; generated images recovered almost
exactly by every model.

Recovery is the project's own engine, `recovery.recover` (L-BFGS by default, per-image
independent, seeded restarts from the model's prior; a sphere prior is kept by reparametrization).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from scipy.stats import ks_2samp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the repo's recovery package

from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated, to_target  # noqa: E402

DATA = ROOT / "jobs" / "assets" / "digits"
MODELS = ROOT / "jobs" / "assets" / "models"


def load_targets(path: Path, n: int) -> tuple[torch.Tensor, list[str]]:
    """First n rows of a digits Parquet file -> ([n, 1, 32, 32] float32 in [-1, 1], ids)."""
    table = pq.read_table(path, columns=["id", "image"]).slice(0, n)
    images = [to_target(b, shape=(1, 32, 32), output_range=(-1.0, 1.0)) for b in table.column("image").to_pylist()]
    return torch.stack(images), table.column("id").to_pylist()


def errors(g, x: torch.Tensor, ids: list[str], settings: RecoverySettings) -> np.ndarray:
    table = recover(g, x, ids, settings=settings)
    failures = [f for f in table.column("failure").to_pylist() if f]
    if failures:
        raise RuntimeError(f"{len(failures)} recoveries failed, e.g. {failures[0]}")
    return table.column("error").to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="model name, e.g. glo-64 (repeatable)")
    parser.add_argument("--n", type=int, default=64, help="images per split")
    parser.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam", "sgd"))
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(2)
    settings = RecoverySettings(
        optimizer=args.optimizer, iterations=args.iterations, restarts=args.restarts, seed=args.seed
    )
    catalog = json.loads((MODELS / "models.json").read_text())
    digits = sorted(n for n, entry in catalog.items() if "/" not in entry["train_set"])  # the natural models have their own data
    names = [f"{n}.pt" for n in args.only] if args.only else digits
    val, val_ids = load_targets(DATA / "val.parquet", args.n)
    print(
        f"{'model':10s} {'train N':>7s} {'MSE train':>10s} {'MSE val':>10s} {'MSE gen':>10s}"
        f" {'gap':>7s} {'KS p':>9s} {'s':>5s}"
    )
    for name in names:
        spec = catalog[name]
        latent = LatentSpec(tuple(spec["latent"]["shape"]), spec["latent"]["prior"])
        g = load_generator(
            GeneratorSpec(torchscript=str(MODELS / name), latent=latent, output_range=tuple(spec["output_range"])),
            device="cpu",
        )
        train, train_ids = load_targets(DATA / spec["train_set"], args.n)
        gen_ids = [f"generated-{i:04d}" for i in range(args.n)]
        _, generated = sample_generated(g, gen_ids, seed=args.seed, settings=settings)
        t0 = time.perf_counter()
        e_train = errors(g, train, train_ids, settings)
        e_val = errors(g, val, val_ids, settings)
        e_gen = errors(g, generated, gen_ids, settings)
        mre_train, mre_val = np.median(e_train), np.median(e_val)
        gap = (mre_val - mre_train) / mre_val
        p = ks_2samp(e_train, e_val).pvalue
        print(
            f"{name[:-3]:10s} {spec['train_size']:7d} {mre_train:10.5f} {mre_val:10.5f} {np.median(e_gen):10.5f}"
            f" {gap:7.3f} {p:9.2e} {time.perf_counter() - t0:5.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
