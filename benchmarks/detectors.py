"""False-positive rate and power of the companion detectors, and what they say about the bundled models.

    python benchmarks/detectors.py                 # 100 trials per setting, about 2-4 minutes on 2 cores
    python benchmarks/detectors.py --trials 300

Part 1, simulation on the bundled digits (all 1797 images of jobs/assets/digits, 32x32 pixels, features
= pixels in [-1, 1], L2): each trial draws disjoint train (400), val (300) and generated (300) sets from
the pool. Null: the generated images are fresh pool images (exchangeable with val: no detector should
fire more often than alpha = 0.01). Power: a fraction f of the generated images are copies of training
images (drawn with replacement), exact or with N(0, 0.05) pixel noise, the rest fresh. "100% noisy copies" is
a generator that only reproduces (noisy crops of) its training images: the birthday test's case.

Part 2: each bundled generator (jobs/assets/models) sampled 300 times against its own training set and
val.parquet; GLO on 64 images memorizes, the DCGAN on 1200 should not.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's small matmuls: threads only contend on a shared machine
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "jobs" / "assets"
sys.path.insert(0, str(ROOT))

DETECTORS = ["neighbours", "mifid", "ct", "birthday"]


def _pixels(table: pa.Table) -> np.ndarray:
    from PIL import Image

    out = [np.asarray(Image.open(io.BytesIO(b)).convert("L"), np.float32) for b in table.column("image").to_pylist()]
    return np.stack(out).reshape(len(out), -1) / 127.5 - 1.0  # [N, 1024] in [-1, 1]


def _run(train: np.ndarray, val: np.ndarray, generated: np.ndarray, settings) -> dict[str, bool]:
    """Which detectors fire, and whether MiFID's paper rule alone would."""
    table = _details(train, val, generated, settings)
    out = dict(zip(table.column("detector").to_pylist(), table.column("fired").to_pylist()))
    return {**out, "mifid (paper's rule alone)": "Bai et al.'s rule fires" in table.column("reason")[1].as_py()}


def simulate(trials: int, settings) -> None:
    pool = np.concatenate([_pixels(pq.read_table(ASSETS / "digits" / f"{n}.parquet")) for n in ("train", "val", "spare")])
    settings_line = (f"alpha {settings.alpha}, mifid_eps {settings.mifid_eps}, ct_cells {settings.ct_cells}, "
                     f"birthday_size {settings.birthday_size}")
    print(f"Part 1: {len(pool)} digits, train 400 / val 300 / generated 300, {trials} trials per row ({settings_line})")
    cases = [("null (fresh images)", 0.0, 0.0), ("5% exact copies", 0.05, 0.0), ("10% exact copies", 0.10, 0.0),
             ("25% exact copies", 0.25, 0.0), ("100% exact copies", 1.0, 0.0), ("10% noisy copies", 0.10, 0.05),
             ("25% noisy copies", 0.25, 0.05), ("100% noisy copies", 1.0, 0.05)]
    names = DETECTORS + ["mifid (paper's rule alone)"]
    print(f"{'generated split':<22}" + "".join(f"{n:>12}" for n in DETECTORS) + f"{'mifid, paper rule alone':>26}")
    for label, share, noise in cases:
        fired = {n: 0 for n in names}
        for trial in range(trials):
            rng = np.random.default_rng(trial)
            order = rng.permutation(len(pool))
            train, val, fresh = pool[order[:400]], pool[order[400:700]], pool[order[700:1000]]
            n_copies = int(round(share * 300))
            copies = train[rng.integers(0, 400, n_copies)] + rng.normal(0, noise, (n_copies, train.shape[1])) * (noise > 0)
            generated = np.concatenate([copies, fresh[n_copies:]]).astype(np.float32)
            for name, value in _run(train, val, generated, settings).items():
                fired[name] += bool(value)
        print(f"{label:<22}" + "".join(f"{fired[n] / trials:>12.1%}" for n in DETECTORS)
              + f"{fired[names[-1]] / trials:>26.1%}")


def bundled(settings) -> None:
    import torch

    models = json.loads((ASSETS / "models" / "models.json").read_text())
    val = _pixels(pq.read_table(ASSETS / "digits" / "val.parquet"))
    print("\nPart 2: bundled generators, 300 samples each, against their training set and val.parquet (300)")
    print(f"{'model':<16}{'train':>7}" + "".join(f"{n:>12}" for n in DETECTORS) + "   statistics")
    for name, card in sorted(models.items()):
        if not (ASSETS / "digits" / str(card.get("train_set"))).is_file() or card.get("kind") not in ("gan", "glo"):
            continue  # the digits models only (the natural-image ones have their own data)
        train = _pixels(pq.read_table(ASSETS / "digits" / card["train_set"]))
        g = torch.jit.load(str(ASSETS / "models" / name)).eval()
        z = torch.randn(300, *card["latent"]["shape"], generator=torch.Generator().manual_seed(0))
        if card["latent"]["prior"] == "sphere":
            z = z / z.flatten(1).norm(dim=1).reshape(-1, *[1] * (z.dim() - 1))
        with torch.no_grad():
            generated = g(z).reshape(300, -1).numpy()
        table = _details(train, val, generated, settings)
        row = dict(zip(table.column("detector").to_pylist(), table.column("fired").to_pylist()))
        stats = ", ".join(f"{d} {v:.3g}" for d, v in zip(table.column("detector").to_pylist(),
                                                            table.column("statistic").to_pylist()) if v is not None)
        print(f"{name:<16}{len(train):>7}" + "".join(f"{'fires' if row[d] else '-':>12}" for d in DETECTORS) + f"   {stats}")


def _details(train, val, generated, settings):
    import torch

    from recovery.neighbours import knn
    from stats.detect.companions import evaluate
    from stats.detect.nearest import merge_neighbours

    ids = {"train": [f"t{i}" for i in range(len(train))], "val": [f"v{i}" for i in range(len(val))],
           "generated": [f"g{i}" for i in range(len(generated))]}
    queries = np.concatenate([val, generated]).astype(np.float32)
    found = knn(torch.from_numpy(queries), torch.from_numpy(train.astype(np.float32)), k=2)
    part = pa.table({
        "query_id": np.repeat(ids["val"] + ids["generated"], 2),
        "query_split": np.repeat(["val"] * len(val) + ["generated"] * len(generated), 2),
        "train_id": np.array(ids["train"])[found.indices.numpy().ravel()],
        "distance": found.distances.numpy().ravel().astype(np.float64),
        "mifid_distance": np.repeat(found.mifid_distance.numpy(), 2).astype(np.float64)})
    neighbours, mifid = merge_neighbours(part, k=2, space="pixel")
    features = {s: (ids[s], x) for s, x in (("train", train), ("val", val), ("generated", generated))}
    return evaluate(DETECTORS, neighbours=neighbours, mifid=mifid, features=features, settings=settings).table


def main(argv: list[str] | None = None) -> int:
    from stats import StatsSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    settings = StatsSettings()
    started = time.time()
    if not args.skip_simulation:
        simulate(args.trials, settings)
    bundled(settings)
    print(f"\n{time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
