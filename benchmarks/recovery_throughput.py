"""memaudit's batched recovery against the paper's reference procedure, in one process and one run.

    python benchmarks/recovery_throughput.py [--images 64] [--device cuda] [--targets generated|foreign]

Generator: built-in DCGAN, 64x64 RGB, nz=100, ngf=64, weights fixed by a seed, batch-norm running
statistics made non-trivial by train-mode passes. Targets: 64 images that G can make (generated,
known latent) or 64 images of another DCGAN (foreign: not exactly reachable).
(a) memaudit: recover() at default settings (batched per-image L-BFGS, batch 64).
(b) reference (the paper's public code): one image at a time, a fresh torch.optim.LBFGS([z], max_iter=1)
    with default lr and history, 50 steps, one random start, per-pixel MSE.
Prints images/s and median final MSE of both, their ratio, and the achieved FLOP/s of memaudit's inner
loop (forward + backward through G, counted by torch.utils.flop_counter) as a fraction of a large
matmul's FLOP/s measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from recovery import LatentSpec, RecoverySettings, recover, sample_generated, wrap_generator
from recovery.models import DCGAN

from convergence import paper_reference  # noqa: E402 - run as a script from benchmarks/


def make_generator(seed: int, device: torch.device):
    torch.manual_seed(seed)
    net = DCGAN(nz=100, ngf=64, nc=3, size=64)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(64, 100) * 1.2)
    return wrap_generator(net.eval(), latent=LatentSpec((100, 1, 1)), device=device)


def reference(g, targets: torch.Tensor, seed: int) -> np.ndarray:
    """The paper's procedure, image by image (50 L-BFGS steps, one start)."""
    return paper_reference(g, targets, steps=50, restarts=1, seed=seed)[0]


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def inner_loop_flops(g, batch: int) -> tuple[float, float]:
    """(FLOPs of one batched forward+backward through G w.r.t. z, FLOP/s achieved on it)."""
    z = torch.randn(batch, 100, 1, 1, device=g.device)
    x = torch.zeros(batch, 3, 64, 64, device=g.device)

    def step():
        u = z.clone().requires_grad_(True)
        loss = (g(u) - x).square().flatten(1).mean(1)
        loss.sum().backward()  # the same work as autograd.grad w.r.t. u (G is frozen)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    sync(g.device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        step()
    sync(g.device)
    return flops, flops * reps / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--targets", choices=["generated", "foreign"], default="generated")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = make_generator(0, device)
    ids = [f"t{i:03d}" for i in range(args.images)]
    source = g if args.targets == "generated" else make_generator(1, device)
    _, targets = sample_generated(source, ids, seed=123)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.images} {args.targets} targets, DCGAN 64x64 RGB nz=100")

    settings = RecoverySettings()
    recover(g, targets[:2], ids[:2], settings=RecoverySettings(iterations=2))  # warm-up
    sync(device)
    t = time.perf_counter()
    ours = recover(g, targets, ids, settings=settings)
    sync(device)
    t_ours = time.perf_counter() - t
    e_ours = ours.column("mse").to_numpy()
    iters = ours.column("iterations").to_numpy()

    t = time.perf_counter()
    e_ref = reference(g, targets, seed=0)
    sync(device)
    t_ref = time.perf_counter() - t

    flops, rate = inner_loop_flops(g, settings.batch_size)
    mm = matmul_flops(device)
    print(f"memaudit : {args.images / t_ours:8.2f} images/s   median MSE {np.median(e_ours):.3e}   median iterations {np.median(iters):.0f}   ({t_ours:.1f} s)")
    print(f"reference: {args.images / t_ref:8.2f} images/s   median MSE {np.median(e_ref):.3e}   50 iterations          ({t_ref:.1f} s)")
    print(f"throughput ratio memaudit/reference: {t_ref / t_ours:.1f}x; median error ratio memaudit/reference: {np.median(e_ours) / np.median(e_ref):.3g}")
    print(f"inner loop (batch {settings.batch_size} fwd+bwd): {flops / 1e9:.1f} GFLOP, {rate / 1e9:.1f} GFLOP/s; "
          f"large matmul {mm / 1e9:.1f} GFLOP/s; fraction {rate / mm:.2f}")


if __name__ == "__main__":
    main()
