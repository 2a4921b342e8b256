"""Calibration and power of the verdict, through stats.reduce on simulated error samples.

    python benchmarks/calibration.py                 # the full tables (about 2 minutes on 2 cores)
    python benchmarks/calibration.py --trials 50     # a quicker look

Null: train and val errors are exchangeable draws of one shape; the false-positive rate
is the share of trials whose verdict is "memorization", with its standard error. The
shapes: lognormal (sigma 0.7, median 1e-2: shaped like a real val split), bimodal (30% of
easy images an order of magnitude below the rest), and a power law near zero (gamma with
shape 0.5: the per-image tail model's boundary case, errors spread over many decades).
"log-t3" (log-errors with Student-t tails, heavier than the tail model allows: unseen
images recovered 10^4 times better than the median a few times per thousand) is a stress
test outside the model's assumptions, shown with --stress: no model fitted to a few
hundred val errors can tell such images from memorized copies. Each row also gives how
often Benjamini-Hochberg flags any training image (a false flag; the per-image FDR level
is 5%), and how often the paper's rule (KS p < 1% or MRE-gap > 10% on the point
estimate) would have fired.

Power: val lognormal as above; train the same plus planted copies (errors log-uniform in
1e-5..1e-4, where a generator reproduces its training images) or a global shift (train
errors x 0.9). Targets: false-positive rate <= alpha + 2 SE everywhere; power >= 95% for
5% copies at n = 1000 and >= 80% for 1% copies at n = 10^4.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stats import StatsSettings, reduce  # noqa: E402

Sampler = Callable[[np.random.Generator, int], np.ndarray]

SHAPES: dict[str, Sampler] = {
    "lognormal": lambda rng, n: rng.lognormal(math.log(1e-2), 0.7, n),
    "bimodal": lambda rng, n: np.where(rng.random(n) < 0.3, rng.lognormal(math.log(2e-3), 0.4, n),
                                       rng.lognormal(math.log(2e-2), 0.5, n)),
    "power-law": lambda rng, n: rng.gamma(0.5, 0.02, n),
}
STRESS: dict[str, Sampler] = {"log-t3": lambda rng, n: np.exp(math.log(1e-2) + 0.5 * rng.standard_t(3, n))}
SIZES = (30, 64, 200, 1000, 10_000)


def results_table(train: np.ndarray, val: np.ndarray) -> pa.Table:
    n_t, n_v = len(train), len(val)
    return pa.table({
        "image_id": [f"t{i}" for i in range(n_t)] + [f"v{i}" for i in range(n_v)],
        "split": ["train"] * n_t + ["val"] * n_v,
        "error": np.concatenate([train, val]),
    })


def trial(train: np.ndarray, val: np.ndarray, settings: StatsSettings) -> dict[str, bool]:
    """One reduce: did the verdict fire, which rules, any BH flag, the paper's rule."""
    reduction = reduce(results_table(train, val), settings=settings)
    row = reduction.tests.to_pylist()[0]
    fired = set(reduction.verdict.rules_fired)
    paper = row["ks_pvalue"] < 0.01 or (row["mre_gap"] is not None and row["mre_gap"] > 0.10)
    return {"verdict": reduction.verdict.label == "memorization", "flag": row["flagged"] > 0, "paper": paper,
            **{rule: rule in fired for rule in ("images", "low_count", "ks", "mre_gap")}}


def rate(hits: list[bool]) -> tuple[float, float]:
    p = float(np.mean(hits))
    return p, math.sqrt(max(p * (1 - p), 1e-12) / len(hits))


def null_rows(shapes: dict[str, Sampler], trials: int, settings: StatsSettings, seed: int) -> None:
    se_alpha = lambda t: math.sqrt(settings.alpha * (1 - settings.alpha) / t)  # noqa: E731
    print("\n## Null: false-positive rate of the verdict (train and val exchangeable)\n")
    print("| shape | n per split | trials | FPR | SE | limit alpha + 2 SE | ok | rules that fired | any BH flag | "
          "paper's rule | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, sample in shapes.items():
        for n in SIZES:
            t = trials
            rng = np.random.default_rng([seed, n, zlib.crc32(name.encode())])
            started = time.time()
            runs = [trial(sample(rng, n), sample(rng, n), settings) for _ in range(t)]
            fpr, se = rate([r["verdict"] for r in runs])
            limit = settings.alpha + 2 * se_alpha(t)
            flag, _ = rate([r["flag"] for r in runs])
            paper, _ = rate([r["paper"] for r in runs])
            print(f"| {name} | {n} | {t} | {fpr:.2%} | {se:.2%} | {limit:.2%} | {'yes' if fpr <= limit else 'NO'} | "
                  f"{_rules(runs)} | {flag:.1%} | {paper:.1%} | {time.time() - started:.0f} |", flush=True)


def _rules(runs: list[dict[str, bool]]) -> str:
    """Each rule's share of trials, the rules that never fired left out."""
    shares = {k: float(np.mean([r[k] for r in runs])) for k in ("images", "low_count", "ks", "mre_gap")}
    return ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if v > 0) or "-"


def power_rows(trials: int, settings: StatsSettings, seed: int) -> None:
    sample = SHAPES["lognormal"]
    print("\n## Power (val lognormal sigma 0.7; copies: errors log-uniform in 1e-5..1e-4)\n")
    print("| scenario | n per split | trials | power | SE | rules that fired (share of trials) | seconds |")
    print("|---|---|---|---|---|---|---|")
    scenarios = [(f"{f:.0%} copies", f, 1.0) for f in (0.01, 0.05)] + [("shift x0.9", 0.0, 0.9)]
    for label, fraction, scale in scenarios:
        for n in (200, 1000, 10_000):
            t = trials
            rng = np.random.default_rng([seed, n, int(fraction * 1000), int(scale * 10)])
            started = time.time()
            runs = []
            for _ in range(t):
                train = sample(rng, n) * scale
                copies = int(round(fraction * n))
                train[:copies] = 10 ** rng.uniform(-5, -4, copies)
                runs.append(trial(train, sample(rng, n), settings))
            power, se = rate([r["verdict"] for r in runs])
            print(f"| {label} | {n} | {t} | {power:.1%} | {se:.1%} | {_rules(runs)} | {time.time() - started:.0f} |",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stress", action="store_true", help="also the log-t3 shape (outside the tail model)")
    parser.add_argument("--null-only", action="store_true")
    parser.add_argument("--power-only", action="store_true")
    args = parser.parse_args(argv)
    settings = StatsSettings()  # the defaults: alpha 0.01, fdr 0.05, bootstrap 1000
    print(f"alpha = {settings.alpha}, fdr = {settings.fdr}, gap_threshold = {settings.gap_threshold}, "
          f"bootstrap = {settings.bootstrap}, low_quantile = {settings.low_quantile}")
    shapes = {**SHAPES, **(STRESS if args.stress else {})}
    if not args.power_only:
        null_rows(shapes, args.trials, settings, args.seed)
    if not args.null_only:
        power_rows(args.trials, settings, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
