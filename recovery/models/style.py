"""A small style-based generator with StyleGAN2-ADA's interface, the project's own test subject.

Same public surface as NVlabs' `training.networks.Generator`, so the code that audits it audits theirs:

    G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels
    G.mapping(z [B, z_dim], c [B, c_dim]) -> ws [B, num_ws, w_dim]      (G.mapping.w_avg: [w_dim] buffer)
    G.synthesis(ws [B, num_ws, w_dim], noise_mode="const") -> [B, C, H, W]
    per noisy layer: a `noise_const` buffer [H, W] and a `noise_strength` parameter; noise = noise_const * noise_strength

Architecture (Karras et al. 2020, scaled down): an MLP mapping with a 2nd-moment normalized z, then a learned
4x4 constant, one modulated 3x3 convolution (weight demodulation) per layer with a style from its own w,
nearest x2 upsampling before the first convolution of each resolution, per-pixel noise after every
convolution, and one modulated 1x1 to-image layer from the last w; tanh keeps the output in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class MappingNetwork(nn.Module):
    """z [B, z_dim] (and c [B, c_dim] one-hot) -> ws [B, num_ws, w_dim]; tracks w_avg while training."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, layers: int = 4, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        self.embed = nn.Linear(max(c_dim, 1), w_dim)  # unused when c_dim == 0 (kept so the module is scriptable)
        dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * layers
        self.net = nn.Sequential(*[m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.LeakyReLU(0.2))])
        for m in self.net:
            if isinstance(m, nn.Linear):  # He init keeps w at unit scale through the layers (StyleGAN: equalized lr)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))
                nn.init.zeros_(m.bias)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # StyleGAN's normalize_2nd_moment
        if self.c_dim > 0 and c is not None:
            y = self.embed(c.to(z.dtype))
            x = torch.cat([x, y * (y.square().mean(1, keepdim=True) + 1e-8).rsqrt()], 1)
        w = self.net(x)  # [B, w_dim]
        if self.training:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)


def modulated_conv(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """x [B, I, H, W], weight [O, I, k, k], styles [B, I] -> [B, O, H, W]: one grouped convolution, a kernel per image."""
    b, i, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    wt = weight.unsqueeze(0) * styles.reshape(b, 1, i, 1, 1)  # [B, O, I, k, k]
    if demodulate:
        wt = wt * (wt.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    out = F.conv2d(x.reshape(1, b * i, h, w), wt.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    return out.reshape(b, o, h, w)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally after a nearest x2 upsample), noise, bias, LeakyReLU."""

    def __init__(self, w_dim: int, cin: int, cout: int, resolution: int, up: bool) -> None:
        super().__init__()
        self.up, self.resolution = up, resolution
        self.affine = nn.Linear(w_dim, cin)
        nn.init.normal_(self.affine.weight, 0.0, 1.0 / math.sqrt(w_dim))  # styles vary with w by O(1) from the start
        nn.init.ones_(self.affine.bias)  # around 1: the unmodulated convolution
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) / math.sqrt(cin * 9))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = modulated_conv(x, self.weight, self.affine(w), True)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength  # [H, W] (or [B, 1, H, W] when a caller swaps it in)
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)


class ToImage(nn.Module):
    """Modulated 1x1 convolution to the image channels, no demodulation, then tanh."""

    def __init__(self, w_dim: int, cin: int, channels: int) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, cin)
        nn.init.normal_(self.affine.weight, 0.0, 1.0 / math.sqrt(w_dim))
        nn.init.ones_(self.affine.bias)
        self.weight = nn.Parameter(torch.randn(channels, cin, 1, 1) / math.sqrt(cin))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(modulated_conv(x, self.weight, self.affine(w), False) + self.bias.reshape(1, -1, 1, 1))


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> [B, img_channels, img_resolution, img_resolution] in [-1, 1]; one w per layer."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        levels = int(math.log2(img_resolution)) - 1  # 4x4 .. img_resolution
        if 2 ** (levels + 1) != img_resolution or len(channels) != levels:
            raise ValueError(f"need a power-of-two resolution >= 4 and one channel count per level ({levels}), "
                             f"got {img_resolution} and {list(channels)}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.const = nn.Parameter(torch.randn(channels[0], 4, 4))
        layers = [SynthesisLayer(w_dim, channels[0], channels[0], 4, up=False)]
        for level in range(1, levels):
            res = 4 * 2**level
            layers += [SynthesisLayer(w_dim, channels[level - 1], channels[level], res, up=True),
                       SynthesisLayer(w_dim, channels[level], channels[level], res, up=False)]
        self.layers = nn.ModuleList(layers)
        self.to_image = ToImage(w_dim, channels[-1], img_channels)
        self.num_ws = len(layers) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)  # [B, C0, 4, 4]
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode)
        return self.to_image(x, ws[:, -1])


class StyleGenerator(nn.Module):
    """G(z, c) = synthesis(mapping(z, c)); the whole network, as StyleGAN2-ADA's Generator."""

    def __init__(self, z_dim: int = 32, c_dim: int = 0, w_dim: int = 64, img_resolution: int = 32, img_channels: int = 1,
                 channels: tuple[int, ...] = (64, 64, 32, 16), mapping_layers: int = 4) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, tuple(channels))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, layers=mapping_layers)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, c), noise_mode)
