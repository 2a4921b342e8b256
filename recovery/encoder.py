"""A learned start (3b): an encoder E(x) -> latent, trained on the generator's own samples only.

E is fitted to pairs (z, G(z)) with z drawn from the prior, never to a target, so it favours no split:
train, val and generated images all get E's guess as one more screening candidate of their first start.
For a generated image E's guess is often already in the right basin; for any image it is a start at
least as plausible as a prior draw, and the screening keeps whichever scores better.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .loaded import LoadedGenerator
from .objective import target_shape, to_audit_resolution
from .settings import RecoverySettings

WIDTH = 32  # channels of the first convolution; doubled at each halving, capped at 8x


class Encoder(nn.Module):
    """[B, C, H, W] images at the audit resolution -> [B, D] free variables of the search."""

    def __init__(self, shape: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        width, side = WIDTH, min(h, w)
        for _ in range(max(0, int(math.log2(max(side, 1))) - 2)):  # halve down to about 4x4
            layers += [nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            c, width = width, min(width * 2, WIDTH * 8)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(c * 16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_encoder(generator: LoadedGenerator, *, settings: RecoverySettings, steps: int, seed: int = 0,
                  batch_size: int = 64, lr: float = 1e-3) -> Encoder:
    """Fit E to (z, G(z)) pairs from the prior: latent regression, G in inference only (cheap: no backward through G).

    Deterministic for a given generator, settings, steps and seed (its own torch.Generator; no global seeding).
    """
    latent, device = generator.latent, generator.device
    dim = math.prod(latent.shape)
    shape = target_shape(generator, settings)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the encoder's initial weights, without touching the caller's RNG
        encoder = Encoder(shape, dim).to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    encoder.train()
    for _ in range(steps):
        z = generator.draw(batch_size, gen).to(device)  # [B, *latent]: the searched space's prior (W: mapped draws)
        labels = torch.randint(0, generator.num_classes, (batch_size,), generator=gen).to(device) if generator.num_classes else None
        with torch.no_grad():
            x = to_audit_resolution(generator(z, labels), shape)  # [B, C, H, W]
        loss = (encoder(x) - z.reshape(batch_size, dim)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return encoder.eval().requires_grad_(False)
