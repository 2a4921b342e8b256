"""The start cap as a test: its power (copies found) by simulation, its false-positive rate end to end.

    python benchmarks/start_cap.py                       # the power table (seconds)
    python benchmarks/start_cap.py --null natural-dcgan.pt --val 200   # + the end-to-end null on a trained G

Power. recovery.start_cap: auto gives every unrecovered image at most S starts, S measured on the generated
split (stats.start_cap). A training image the generator copies is in its range and is found by each start with
some probability p; it is missed when it needs more than S starts. Per trial: 64 generated images, each with
its own p_i ~ Beta(mean m, concentration k) (k = inf: every image alike; small k: a few images much harder than
the rest, which a pooled p hides), starts ~ Geometric(p_i) censored at `--max-starts` (the budget); S from
them; then the recall of 10^4 new in-range images drawn the same way, P(starts <= min(S, max-starts)), against
the uncapped search's P(starts <= max-starts), and the recall the cap loses (`lost`). Printed per (m, k): mean S, mean and 5th percentile recall over trials.

False positives. The cap looks at no train or val image, so under no memorization train and val errors stay
exchangeable and the verdict's tests keep their level whatever the cap. `--null` checks this end to end: the
held-out images of a bundled trained generator are searched under the cap measured on its generated split,
then split at random into two halves ("train" and "val") `--trials` times and reduced; the share of trials
whose verdict is "memorization" is the false-positive rate (alpha 0.01).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stats import measure_start_cap, reduce  # noqa: E402


def draw_starts(rng: np.random.Generator, n: int, mean: float, concentration: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts each of n in-range images needs (censored at limit) and whether it was found within limit."""
    p = np.full(n, mean) if np.isinf(concentration) else rng.beta(mean * concentration, (1 - mean) * concentration, n)
    needed = rng.geometric(np.clip(p, 1e-6, 1.0))
    return np.minimum(needed, limit), needed <= limit


def power_table(trials: int, limit: int, seed: int, recall: float) -> None:
    rng = np.random.default_rng(seed)
    print(f"{'mean p':>6} {'conc.':>6} {'mean S':>7} {'recall':>7} {'5% recall':>9} {'uncapped':>8} {'lost':>6}")
    for mean in (0.95, 0.7, 0.5, 0.3):
        for concentration in (np.inf, 10.0, 3.0, 1.0):
            caps, recalls, free = [], [], []
            for _ in range(trials):
                starts, found = draw_starts(rng, 64, mean, concentration, limit)
                table = pa.table({"mse": np.where(found, 1e-4, 5e-2), "restarts": starts})
                cap = measure_start_cap(table, exact_level=1e-3, recall=recall).cap or limit
                new, new_found = draw_starts(rng, 10_000, mean, concentration, 10**6)
                caps.append(cap)
                recalls.append(np.mean(new <= min(cap, limit)))  # the budget still bounds a capped search
                free.append(np.mean(new <= limit))
            print(f"{mean:6.2f} {concentration:6.0f} {np.mean(caps):7.1f} {np.mean(recalls):7.3f} "
                  f"{np.percentile(recalls, 5):9.3f} {np.mean(free):8.3f} {np.mean(free) - np.mean(recalls):6.3f}", flush=True)


def null_check(model: str, n_val: int, trials: int, seed: int) -> None:
    import torch

    from recovery import RecoverySettings, recover, sample_generated
    from experiments.planted_copies import ASSETS, load, real

    torch.set_num_threads(2)
    g, entry = load(model)
    gen_ids = [f"gen-{i}" for i in range(64)]
    _, generated = sample_generated(g, gen_ids, seed=0)
    free = RecoverySettings(start_cap=None)
    t = time.perf_counter()
    cap = measure_start_cap(recover(g, generated, gen_ids, settings=free), exact_level=free.exact_level,
                            recall=free.start_cap_recall)
    ids, targets = real(g, (ASSETS / entry["train_set"]).with_name("val.parquet"), n_val)
    errors = recover(g, targets, ids, settings=RecoverySettings(start_cap=cap.cap))
    print(f"{model}: cap {cap.cap} ({cap.reason}); {n_val} held-out images searched in {time.perf_counter() - t:.0f} s, "
          f"evaluations/image median {np.median(errors.column('evaluations').to_numpy()):.0f}")
    rng = np.random.default_rng(seed)
    fired = 0
    for _ in range(trials):
        split = np.where(rng.permutation(n_val) < n_val // 2, "train", "val")
        verdict = reduce(errors.append_column("split", pa.array(split))).verdict
        fired += verdict.label == "memorization"
    rate = fired / trials
    print(f"  null: 'memorization' in {fired} of {trials} random halvings = {rate:.3f} "
          f"(SE {np.sqrt(max(rate, 1 / trials) * (1 - rate) / trials):.3f}; alpha 0.01)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--max-starts", type=int, default=16, help="starts the uncapped budget allows (1500 / ~90)")
    ap.add_argument("--null", help="a bundled trained generator for the end-to-end null (e.g. natural-dcgan.pt)")
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recall", type=float, default=0.999, help="start_cap_recall (the default 0.999)")
    args = ap.parse_args()
    power_table(args.trials, args.max_starts, args.seed, args.recall)
    if args.null:
        null_check(args.null, args.val, args.trials, args.seed)


if __name__ == "__main__":
    main()
