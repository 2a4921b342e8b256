"""Train memaudit's bundled demo generators on the digits data, on CPU, with fixed seeds.

Run from the repository root (after `python experiments/make_digits.py`):

    python experiments/train_models.py                 # all four models, about 5 minutes on 2 cores
    python experiments/train_models.py --only glo-64   # one model; the others' files are kept

Writes, under jobs/assets/models/:

    dcgan.pt  glo-64.pt  glo-256.pt  glo-1200.pt   TorchScript generators, eval mode:
                                                   [B, 32] latent -> [B, 1, 32, 32] in [-1, 1]
    models.json      per file: latent spec, output range, training set, size, kind (what an audit needs)
    training.json    per model: seed, steps, final losses, seconds, file size, sha256 (the record)
    MODEL_CARD.md    the human-readable card, rendered from training.json

The models exist to show that the audit fires where memorization exists and stays quiet
where it does not (DESIGN.md §2, the pattern of the paper's Table 1):

    dcgan      a pure GAN (non-saturating loss) on all 1200 training images: no memorization expected
    glo-N      GLO (Bojanowski et al., ICML 2018) on the first N = 64, 256, 1200 training images:
               one learnable latent per image, kept on the unit sphere, decoder fit by
               reconstruction, so training images are reproduced and unseen ones are not; the
               effect fades as N grows

Every generator is the built-in `recovery.models.dcgan.DCGAN(nz=32, ngf=32, nc=1, size=32)`.
Batch-norm running statistics are recomputed after training (GLO: over its training latents;
DCGAN: over N(0, I) latents), since the running averages collected while the weights still
moved do not match the final weights, and the exported module runs in eval mode.

Reproducible: fixed seeds for initialization, latents and data order, and deterministic
algorithms; the same torch build on the same thread count (2) gives the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the repo's recovery package

from experiments.card import render_card  # noqa: E402
from recovery.models.dcgan import DCGAN  # noqa: E402

DATA = ROOT / "jobs" / "assets" / "digits"
OUT = ROOT / "jobs" / "assets" / "models"
NZ, NGF, NC, SIZE = 32, 32, 1, 32  # generator shape shared by all four models
THREADS = 2


@dataclass(frozen=True)
class ModelConfig:
    """One bundled model: what it is trained on and how long."""

    kind: str  # "gan" | "glo"
    train_set: str  # file under jobs/assets/digits/
    steps: int  # optimizer steps (GAN: generator steps, one discriminator step each)
    batch_size: int
    seed: int
    lr_net: float  # Adam learning rate of the generator (and discriminator)
    lr_latent: float = 0.0  # GLO only: Adam learning rate of the per-image latents
    betas: tuple[float, float] = (0.5, 0.999)


# Steps were chosen so each model trains in at most a couple of minutes on 2 CPU cores.
MODELS: dict[str, ModelConfig] = {
    "dcgan": ModelConfig("gan", "train.parquet", steps=2000, batch_size=64, seed=1, lr_net=2e-4),
    "glo-64": ModelConfig("glo", "train-64.parquet", steps=1500, batch_size=64, seed=2, lr_net=2e-3, lr_latent=1e-2),
    "glo-256": ModelConfig("glo", "train-256.parquet", steps=1500, batch_size=64, seed=3, lr_net=2e-3, lr_latent=1e-2),
    "glo-1200": ModelConfig("glo", "train.parquet", steps=1500, batch_size=64, seed=4, lr_net=2e-3, lr_latent=1e-2),
}
PRIORS = {"gan": "normal", "glo": "sphere"}
BN_BATCHES_GAN = 64  # batches of N(0, I) latents used to recompute the DCGAN's BN statistics


def load_images(path: Path) -> torch.Tensor:
    """Parquet `image` column (PNG, mode "L") -> [N, 1, 32, 32] float32 in [-1, 1]."""
    column = pq.read_table(path, columns=["image"]).column("image").to_pylist()
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float32) for b in column]
    x = torch.from_numpy(np.stack(arrays))[:, None] / 255.0  # [N, 1, H, W] in [0, 1]
    return x * 2.0 - 1.0


def init_weights(module: nn.Module) -> None:
    """DCGAN initialization (Radford et al.): conv weights N(0, 0.02), BN weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Discriminator(nn.Module):
    """D: [B, 1, 32, 32] in [-1, 1] -> [B] logits. The DCGAN discriminator, sized for 32x32."""

    def __init__(self, ndf: int = 32, nc: int = 1) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),  # 16x16
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),  # 8x8
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),  # 4x4
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False),  # 1x1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless minibatch index tensors: a fresh permutation each epoch, the last partial batch dropped
    (so every BN batch has the same size), unless the whole set is smaller than one batch."""
    size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            yield perm[start : start + size]


@torch.no_grad()
def recompute_bn(g: nn.Module, latents) -> None:
    """Reset every BN layer's running statistics and re-estimate them as a cumulative average
    (momentum=None) over the given latent batches, in train mode, without touching the weights."""
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g.train()
    for z in latents:
        g(z)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    g.eval()


def project_sphere(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def glo_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Reconstruction loss: per-pixel MSE + 0.1 * per-pixel L1."""
    return F.mse_loss(fake, real) + 0.1 * F.l1_loss(fake, real)


