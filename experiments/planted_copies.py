"""Planted copies on a trained generator, end to end through recover() and stats.reduce.

    python experiments/planted_copies.py [--model natural-dcgan.pt] [--train 190] [--copies 10] [--val 200]
                                         [--budget 1500] [--threads 2]

A generator that memorized some training images reproduces them exactly. We simulate that on a bundled
trained generator: its audit's train split is `--train` of its real training patches plus `--copies`
images sampled from the generator itself (exactly reachable, as copies would be); val is `--val` held-out
patches; the generated split is 64 of G's own images. The search is memaudit's default (adaptive,
`--budget` evaluations per image). Printed: the generated-split recovery rate, the verdict with and
without the copies, and where the copies rank in ranking.parquet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated, to_target  # noqa: E402
from stats import reduce  # noqa: E402

ASSETS = ROOT / "jobs" / "assets"


def load(name: str):
    entry = json.loads((ASSETS / "models" / "models.json").read_text())[name]
    latent = LatentSpec(tuple(entry["latent"]["shape"]), entry["latent"]["prior"])
    spec = GeneratorSpec(torchscript=str(ASSETS / "models" / name), latent=latent, output_range=tuple(entry["output_range"]))
    return load_generator(spec, device="cuda" if torch.cuda.is_available() else "cpu"), entry


def real(generator, set_path: Path, n: int) -> tuple[list[str], torch.Tensor]:
    """The first n images of a bundled target set, as the generator's targets [n, C, H, W]."""
    table = pq.read_table(set_path).slice(0, n)
    image_col = "image" if "image" in table.column_names else table.column_names[-1]
    id_col = "id" if "id" in table.column_names else table.column_names[0]
    images = [to_target(d, shape=generator.output_shape, output_range=generator.spec.output_range)
              for d in table.column(image_col).to_pylist()]
    return [str(i) for i in table.column(id_col).to_pylist()], torch.stack(images)


def run(generator, splits: dict[str, tuple[list[str], torch.Tensor]], settings: RecoverySettings) -> pa.Table:
    parts = []
    for split, (ids, targets) in splits.items():
        t = time.perf_counter()
        table = recover(generator, targets, ids, settings=settings)
        print(f"  {split}: {len(ids)} images in {time.perf_counter() - t:.0f} s", flush=True)
        parts.append(table.append_column("split", pa.array([split] * table.num_rows)))
    return pa.concat_tables(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="natural-dcgan.pt")
    ap.add_argument("--train", type=int, default=190)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--budget", type=int, default=None, help="evaluations per image (default: the search's own)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator, entry = load(args.model)
    train_set = ASSETS / entry["train_set"]
    train_ids, train = real(generator, train_set, args.train)
    val_ids, val = real(generator, train_set.with_name("val.parquet"), args.val)
    copy_ids = [f"copy-{i}" for i in range(args.copies)]
    _, copies = sample_generated(generator, copy_ids, seed=777)
    gen_ids = [f"gen-{i}" for i in range(64)]
    _, generated = sample_generated(generator, gen_ids, seed=0)
    settings = RecoverySettings(budget=args.budget)
    print(f"{args.model}: {args.train} train + {args.copies} copies, {args.val} val, 64 generated; budget "
          f"{settings.plan().budget}")
    results = run(generator, {"train": (train_ids + copy_ids, torch.cat([train, copies])), "val": (val_ids, val),
                              "generated": (gen_ids, generated)}, settings)
    with_copies = reduce(results)
    without = reduce(results.filter(pa.compute.invert(pa.compute.starts_with(results.column("image_id"), "copy-"))))
    summary = {r["split"]: r for r in with_copies.summary.to_pylist()}
    print(f"generated recovered below tau_generated: {summary['generated']['success_rate']:.1%}")
    ranking = with_copies.ranking
    top = ranking.column("image_id").to_pylist()
    ranks = sorted(top.index(c) + 1 for c in copy_ids)
    flagged = ranking.filter(ranking.column("flagged")).column("image_id").to_pylist()
    print(f"with copies:    {with_copies.verdict.label}: {with_copies.verdict.sentence}")
    print(f"  copies rank {ranks} of {len(top)}; flagged {len(flagged)} ({sum(f in copy_ids for f in flagged)} copies)")
    print(f"without copies: {without.verdict.label}: {without.verdict.sentence}")


if __name__ == "__main__":
    main()
