"""Does the search recover a trained generator's own images, and how fast?

    python benchmarks/convergence.py [--models natural-dcgan.pt,natural-upconv.pt] [--images 64]
                                     [--remedy-images 16] [--device cuda] [--threads 2] [--skip encoder,old,remedy]
                                     [--variants '[{"screening": 4}, {"stop_mse": 3e-4}]']

For each bundled trained generator (jobs/assets/models, see MODEL_CARD.md), 64 generated targets
(G(z0), z0 seeded), one process, one run, it prints per search: the fraction of images recovered
below 1e-3 and 1e-2 MSE, the median MSE, images/s and generator evaluations per image, for

  default   memaudit's default search (screened starts, adaptive restarts, evaluation budget);
  paper     the paper's procedure: one image at a time, torch.optim.LBFGS([z], max_iter=1), 50 steps,
            one random start;
  remedy    the paper's remedy for hard generators: the same, 10 restarts x 100 steps (slow: run on the
            first --remedy-images targets; its images/s is what counts);
  encoder   the learned start (start: encoder, what start: auto picks for a large audit); its one-off training
            time is printed apart (paid once per generator, cached by the job), and the images/s with that
            time spread over an audit of --audit-images images per actor;
  variants  (--variants) the default with some recovery settings changed: how tuning candidates are compared;
            evaluation counts do not depend on the machine's load, so they are the figure to compare.
  old       memaudit before the budgeted search (commit OLD_ENGINE, restored with `git archive` into a temporary
            folder and run in a subprocess) at restarts 4, iterations 200.

Every search runs on the same loaded generator, so in the same memory layout (generator.memory_format:
channels-last convolutions on a CPU); only the old engine, run from its own commit, has the plain one.
Random-weight generators recover in a handful of iterations and flatter every search; only trained
ones are used here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import (  # noqa: E402
    GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated, train_encoder)

MODELS = ROOT / "jobs" / "assets" / "models"
OLD_ENGINE = "6d8e3ea"  # the last commit before the search
DEFAULT_MODELS = "natural-dcgan.pt,natural-upconv.pt"


def load(name: str, device: str):
    entry = json.loads((MODELS / "models.json").read_text())[name]
    latent = LatentSpec(tuple(entry["latent"]["shape"]), entry["latent"]["prior"])
    spec = GeneratorSpec(torchscript=str(MODELS / name), latent=latent, output_range=tuple(entry["output_range"]))
    return load_generator(spec, device=device), entry


def paper_reference(g, targets: torch.Tensor, *, steps: int, restarts: int, seed: int) -> tuple[np.ndarray, int]:
    """The paper's public procedure, one image at a time: (best MSE per image, generator evaluations)."""
    errors, evaluations = [], 0
    gen = torch.Generator().manual_seed(seed)
    for x in targets:
        x = x[None].to(g.device)  # [1, C, H, W]
        best = float("inf")
        for _ in range(restarts):
            z = torch.randn((1, *g.latent.shape), generator=gen).to(g.device).requires_grad_(True)
            opt = torch.optim.LBFGS([z], max_iter=1)

            def closure():
                opt.zero_grad()
                loss = (g(z) - x).square().mean()
                loss.backward()
                return loss

            for _ in range(steps):
                opt.step(closure)
            evaluations += steps
            with torch.no_grad():
                best = min(best, (g(z) - x).square().mean().item())
        errors.append(best)
    return np.array(errors), evaluations


OLD_SCRIPT = """
import sys, time, json, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[5]))
from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover
entry = json.loads(sys.argv[3])
spec = GeneratorSpec(torchscript=sys.argv[2], latent=LatentSpec(tuple(entry["latent"]["shape"]), entry["latent"]["prior"]),
                     output_range=tuple(entry["output_range"]))
g = load_generator(spec, device=sys.argv[6])
x, ids = torch.load(sys.argv[4])
t = time.perf_counter()
table = recover(g, x.to(g.device), ids, settings=RecoverySettings(iterations=200, restarts=4))
seconds = time.perf_counter() - t
print(json.dumps({"mse": table.column("mse").to_pylist(), "seconds": seconds}))
"""


