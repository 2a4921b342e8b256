"""The DCGAN generator (Radford et al., ICLR 2016), sized by its output resolution.

Kept architecture-compatible with the PyTorch DCGAN example so its checkpoints load:
a latent [nz, 1, 1] goes through a 4x4 transposed convolution, then one
(ConvTranspose 4x4 stride 2, BatchNorm, ReLU) block per doubling, then Tanh.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DCGAN(nn.Module):
    """G: [B, nz, 1, 1] (or [B, nz]) -> [B, nc, size, size] in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, size: int = 64) -> None:
        super().__init__()
        if size < 8 or 2 ** int(round(math.log2(size))) != size:
            raise ValueError(f"DCGAN size must be a power of two >= 8, got {size}")
        doublings = int(math.log2(size)) - 2  # 4x4 -> size x size
        width = ngf * 2 ** (doublings - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(doublings - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.reshape(z.shape[0], self.nz, 1, 1))


BUILTINS = {"dcgan": DCGAN}  # name -> factory(**kwargs) -> nn.Module
