"""The search's evaluation rate in the plain and in the channels-last memory format (generator.memory_format).

    python benchmarks/memory_format.py [--device cpu] [--threads 2] [--batches 3]

For every bundled generator (the trained natural-image ones, the digit models, the conditional and the
style-based one) it loads the generator twice, with memory_format contiguous and auto, and prints the
image-evaluations/s of one search evaluation (loss and latent gradient through G at the default batch
size; the best of --batches timings, alternating the two) and which layout auto kept. A ratio below 1
on some generator is the figure that would argue for changing the rule in recovery/memory_format.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import ClassesSpec, GeneratorSpec, LatentSpec, RecoverySettings, load_generator  # noqa: E402
from recovery.batching import rates  # noqa: E402
from recovery.recover import batch_size_for, evaluation_step  # noqa: E402

MODELS = ROOT / "jobs" / "assets" / "models"


def specs() -> dict[str, GeneratorSpec]:
    """Every bundled generator as the job would load it, from the models.json files beside them."""
    found = {}
    for folder in (MODELS, MODELS / "cgan", MODELS / "style"):
        for name, entry in json.loads((folder / "models.json").read_text()).items():
            latent = LatentSpec(tuple(entry["latent"]["shape"]), entry["latent"]["prior"])
            classes = ClassesSpec(**entry["classes"]) if entry.get("classes") else None
            source = ({"factory": entry["factory"], "kwargs": entry["kwargs"], "checkpoint": str(folder / name)}
                      if entry.get("factory") else {"torchscript": str(folder / name)})
            found[name] = GeneratorSpec(latent=latent, output_range=tuple(entry["output_range"]), classes=classes, **source)
    return found


def rate(generator, settings: RecoverySettings, b: int) -> float:
    return rates(lambda size: evaluation_step(generator, settings, size), generator.device, sizes=(b,))[b]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: torch's default)")
    ap.add_argument("--batches", type=int, default=3, help="timings per layout (alternating); the best is kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    settings = RecoverySettings()
    for name, spec in specs().items():
        plain = load_generator(replace(spec, memory_format="contiguous"), device=args.device)
        auto = load_generator(spec, device=args.device)
        kept = "channels-last" if auto.channels_last else "plain"
        b = batch_size_for(plain, settings)
        best = {"plain": 0.0, "auto": 0.0}
        for _ in range(args.batches):
            best["plain"] = max(best["plain"], rate(plain, settings, b))
            best["auto"] = max(best["auto"], rate(auto, settings, b))
        print(f"  {name:<20} {list(plain.output_shape)!s:<12} batch {b:3d}  plain {best['plain']:8.1f}  "
              f"auto ({kept}) {best['auto']:8.1f} image-evaluations/s  ratio {best['auto'] / best['plain']:.2f}")


if __name__ == "__main__":
    main()