def old_engine(name: str, entry: dict, targets: torch.Tensor, ids: list[str], device: str) -> tuple[np.ndarray, float]:
    """memaudit as it was before the budgeted search, at restarts 4 / iterations 200: (MSE per image, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", OLD_ENGINE, "recovery"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        torch.save((targets.cpu(), ids), f"{tmp}/targets.pt")
        out = subprocess.run([sys.executable, "-c", OLD_SCRIPT, tmp, str(MODELS / name), json.dumps(entry),
                              f"{tmp}/targets.pt", str(torch.get_num_threads()), device],
                             check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return np.array(result["mse"]), result["seconds"]


def line(label: str, mse: np.ndarray, seconds: float, evaluations: float) -> str:
    return (f"  {label:<22} <1e-3 {np.mean(mse < 1e-3):6.1%}  <1e-2 {np.mean(mse < 1e-2):6.1%}  "
            f"median MSE {np.median(mse):9.2e}  {len(mse) / seconds:7.2f} images/s  {evaluations:7.0f} evaluations/image  "
            f"({len(mse)} images, {seconds:.1f} s)")


def search(g, targets: torch.Tensor, ids: list[str], label: str, settings: RecoverySettings) -> None:
    """One memaudit search over the targets: its line, then starts per image and how starts ended."""
    t = time.perf_counter()
    table = recover(g, targets, ids, settings=settings)
    seconds = time.perf_counter() - t
    print(line(label, table.column("mse").to_numpy(), seconds, np.mean(table.column("evaluations").to_numpy())))
    stops = table.column("stop").value_counts().to_pylist()
    print(f"    starts per image {np.mean(table.column('restarts').to_numpy()):.2f}; stops "
          + ", ".join(f"{s['values']} {s['counts']}" for s in stops))


def bench(name: str, args) -> None:
    g, entry = load(name, args.device)
    ids = [f"gen-{i:03d}" for i in range(args.images)]
    _, targets = sample_generated(g, ids, seed=123)  # [N, C, H, W]
    print(f"{name}: latent {list(g.latent.shape)} {g.latent.prior}, output {list(g.output_shape)}")
    recover(g, targets[:2], ids[:2], settings=RecoverySettings(protocol="paper", iterations=2))  # warm-up
    skip = set(args.skip.split(",")) if args.skip else set()
    if "default" not in skip:
        search(g, targets, ids, "memaudit default", RecoverySettings(seed=args.seed))
    for variant in json.loads(args.variants):  # tuning candidates, each against the default above
        search(g, targets, ids, json.dumps(variant), RecoverySettings(seed=args.seed, **variant))
    if "encoder" not in skip:
        settings = RecoverySettings(seed=args.seed, start="encoder", encoder_steps=args.encoder_steps)
        t = time.perf_counter()
        encoder = train_encoder(g, settings=settings, steps=settings.encoder_steps, seed=args.seed)
        trained = time.perf_counter() - t
        t = time.perf_counter()
        table = recover(g, targets, ids, settings=settings, encoder=encoder)
        seconds = time.perf_counter() - t
        print(line("encoder start", table.column("mse").to_numpy(), seconds,
                   np.mean(table.column("evaluations").to_numpy())) + f"  [+{trained:.0f} s training, once]")
        n = args.audit_images  # the training amortized over an audit of n images per actor (start: auto's case)
        print(f"    with its training over an audit of {n} images per actor: "
              f"{n / (trained + n * seconds / len(ids)):.2f} images/s")
    if "paper" not in skip:
        t = time.perf_counter()
        mse, evaluations = paper_reference(g, targets, steps=50, restarts=1, seed=args.seed)
        print(line("paper (50 x 1)", mse, time.perf_counter() - t, evaluations / len(mse)))
    if "remedy" not in skip:
        k = min(args.remedy_images, len(ids))
        t = time.perf_counter()
        mse, evaluations = paper_reference(g, targets[:k], steps=100, restarts=10, seed=args.seed)
        print(line("paper remedy (100 x 10)", mse, time.perf_counter() - t, evaluations / k))
    if "old" not in skip:
        mse, seconds = old_engine(name, entry, targets, ids, args.device)
        print(line("old engine (200 x 4)", mse, seconds, float("nan")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated files in jobs/assets/models")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--remedy-images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--encoder-steps", type=int, default=2000)
    ap.add_argument("--audit-images", type=int, default=10_000, help="images per actor the encoder's training is spread over")
    ap.add_argument("--variants", default="[]",
                    help='JSON list of recovery settings to run besides the default, e.g. \'[{"screening": 4}, {"stop_mse": 3e-4}]\'')
    ap.add_argument("--skip", default="", help="comma-separated: default, encoder, paper, remedy, old")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    for name in args.models.split(","):
        bench(name, args)


if __name__ == "__main__":
    main()
