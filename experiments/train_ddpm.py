"""Train memaudit's two diffusion test subjects: tiny DDPMs on the bundled digits, on CPU.

Run from the repository root (after `python experiments/make_digits.py`):

    python experiments/train_ddpm.py                  # both models, a few minutes each on 2 cores
    python experiments/train_ddpm.py --only ddpm-64   # one model; the other's folder is kept
    python experiments/train_ddpm.py --only ddpm-64 --checkpoints /tmp/ddpm-64-steps --every 250
                                                      # also a save_pretrained folder every 250 steps,
                                                      # step-000250/ ...: a glob of them is a sweep

Writes, under jobs/assets/models/:

    ddpm-64/  ddpm-1200/   diffusers `DDPMPipeline.save_pretrained` folders: `unet/` (a
                           `UNet2DModel`, config.json + safetensors weights) and `scheduler/`
                           (a `DDPMScheduler` config), plus `model_index.json`
                           and `training.json` (seed, steps, final loss, seconds, folder size: the record)

The pair mirrors GLO-64 / GLO-1200 (the paper's Table 1 pattern): the same UNet trained for the
same number of steps on the first 64 training digits (about 2000 epochs: it memorizes them, and
its samples are copies of them) and on all 1200 (about 100 epochs: it does not). Both use the
split of `experiments/make_digits.py`; val.parquet is never seen.

Images are the audit's own targets: each 32x32 PNG goes through `recovery.to_target` at
16x16, so the model is trained on exactly the tensors the audit later compares with.

Reproducible: fixed seeds for initialization, noise and data order, and deterministic
algorithms on 1 CPU thread per model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the repo's recovery package

from recovery.images import to_target  # noqa: E402

DATA = ROOT / "jobs" / "assets" / "digits"
OUT = ROOT / "jobs" / "assets" / "models"
SIZE = 16  # the digits are 8x8 at source; 16x16 keeps every stroke and keeps the UNet tiny
TIMESTEPS = 1000  # DDPM's standard schedule (Ho et al. 2020): linear betas 1e-4 .. 0.02


@dataclass(frozen=True)
class DDPMConfig:
    """One test subject: what it is trained on and how long."""

    train_set: str  # file under jobs/assets/digits/
    steps: int
    batch_size: int
    seed: int
    lr: float


MODELS: dict[str, DDPMConfig] = {
    "ddpm-64": DDPMConfig("train-64.parquet", steps=2000, batch_size=64, seed=11, lr=1e-3),
    "ddpm-1200": DDPMConfig("train.parquet", steps=2000, batch_size=64, seed=12, lr=1e-3),
}


def load_images(path: Path) -> torch.Tensor:
    """Parquet `image` column -> [N, 1, SIZE, SIZE] float32 in [-1, 1], exactly as the audit sees it."""
    column = pq.read_table(path, columns=["image"]).column("image").to_pylist()
    return torch.stack([to_target(b, shape=(1, SIZE, SIZE)) for b in column])


def build(seed: int):
    """A fresh tiny UNet (about 0.65 M parameters, 2.6 MB) and its DDPM scheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=SIZE,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=TIMESTEPS, beta_schedule="linear", clip_sample=True)
    return unet, scheduler


def train(name: str, cfg: DDPMConfig, out: Path = OUT, checkpoints: Path | None = None, every: int = 0) -> dict:
    """The epsilon-prediction objective of Ho et al.: ||eps - eps_theta(sqrt(a_t) x + sqrt(1 - a_t) eps, t)||^2."""
    x = load_images(DATA / cfg.train_set)  # [N, 1, 16, 16]
    n = len(x)
    unet, scheduler = build(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    unet.train()
    started, window = time.time(), []
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + min(cfg.batch_size, n)]
        pos += len(idx)
        x0 = x[idx]  # [B, 1, 16, 16]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, TIMESTEPS, (len(idx),), generator=gen)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window = (window + [loss.item()])[-100:]
        if checkpoints is not None and every and (step + 1) % every == 0:
            save(unet, scheduler, checkpoints / f"step-{step + 1:06d}")
            unet.train()
        if step % 100 == 0 or step == cfg.steps - 1:
            print(f"{name} step {step:5d}  loss {sum(window) / len(window):.4f}  {time.time() - started:.0f}s", flush=True)
    folder = out / name
    save(unet, scheduler, folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())  # before training.json
    return {
        "config": asdict(cfg),
        "train_size": n,
        "resolution": SIZE,
        "loss_last_100": sum(window) / len(window),
        "seconds": round(time.time() - started),
        "folder_bytes": size,
        "torch": torch.__version__,
    }


def save(unet, scheduler, folder: Path) -> None:
    """The UNet (in eval mode) and its scheduler as a diffusers pipeline folder, readable by everyone."""
    from diffusers import DDPMPipeline

    unet.eval()
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600 files; these are shared package data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(MODELS), action="append", help="train only these")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: reproducible weights)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the model folders go")
    parser.add_argument("--checkpoints", type=Path, help="also save a folder every --every steps under this folder")
    parser.add_argument("--every", type=int, default=250, help="steps between --checkpoints folders")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    for name in args.only or sorted(MODELS):
        record = train(name, MODELS[name], args.out, args.checkpoints / name if args.checkpoints else None, args.every)
        (args.out / name / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(f"{name}: {record}", flush=True)


if __name__ == "__main__":
    main()
