"""Reproduce the pattern of the paper's Table 1 on the bundled models, through the public API (no Ray).

    python experiments/paper_table.py [--per-split 300] [--restarts 1] [--models dcgan,glo-64,...]

Webster et al. (CVPR 2019) found no detectable overfitting in pure GANs and strong memorization in
GLO trained on few images, fading as its training set grows. This audits every model in
jobs/assets/models/models.json on its own training images, the held-out digits val split and its
own generated images, and prints model, training-set size, KS p-value, MRE-gap, MRE train / val /
generated and the verdict.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import stats
from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated, to_target

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"


def _targets(g, parquet: Path, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    table = pq.read_table(parquet, columns=["id", "image"])
    if n < table.num_rows:  # seeded subsample, as targets.limit does
        table = table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False)))
    ids = [str(i) for i in table.column("id").to_pylist()]
    return ids, torch.stack([to_target(b, shape=g.output_shape, output_range=g.spec.output_range) for b in table.column("image").to_pylist()])


def audit_model(name: str, *, per_split: int, generated: int, settings: RecoverySettings, seed: int = 0,
                stats_settings: stats.StatsSettings | None = None) -> stats.Reduction:
    """Recover a model's train, val and generated images and reduce them to the paper's statistics."""
    meta = json.loads((ASSETS / "models" / "models.json").read_text())[name]
    latent = LatentSpec(tuple(meta["latent"]["shape"]), meta["latent"]["prior"])
    spec = GeneratorSpec(torchscript=str(ASSETS / "models" / name), latent=latent, output_range=tuple(meta["output_range"]))
    g = load_generator(spec, device="cpu")
    parts = []
    for split, parquet in (("train", ASSETS / "digits" / meta["train_set"]), ("val", ASSETS / "digits" / "val.parquet")):
        ids, x = _targets(g, parquet, per_split, seed)
        parts.append(recover(g, x, ids, settings=settings).append_column("split", pa.array([split] * len(ids))))
    gen_ids = [f"generated-{i:05d}" for i in range(generated)]
    _, x = sample_generated(g, gen_ids, seed=seed, settings=settings)
    parts.append(recover(g, x, gen_ids, settings=settings).append_column("split", pa.array(["generated"] * generated)))
    return stats.reduce(pa.concat_tables(parts), settings=stats_settings or stats.StatsSettings())


def row(reduction: stats.Reduction) -> dict:
    summary = {r["split"]: r for r in reduction.summary.to_pylist()}
    test = next(r for r in reduction.tests.to_pylist() if {r["split_a"], r["split_b"]} == {"train", "val"})
    return {
        "ks_p": test["ks_pvalue"],
        "gap": test["mre_gap"],
        "mre_train": summary["train"]["mre"],
        "mre_val": summary["val"]["mre"],
        "mre_generated": summary["generated"]["mre"],
        "verdict": reduction.verdict.label,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-split", type=int, default=300, help="train and val images per model (seeded subsample)")
    ap.add_argument("--generated", type=int, default=128)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--models", default="", help="comma-separated model files (default: the digits models in models.json)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = json.loads((ASSETS / "models" / "models.json").read_text())
    digits = [m for m in models if "/" not in models[m]["train_set"]]  # the natural-image models have their own data
    names = args.models.split(",") if args.models else sorted(digits, key=lambda m: (models[m]["kind"] != "gan", models[m]["train_size"]))
    settings = RecoverySettings(restarts=args.restarts, iterations=args.iterations)
    print(f"{'model':<14}{'train set':>10}{'KS p':>11}{'MRE-gap':>9}{'MRE train':>11}{'MRE val':>10}{'MRE gen':>10}  verdict")
    for name in names:
        t = time.perf_counter()
        r = row(audit_model(name, per_split=args.per_split, generated=args.generated, settings=settings))
        print(
            f"{name:<14}{models[name]['train_size']:>10}{r['ks_p']:>11.2g}{r['gap']:>9.3f}{r['mre_train']:>11.2e}"
            f"{r['mre_val']:>10.2e}{r['mre_generated']:>10.2e}  {r['verdict']}   ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
