"""A loaded generator: the frozen module on its device with what the search needs to call it.

Kept apart from the loaders (recovery.generators, recovery.diffusion), which both build one, so that neither
loader imports the other's module to name the type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RecoveryError
from .priors import sample_prior
from .settings import GeneratorSpec, LatentSpec
from .style import StyleForward


def default_device() -> torch.device:
    """CUDA when present (GPU clusters), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedGenerator:
    """A frozen generator in eval mode on one device, with its latent spec and measured output shape.

    For a style-based generator `module` is a StyleForward and `latent` is the searched space's (W: mapped prior);
    `anchor` [D] is the search's extra first candidate (w_avg in W / W+). A conditional generator takes class
    indices [B] (int64) as its second argument, encoded here as spec.classes says.
    """

    module: nn.Module
    spec: GeneratorSpec
    output_shape: tuple[int, int, int]  # (C, H, W)
    device: torch.device
    search_latent: LatentSpec | None = None
    anchor: torch.Tensor | None = None  # [D] float32 on the CPU
    channels_last: bool = False  # its convolutions run channels-last (generator.memory_format)

    @property
    def latent(self) -> LatentSpec:
        return self.search_latent or self.spec.latent

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes.names) if self.spec.classes else 0

    @property
    def space(self) -> str:
        return self.module.space if isinstance(self.module, StyleForward) else "z"

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices [B] int64 -> what G takes: one-hot [B, K] float32, or the indices themselves."""
        if self.spec.classes.encoding == "index":
            return labels.long()
        return F.one_hot(labels.long(), self.num_classes).float()

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # z: [B, *latent.shape], labels: [B] int64 class indices (conditional only) -> [B, C, H, W] in spec.output_range
        if not self.num_classes:
            return self.module(z) if labels is None else _unconditional(self)
        if labels is None:
            raise RecoveryError("generator.classes: a conditional generator needs a class per image")
        c = self.encode(labels.to(z.device))
        return self.module(z, c)

    def draw(self, n: int, gen: torch.Generator, label: int | None = None) -> torch.Tensor:
        """n prior draws in the searched space, [n, *latent.shape] on the CPU: z from the prior, or w = mapping(z, c)."""
        if self.latent.prior != "mapped":
            return sample_prior(self.latent, n, gen)
        f: StyleForward = self.module
        z = torch.randn(n, f.shape.z_dim, generator=gen).to(self.device)
        c = self.encode(torch.full((n,), label or 0, dtype=torch.long, device=self.device)) if self.num_classes else None
        with torch.no_grad():
            ws = f.mapping(z, c)
            ws = ws if ws.dim() == 3 else ws.unsqueeze(1).expand(n, f.shape.num_ws, f.shape.w_dim)
            head = ws[:, 0] if f.space == "w" else ws
        return torch.cat([head.reshape(n, -1).float().cpu(), self._noise_start(n)], 1).reshape(n, *self.latent.shape)

    def _noise_start(self, n: int) -> torch.Tensor:
        """The optimized noise maps' start, [n, sum H*W]: the module's own constant maps (empty without noise: optimize)."""
        layers = self.module.noise_layers if isinstance(self.module, StyleForward) else []
        if not layers:
            return torch.empty(n, 0)
        return torch.cat([layer.noise_const.detach().float().cpu().reshape(1, -1) for layer in layers], 1).expand(n, -1)

    def penalty(self, z: torch.Tensor) -> torch.Tensor | None:
        """The optimized noise maps' regularizer times noise_penalty, [B]; None when nothing but the latent is searched."""
        if isinstance(self.module, StyleForward) and self.module.noise_layers and self.spec.noise_penalty:
            return self.spec.noise_penalty * self.module.penalty(z)
        return None


def _unconditional(g: LoadedGenerator):
    raise RecoveryError("labels given for an unconditional generator (no generator.classes); a label column needs a conditional G(z, c)")