def train_glo(cfg: ModelConfig, x: torch.Tensor) -> tuple[nn.Module, dict]:
    """GLO: jointly fit the decoder and one unit-norm latent per image to reconstruct x."""
    n = len(x)
    torch.manual_seed(cfg.seed)
    g = DCGAN(nz=NZ, ngf=NGF, nc=NC, size=SIZE)
    g.apply(init_weights)
    gen = torch.Generator().manual_seed(cfg.seed)
    # Random unit-norm starts (the paper initializes from PCA; random is simpler and works here).
    z = nn.Parameter(project_sphere(torch.randn(n, NZ, generator=gen)))  # [N, nz] on the sphere
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_net, betas=cfg.betas)
    opt_z = torch.optim.Adam([z], lr=cfg.lr_latent, betas=cfg.betas)

    g.train()
    order = batches(n, cfg.batch_size, gen)
    window = []  # losses of the last epoch's worth of steps
    per_epoch = max(1, n // min(cfg.batch_size, n))
    for step in range(cfg.steps):
        idx = next(order)
        loss = glo_loss(g(z[idx]), x[idx])
        opt_g.zero_grad(set_to_none=True)
        opt_z.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        opt_z.step()
        with torch.no_grad():
            z.copy_(project_sphere(z))  # GLO keeps every latent on the unit sphere
        window = (window + [loss.item()])[-max(per_epoch, 20) :]
        if step % 250 == 0 or step == cfg.steps - 1:
            print(f"  step {step:5d}  loss {loss.item():.4f}", flush=True)

    zt = z.detach()
    recompute_bn(g, [zt[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)])
    with torch.no_grad():
        rec = g(zt)  # eval mode, the exported behaviour
    losses = {
        "train_loss_last_epoch": float(np.mean(window)),  # MSE + 0.1 L1, train-mode BN
        "eval_mse_train_latents": F.mse_loss(rec, x).item(),  # eval mode, after the BN recompute
        "eval_loss_train_latents": glo_loss(rec, x).item(),
    }
    return g, losses


def train_gan(cfg: ModelConfig, x: torch.Tensor) -> tuple[nn.Module, dict]:
    """DCGAN with the non-saturating loss: D maximizes log D(x) + log(1 - D(G(z))), G maximizes log D(G(z))."""
    n = len(x)
    torch.manual_seed(cfg.seed)
    g = DCGAN(nz=NZ, ngf=NGF, nc=NC, size=SIZE)
    d = Discriminator(ndf=32, nc=NC)
    g.apply(init_weights)
    d.apply(init_weights)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_net, betas=cfg.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_net, betas=cfg.betas)
    ones = torch.ones(cfg.batch_size)
    zeros = torch.zeros(cfg.batch_size)

    g.train()
    d.train()
    order = batches(n, cfg.batch_size, gen)
    window_d, window_g = [], []
    for step in range(cfg.steps):
        real = x[next(order)]
        z = torch.randn(cfg.batch_size, NZ, generator=gen)
        fake = g(z)
        # Discriminator step.
        loss_d = F.binary_cross_entropy_with_logits(d(real), ones) + F.binary_cross_entropy_with_logits(
            d(fake.detach()), zeros
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # Generator step, non-saturating: -log D(G(z)).
        loss_g = F.binary_cross_entropy_with_logits(d(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        window_d = (window_d + [loss_d.item()])[-100:]
        window_g = (window_g + [loss_g.item()])[-100:]
        if step % 250 == 0 or step == cfg.steps - 1:
            print(f"  step {step:5d}  loss_d {loss_d.item():.4f}  loss_g {loss_g.item():.4f}", flush=True)

    bn_gen = torch.Generator().manual_seed(cfg.seed + 1000)
    recompute_bn(g, (torch.randn(cfg.batch_size, NZ, generator=bn_gen) for _ in range(BN_BATCHES_GAN)))
    losses = {
        "loss_d_last_100": float(np.mean(window_d)),  # BCE, real + fake
        "loss_g_last_100": float(np.mean(window_g)),  # non-saturating BCE
    }
    return g, losses


def export(g: nn.Module, path: Path) -> None:
    """Script the eval-mode generator and save it atomically; check it reproduces the eager module."""
    g.eval()
    for p in g.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(g)
    probe = torch.randn(8, NZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.allclose(scripted(probe), g(probe), atol=1e-6):
            raise RuntimeError("TorchScript export does not match the eager generator")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.jit.save(scripted, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are shared package data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def weights_sha256(g: nn.Module) -> str:
    """Hash of the weights and buffers (the zip container of torch.jit.save is not byte-stable)."""
    h = hashlib.sha256()
    for name, t in g.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def train_one(name: str) -> tuple[dict, dict]:
    cfg = MODELS[name]
    x = load_images(DATA / cfg.train_set)  # [N, 1, 32, 32] in [-1, 1]
    print(f"{name}: {cfg.kind} on {cfg.train_set} ({len(x)} images), {cfg.steps} steps", flush=True)
    t0 = time.perf_counter()
    g, losses = (train_gan if cfg.kind == "gan" else train_glo)(cfg, x)
    seconds = time.perf_counter() - t0
    path = OUT / f"{name}.pt"
    export(g, path)
    entry = {
        "latent": {"shape": [NZ], "prior": PRIORS[cfg.kind]},
        "output_range": [-1, 1],
        "train_set": cfg.train_set,
        "train_size": len(x),
        "kind": cfg.kind,
    }
    record = {
        "config": asdict(cfg),
        "losses": losses,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        # The wall time depends on what else the machine runs; the 5-minute load average at the end says how busy it was.
        "load_avg_5min": round(os.getloadavg()[1], 2),
        "torch": torch.__version__,
        "file_bytes": path.stat().st_size,
        "weights_sha256": weights_sha256(g),
    }
    print(f"{name}: {seconds:.0f} s, {path.stat().st_size} bytes, {losses}", flush=True)
    return entry, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(MODELS), action="append", help="train only this model (repeatable)")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    catalog = read_json(OUT / "models.json")
    records = read_json(OUT / "training.json")
    for name in args.only or list(MODELS):
        entry, record = train_one(name)
        catalog[f"{name}.pt"] = entry
        records[name] = record
        # Written after each model so an interrupted run keeps what it finished.
        write_json(OUT / "models.json", catalog)
        write_json(OUT / "training.json", records)
    if set(records) == set(MODELS):
        card = OUT / "MODEL_CARD.md"
        card.with_name(".MODEL_CARD.md.tmp").write_text(render_card(records, catalog, MODELS))
        os.replace(card.with_name(".MODEL_CARD.md.tmp"), card)
    else:
        print(f"MODEL_CARD.md not written: no record yet for {sorted(set(MODELS) - set(records))}")


if __name__ == "__main__":
    main()
