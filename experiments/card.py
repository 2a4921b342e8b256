"""The bundled models' card, jobs/assets/models/MODEL_CARD.md: the digits models' card rendered whole (render_card),
and a marked section of it replaced in place by the other training scripts (update_section)."""

from __future__ import annotations

import os
from pathlib import Path

CARD = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "models" / "MODEL_CARD.md"


def update_section(begin: str, end: str, section: str) -> None:
    """Replace the text between the markers begin and end (inclusive) with section, or append it."""
    text = CARD.read_text() if CARD.exists() else ""
    body = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body + "\n"
    tmp = CARD.with_name(".MODEL_CARD.md.tmp")
    tmp.write_text(text)
    os.replace(tmp, CARD)


def render_card(records: dict, catalog: dict, models: dict) -> str:
    """The whole card of the digits models: `records` from training, `catalog` models.json, `models` their configs."""
    lines = [
        "# Bundled demo generators",
        "",
        "Small generators trained on CPU on the bundled digits data (`jobs/assets/digits/`,",
        "scikit-learn's `digits` upsampled to 32x32) by `experiments/train_models.py`, so an audit can",
        "show the memorization it should find (GLO on few images) and the silence it should keep",
        "(a pure GAN). Rebuild with `python experiments/make_digits.py && python experiments/train_models.py`.",
        "This file is generated from `training.json`; do not edit it by hand.",
        "",
        "All four share one architecture: `recovery.models.dcgan.DCGAN(nz=32, ngf=32, nc=1, size=32)`,",
        "saved as TorchScript in eval mode (`torch.jit.load(path)(z)`), mapping a latent batch",
        "`[B, 32]` float32 to `[B, 1, 32, 32]` float32 in `[-1, 1]` (tanh output; grayscale, black",
        "background = -1). Batch-norm statistics were recomputed after training (GLO: over its training",
        "latents; DCGAN: over N(0, I) latents).",
        "",
        "Training times are wall-clock seconds on a shared 2-core machine and vary with its load",
        "(the same GLO-64 run took 17 s to 231 s); the weights do not (same sha256 on every rerun).",
        "",
    ]
    for name in [n for n in models if n in records]:  # training order: dcgan, glo-64, glo-256, glo-1200
        r, c = records[name], catalog[f"{name}.pt"]
        cfg = r["config"]
        lines += [f"## {name}.pt", ""]
        if c["kind"] == "gan":
            lines.append(
                "DCGAN (Radford et al. 2016), non-saturating GAN loss, discriminator "
                "conv 32-64-128 with BN and LeakyReLU(0.2)."
            )
        else:
            lines.append(
                "GLO (Bojanowski et al. 2018): one learnable latent per training image, re-projected "
                "onto the unit sphere after every step; loss MSE + 0.1 L1."
            )
        lr = f"Adam lr {cfg['lr_net']:g}" + (f" (latents {cfg['lr_latent']:g})" if c["kind"] == "glo" else "")
        lines += [
            "",
            "| field | value |",
            "|---|---|",
            f"| data | `jobs/assets/digits/{c['train_set']}` |",
            f"| training-set size | {c['train_size']} |",
            f"| steps | {cfg['steps']} (batch {cfg['batch_size']}, {lr}, betas {tuple(cfg['betas'])}) |",
            f"| seed | {cfg['seed']} |",
        ]
        for key, value in r["losses"].items():
            lines.append(f"| final `{key}` | {value:.4f} |")
        lines += [
            f"| training time | {r['seconds']:.0f} s ({r['threads']} CPU threads, machine load average"
            f" {r['load_avg_5min']:.1f}, torch {r['torch']}) |",
            f"| file size | {r['file_bytes']} bytes |",
            f"| weights sha256 | `{r['weights_sha256'][:16]}...` |",
            f"| latent | shape {c['latent']['shape']}, prior `{c['latent']['prior']}`"
            + (" (N(0, I))" if c["latent"]["prior"] == "normal" else " (uniform on the unit sphere)")
            + " |",
            f"| output range | {c['output_range']} |",
            "",
        ]
    lines += [
        "## Loss keys",
        "",
        "- `loss_d_last_100`, `loss_g_last_100`: mean discriminator (real + fake BCE) and generator",
        "  (non-saturating BCE) losses over the last 100 steps.",
        "- `train_loss_last_epoch`: mean GLO loss (MSE + 0.1 L1, train-mode batch norm) over the last epoch",
        "  of steps.",
        "- `eval_mse_train_latents`, `eval_loss_train_latents`: the exported (eval-mode) generator's",
        "  per-pixel MSE and loss on the training images from their learned latents.",
        "",
    ]
    return "\n".join(lines)
