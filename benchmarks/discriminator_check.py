"""The discriminator check as a test: its false-positive rate and its power, by simulation.

    python benchmarks/discriminator_check.py [--trials 1000] [--seed 0] [--skip-real]

The check (stats.detect.discriminator.discriminator_test) fires when D's scores of training images are higher than
those of held-out images with a one-sided Mann-Whitney p <= alpha. A rule that says "memorization" needs a
measured false-positive rate and power, so this prints, at the default alpha:

  null     train and val scores drawn from one distribution (exchangeable), for score shapes a real D gives:
           normal logits, heavy-tailed (t3), saturated (40% of scores clipped at one value: ties), coarse
           (rounded to 0.5: many ties); FPR with its standard error and the limit alpha + 2 SE;
  power    train scores shifted by d standard deviations, or a fraction of train images (the memorized
           ones) scored 3 SD higher;
  real D   the bundled conditional GANs' discriminators (jobs/assets/models/cgan): the 300 held-out digits
           split at random into two halves (a null with a real D's score shape), and the check on the
           model's own training digits against held-out ones (cGAN-64's D saw its 64 digits ~1000 times).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stats import StatsSettings  # noqa: E402
from stats.detect.discriminator import discriminator_test  # noqa: E402

Sampler = Callable[[np.random.Generator, int], np.ndarray]
SHAPES: dict[str, Sampler] = {
    "normal": lambda rng, n: rng.normal(0.0, 1.0, n),
    "t3": lambda rng, n: rng.standard_t(3, n),
    "saturated": lambda rng, n: np.minimum(rng.normal(0.0, 1.0, n), 0.25),  # ~40% tied at the clip
    "coarse": lambda rng, n: np.round(rng.normal(0.0, 1.0, n) * 2) / 2,
}
SIZES = (20, 64, 300, 2000)


def fires(train: np.ndarray, val: np.ndarray, settings: StatsSettings) -> bool:
    table = pa.table({"image_id": [f"i{k}" for k in range(len(train) + len(val))],
                      "split": ["train"] * len(train) + ["val"] * len(val),
                      "score": np.concatenate([train, val]).astype(np.float64),
                      "classified_real": np.concatenate([train, val]) > 0})
    return bool(discriminator_test(table, settings).fired)


def share(hits: list[bool]) -> tuple[float, float]:
    p = float(np.mean(hits))
    return p, math.sqrt(max(p * (1 - p), 1e-12) / len(hits))


def null_rows(trials: int, settings: StatsSettings, seed: int) -> None:
    limit = settings.alpha + 2 * math.sqrt(settings.alpha * (1 - settings.alpha) / trials)
    print(f"\n## Null: exchangeable train and val scores ({trials} trials per cell, limit alpha + 2 SE = {limit:.2%})\n")
    print("| shape | n per split | FPR | SE | ok |")
    print("|---|---|---|---|---|")
    for k, (name, sample) in enumerate(SHAPES.items()):
        for n in SIZES:
            rng = np.random.default_rng([seed, k, n])
            fpr, se = share([fires(sample(rng, n), sample(rng, n), settings) for _ in range(trials)])
            print(f"| {name} | {n} | {fpr:.2%} | {se:.2%} | {'yes' if fpr <= limit else 'NO'} |", flush=True)


def power_rows(trials: int, settings: StatsSettings, seed: int) -> None:
    print(f"\n## Power ({trials} trials per cell, normal logits)\n")
    print("| scenario | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    scenarios = [(f"shift {d} SD", d, 0.0) for d in (0.1, 0.25, 0.5)] + \
                [(f"{f:.0%} of train +3 SD", 0.0, f) for f in (0.05, 0.2)]
    for k, (label, shift, fraction) in enumerate(scenarios):
        cells = []
        for n in SIZES:
            rng = np.random.default_rng([seed, 100 + k, n])
            hits = []
            for _ in range(trials):
                train = rng.normal(shift, 1.0, n)
                train[: int(round(fraction * n))] += 3.0
                hits.append(fires(train, rng.normal(0.0, 1.0, n), settings))
            cells.append(f"{share(hits)[0]:.1%}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def real_rows(trials: int, settings: StatsSettings, seed: int) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    from conditional_table import ASSETS, catalog, load, targets  # the bundled cGANs, as the cGAN row loads them

    print(f"\n## The bundled cGANs' discriminators ({trials} random halves of the 300 held-out digits for the null)\n")
    print("| model | null FPR (150 vs 150 held-out) | train vs held-out: n | AUC | p | fired |")
    print("|---|---|---|---|---|---|")
    for name in ("cgan-64.pt", "cgan-1200.pt"):
        g, d, meta = load(name)
        _, x, y = targets(g, ASSETS / "digits" / "val.parquet", 300, seed)
        held_out = d.score(x, y).numpy().astype(np.float64)  # [300]
        rng = np.random.default_rng([seed, len(name)])
        null = []
        for _ in range(trials):
            order = rng.permutation(len(held_out))
            null.append(fires(held_out[order[:150]], held_out[order[150:]], settings))
        n = min(64, catalog()[name]["train_size"])
        _, xt, yt = targets(g, ASSETS / "digits" / meta["train_set"], n, seed)
        train = d.score(xt, yt).numpy().astype(np.float64)
        table = pa.table({"image_id": [f"i{k}" for k in range(n + 300)], "split": ["train"] * n + ["val"] * 300,
                          "score": np.concatenate([train, held_out]), "classified_real": np.concatenate([train, held_out]) > 0})
        result = discriminator_test(table, settings)
        print(f"| {name[:-3]} | {share(null)[0]:.2%} | {n} vs 300 | {result.statistic:.3f} | {result.p_value:.2g} | "
              f"{'yes' if result.fired else 'no'} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true", help="only the simulated scores (no torch)")
    args = ap.parse_args(argv)
    settings = StatsSettings()
    print(f"alpha = {settings.alpha}")
    started = time.time()
    null_rows(args.trials, settings, args.seed)
    power_rows(args.trials, settings, args.seed)
    if not args.skip_real:
        real_rows(args.trials, settings, args.seed)
    print(f"\n({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
