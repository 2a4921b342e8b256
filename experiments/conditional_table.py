"""The paper's cGAN row and the discriminator check on the bundled conditional GANs, through the public API.

    python experiments/conditional_table.py [--per-split 64] [--generated 16] [--unlabelled]

Audits jobs/assets/models/cgan/cgan-64.pt (trained on 64 digits) and cgan-1200.pt (on 1200) on their own
training digits, the held-out val digits and their generated images, with each digit's label as its class
(--unlabelled: every class is searched, 10 times the cost), under the paper's protocol (50 L-BFGS iterations,
one start; its 1e-2 gate for generated images). Then each model's discriminator scores the same train and val
digits. Prints, per model: KS p, MRE-gap, MRE train / val / generated, the verdict, and D's AUC train vs val,
its p-value and the fractions it calls real.
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
from recovery import ClassesSpec, GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated, to_target
from recovery.discriminator import DiscriminatorSpec, load_discriminator
from recovery.recover import generated_labels
from stats.detect.discriminator import discriminator_test

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
CGAN = ASSETS / "models" / "cgan"


def catalog() -> dict:
    return json.loads((CGAN / "models.json").read_text())


def load(name: str):
    meta = catalog()[name]
    classes = ClassesSpec(tuple(meta["classes"]["names"]), meta["classes"]["encoding"])
    spec = GeneratorSpec(torchscript=str(CGAN / name), latent=LatentSpec(tuple(meta["latent"]["shape"])), classes=classes)
    g = load_generator(spec, device="cpu")
    d = load_discriminator(DiscriminatorSpec(torchscript=str(CGAN / meta["discriminator"]), conditional=True),
                           input_shape=g.output_shape, classes=classes, device="cpu")
    return g, d, meta


def targets(g, parquet: Path, n: int, seed: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """A seeded subsample of a digits file: ids, images [n, 1, 32, 32], labels [n]."""
    table = pq.read_table(parquet, columns=["id", "image", "label"])
    if n < table.num_rows:
        table = table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False)))
    x = torch.stack([to_target(b, shape=g.output_shape, output_range=g.spec.output_range) for b in table.column("image").to_pylist()])
    return [str(i) for i in table.column("id").to_pylist()], x, torch.tensor(table.column("label").to_pylist())


def audit(name: str, *, per_split: int, generated: int, settings: RecoverySettings, labelled: bool = True, seed: int = 0,
          stats_settings: stats.StatsSettings | None = None) -> tuple[stats.Reduction, stats.detect.detectors.DetectorResult]:
    """Recovery on train / val / generated and the discriminator check on train / val, for one cGAN."""
    g, d, meta = load(name)
    parts, scores = [], []
    for split, parquet in (("train", ASSETS / "digits" / meta["train_set"]), ("val", ASSETS / "digits" / "val.parquet")):
        ids, x, y = targets(g, parquet, per_split, seed)
        table = recover(g, x, ids, settings=settings, labels=y if labelled else None)
        parts.append(table.append_column("split", pa.array([split] * len(ids))))
        s = d.score(x, y).numpy()
        scores.append(pa.table({"image_id": ids, "split": [split] * len(ids), "score": s, "classified_real": s > 0}))
    gen_ids = [f"generated-{i:05d}" for i in range(generated)]
    _, x = sample_generated(g, gen_ids, seed=seed, settings=settings)
    table = recover(g, x, gen_ids, settings=settings, labels=generated_labels(g, gen_ids, seed=seed))
    parts.append(table.append_column("split", pa.array(["generated"] * generated)))
    settings_ = stats_settings or stats.StatsSettings(tau_generated=1e-2)
    return stats.reduce(pa.concat_tables(parts, promote_options="default"), settings=settings_), \
        discriminator_test(pa.concat_tables(scores), settings_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-split", type=int, default=64)
    ap.add_argument("--generated", type=int, default=16)
    ap.add_argument("--unlabelled", action="store_true", help="search every class instead of using the labels")
    args = ap.parse_args()
    settings = RecoverySettings(protocol="paper")
    print(f"{'model':<12}{'train':>6}{'KS p':>10}{'gap':>8}{'MRE train':>11}{'MRE val':>10}{'MRE gen':>10}  {'verdict':<14}"
          f"{'D AUC':>7}{'D p':>10}  D real train/val")
    for name in ("cgan-64.pt", "cgan-1200.pt"):
        t = time.perf_counter()
        reduction, d = audit(name, per_split=args.per_split, generated=args.generated, settings=settings, labelled=not args.unlabelled)
        summary = {r["split"]: r for r in reduction.summary.to_pylist()}
        test = next(r for r in reduction.tests.to_pylist() if {r["split_a"], r["split_b"]} == {"train", "val"})
        fractions = d.reason.split("it calls ")[-1] if "it calls" in d.reason else ""
        print(f"{name[:-3]:<12}{catalog()[name]['train_size']:>6}{test['ks_pvalue']:>10.2g}{test['mre_gap']:>8.3f}"
              f"{summary['train']['mre']:>11.2e}{summary['val']['mre']:>10.2e}{summary['generated']['mre']:>10.2e}  "
              f"{reduction.verdict.label:<14}{d.statistic:>7.3f}{d.p_value:>10.2g}  {fractions}  ({time.perf_counter() - t:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
