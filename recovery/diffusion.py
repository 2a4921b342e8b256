"""Diffusion models as generators: a diffusers `UNet2DModel` and its noise schedule, G(z) = deterministic DDIM.

    g = load_diffusion(GeneratorSpec(diffusers="s3://bucket/ddpm-faces/"), device="cpu")
    images = g(z)                        # z [B, C, H, W] ~ N(0, I) -> [B, C, H, W] in [-1, 1]

A folder written by diffusers' `save_pretrained`: a pipeline's (`unet/` and `scheduler/`, as
`DDPMPipeline.save_pretrained` writes it) or a bare model's (`config.json` and the weights, with the
scheduler's `scheduler_config.json` beside them). A remote folder (any fsspec URL) is copied to a local
temporary folder first and loaded from there with `local_files_only=True`: nothing is downloaded from a hub.

Why a DDIM sampler is the generator: with eta = 0 DDIM (Song et al., ICLR 2021) is a deterministic map from the
noise x_T to an image, and it can be run backwards (DDIM inversion), so a diffusion model gets what latent
recovery needs: a latent per image (its inverted noise, stored as the results' `latent`), a generated split
sampled from seeded noise whose images should invert back to themselves, and recoveries rendered from stored
latents with G itself. The UNet is never differentiated: the statistics (recovery/diffusion_stats.py) are
forward passes only.

`diffusers` is an optional dependency (the `diffusion` extra), imported only when such a model is loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import fsspec
import torch
from torch import nn

from .errors import RecoveryError
from .loaded import LoadedGenerator
from .settings import GeneratorSpec, LatentSpec

EXTRA = "generator.diffusers needs the 'diffusion' extra: pip install memaudit[diffusion]"
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _diffusers():
    """The diffusers package, or the one-line error a user without the extra sees."""
    try:
        import diffusers
    except ImportError as exc:
        raise RecoveryError(EXTRA) from exc
    return diffusers


class DDIM(nn.Module):
    """A UNet's epsilon, the schedule's alpha-bar, and deterministic DDIM over `steps` evenly spaced timesteps.

    forward(z) samples from noise z = x_T at the last of `timesteps`; invert(x0) runs the same steps backwards.
    Both clamp nothing in between, so invert and forward are inverses up to DDIM's first-order approximation.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, steps: int, prediction: str) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alpha_bar", alphas_cumprod.float().clone())  # [T]
        t_max = len(alphas_cumprod)
        if steps > t_max:
            raise RecoveryError(f"generator.diffusion.steps: {steps} is more than the model's {t_max} timesteps")
        # "leading" spacing (diffusers' DDIM default): 0, k, 2k, ... (k = T // steps), the last one < T
        self.timesteps = [i * (t_max // steps) for i in range(steps)]
        self.prediction = prediction
        self.conditional = bool(getattr(unet.config, "num_class_embeds", None))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alpha_bar)

    def eps(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t): x [B, C, H, W], t [B] int64 (or a scalar) -> [B, C, H, W], whatever the model predicts."""
        t = t.expand(len(x)) if t.dim() == 0 else t
        out = self.unet(x, t, class_labels=labels).sample
        if self.prediction == "epsilon":
            return out
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        if self.prediction == "sample":  # x_t = sqrt(a) x0 + sqrt(1 - a) eps
            return (x - a.sqrt() * out) / (1 - a).sqrt()
        return a.sqrt() * out + (1 - a).sqrt() * x  # v = sqrt(a) eps - sqrt(1 - a) x0

    def _step(self, x: torch.Tensor, t_from: int, t_to: int | None, labels, eps_at: int) -> torch.Tensor:
        """One DDIM step from alpha-bar(t_from) to alpha-bar(t_to) (None: 1, the clean image), eps taken at eps_at."""
        a_from = self.alpha_bar[t_from] if t_from is not None else self.alpha_bar.new_tensor(1.0)
        a_to = self.alpha_bar[t_to] if t_to is not None else self.alpha_bar.new_tensor(1.0)
        eps = self.eps(x, torch.tensor(eps_at, device=x.device), labels)
        x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        # z: [B, C, H, W] noise at the last timestep; c: [B] class indices or [B, K] one-hot -> [B, C, H, W] x0
        labels = self._labels(c)
        x, ts = z, self.timesteps
        for i in range(len(ts) - 1, -1, -1):
            x = self._step(x, ts[i], ts[i - 1] if i else None, labels, ts[i])
        return x.clamp(-1, 1)

    def invert(self, x0: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM inversion: x0 [B, C, H, W] -> the noise at the last timestep that forward() maps back to about x0."""
        labels = self._labels(c)
        x, ts = x0, self.timesteps
        for i, t in enumerate(ts):
            x = self._step(x, ts[i - 1] if i else None, t, labels, t)  # eps at the target step (the usual approximation)
        return x

    def _labels(self, c: torch.Tensor | None) -> torch.Tensor | None:
        if c is None:
            return None
        return c.argmax(1) if c.dim() == 2 else c.long()


def local_folder(url: str, storage_options: dict | None, scratch: str) -> Path:
    """The folder at url as a local path: itself when local, else a copy under scratch (fsspec get, recursive)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        if not os.path.isdir(path):
            raise RecoveryError(f"generator.diffusers: {url} is not a folder (a diffusers save_pretrained folder)")
        return Path(path)
    try:
        if not fs.isdir(path):
            raise RecoveryError(f"generator.diffusers: {url} is not a folder (a diffusers save_pretrained folder)")
        fs.get(path.rstrip("/") + "/", scratch.rstrip("/") + "/", recursive=True)
    except RecoveryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store error, named with the URL
        raise RecoveryError(f"generator.diffusers: cannot read {url}: {type(exc).__name__}: {exc}") from exc
    return Path(scratch)


def _layout(root: Path, url: str) -> tuple[Path, Path]:
    """(unet folder, scheduler folder) of a pipeline folder or a bare model's."""
    if (root / "unet" / "config.json").is_file():
        return root / "unet", root / "scheduler"
    if (root / "config.json").is_file():
        return root, root
    raise RecoveryError(f"generator.diffusers: {url} has neither unet/config.json (a pipeline's save_pretrained) nor "
                        "config.json (a UNet2DModel's): not a diffusers folder")


def _schedule(folder: Path, url: str) -> tuple[torch.Tensor, str]:
    """alpha-bar [T] and the prediction type from the scheduler's config (any diffusers scheduler class)."""
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise RecoveryError(f"generator.diffusers: {url} has no {path.relative_to(folder.parent)}; save the scheduler "
                            "with the UNet (pipeline.save_pretrained, or scheduler.save_pretrained into the same folder)")
    try:
        config = json.loads(path.read_text())
        config.pop("_class_name", None)
        scheduler = _diffusers().DDIMScheduler.from_config(config)
    except RecoveryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RecoveryError(f"generator.diffusers: bad scheduler config in {url}: {type(exc).__name__}: {exc}") from exc
    prediction = scheduler.config.prediction_type
    if prediction not in PREDICTIONS:
        raise RecoveryError(f"generator.diffusers: prediction_type {prediction!r} in {url} is not one of {', '.join(PREDICTIONS)}")
    return scheduler.alphas_cumprod.clone(), prediction


def load_diffusion(spec: GeneratorSpec, *, device: torch.device, storage_options: dict | None = None) -> LoadedGenerator:
    """Load the folder spec.diffusers names and check it with one denoising step; every problem a RecoveryError."""
    diffusers = _diffusers()
    if spec.latent is not None or spec.checkpoint or spec.kwargs:
        raise RecoveryError("generator: a diffusers model takes no latent, checkpoint or kwargs (its noise is its latent)")
    url = spec.diffusers
    with tempfile.TemporaryDirectory(prefix="memaudit-diffusers-") as scratch:
        root = local_folder(url, storage_options, scratch)
        unet_dir, scheduler_dir = _layout(root, url)
        alpha_bar, prediction = _schedule(scheduler_dir, url)
        try:
            unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True,
                                                          low_cpu_mem_usage=False)
        except Exception as exc:  # noqa: BLE001 - a garbled or foreign folder, named
            raise RecoveryError(f"generator.diffusers: cannot load a UNet2DModel from {url}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    unet = unet.to(device).eval().requires_grad_(False)
    module = DDIM(unet, alpha_bar, spec.diffusion.steps, prediction).to(device)
    classes = int(getattr(unet.config, "num_class_embeds", None) or 0)
    if classes and (spec.classes is None or len(spec.classes.names) != classes):
        raise RecoveryError(f"generator.classes: {url} is class-conditional with {classes} classes; name them in "
                            "generator.classes.names")
    c, size = int(unet.config.in_channels), unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if int(unet.config.out_channels) != c:
        raise RecoveryError(f"generator.diffusers: {url}: out_channels {unet.config.out_channels} != in_channels {c}")
    if max(spec.diffusion.timesteps) >= module.num_train_timesteps:
        raise RecoveryError(f"generator.diffusion.timesteps: {max(spec.diffusion.timesteps)} is not below the model's "
                            f"{module.num_train_timesteps} timesteps")
    spec = replace(spec, latent=None)
    g = LoadedGenerator(module, spec, (c, h, w), device, search_latent=LatentSpec((c, h, w), "normal"))
    _check_step(g, url)
    return g


@torch.no_grad()
def _check_step(g: LoadedGenerator, url: str) -> None:
    """One denoising step on two seeded noises: the output has the input's shape and is finite."""
    module: DDIM = g.module
    x = torch.randn((2, *g.output_shape), generator=torch.Generator().manual_seed(0)).to(g.device)  # [2, C, H, W]
    labels = torch.zeros(2, dtype=torch.long, device=g.device) if module.conditional else None
    try:
        eps = module.eps(x, torch.tensor(module.timesteps[-1], device=g.device), labels)
    except Exception as exc:  # noqa: BLE001
        raise RecoveryError(f"generator.diffusers: {url}: a denoising step failed: {type(exc).__name__}: {exc}") from exc
    if tuple(eps.shape) != tuple(x.shape):
        raise RecoveryError(f"generator.diffusers: {url}: the UNet maps {list(x.shape)} to {list(eps.shape)}")
    if not torch.isfinite(eps).all():
        raise RecoveryError(f"generator.diffusers: {url}: a denoising step gave non-finite values")


def is_diffusion(generator: LoadedGenerator) -> bool:
    """Whether generator was loaded from a diffusers folder (its audit is recovery.diffusion_stats, not recover)."""
    return isinstance(generator.module, DDIM)
