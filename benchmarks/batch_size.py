"""Images per second of the search's evaluation per batch size, to choose recovery.batch_size.

    python benchmarks/batch_size.py [--models natural-upconv.pt,natural-dcgan.pt] [--device cuda] [--threads 2]
    python benchmarks/batch_size.py --torchscript my-generator.pt --latent 512 [--output-range -1 1]

One evaluation is what a search round costs: the loss and latent gradient for a batch of targets through G,
the operator and the loss. The default batch size is a rule, not a timing (recovery.batching: 64 on CUDA; on a CPU
it shrinks with the image, 16 at 3x64x64), because a measured one would make runs differ in the last
digits; this script measures for you.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator  # noqa: E402
from recovery.batching import rates  # noqa: E402
from recovery.recover import batch_size_for, evaluation_step  # noqa: E402


def report(label: str, generator, settings: RecoverySettings) -> None:
    found = rates(lambda b: evaluation_step(generator, settings, b), generator.device)
    best = max(found, key=found.get)
    default = batch_size_for(generator, settings)
    print(f"{label}: output {list(generator.output_shape)}, device {generator.device}")
    for b, rate in found.items():
        marks = (" <- fastest" if b == best else "") + (" (default)" if b == default else "")
        print(f"  batch {b:5d}: {rate:9.1f} image-evaluations/s{marks}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="natural-upconv.pt,natural-dcgan.pt", help="files in jobs/assets/models")
    ap.add_argument("--torchscript", help="your own TorchScript generator instead of the bundled ones")
    ap.add_argument("--latent", type=int, nargs="+", help="its latent shape (with --torchscript)")
    ap.add_argument("--output-range", type=float, nargs=2, default=(-1.0, 1.0))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    settings = RecoverySettings()
    if args.torchscript:
        if not args.latent:
            ap.error("--torchscript needs --latent")
        spec = GeneratorSpec(torchscript=args.torchscript, latent=LatentSpec(tuple(args.latent), "normal"),
                             output_range=tuple(args.output_range))
        report(args.torchscript, load_generator(spec, device=args.device), settings)
        return
    from convergence import load  # the bundled trained generators, as benchmarks/convergence.py loads them

    for name in args.models.split(","):
        report(name, load(name, args.device)[0], settings)


if __name__ == "__main__":
    main()
