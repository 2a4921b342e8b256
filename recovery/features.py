"""Feature spaces for the companion detectors: pixels, optionally center-cropped, or a user network.

    spec = FeatureSpec(space="pixel", crop=48)
    extractor = FeatureExtractor(spec, net=None, device="cpu")
    feats = extractor(images)          # images [N, C, H, W] in G's output range -> [N, D] float32, on the CPU

Nearest-neighbour figures are usually drawn in pixel space on a center crop (Karras et al. crop faces so the
background does not dominate the distance); perceptual spaces (Inception, SSCD, DINOv2) are the user's own
TorchScript export mapping [N, C, H, W] in G's output range to [N, D]. Nothing is downloaded here: the job
passes the bytes' module in (`load_feature_extractor_net`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import RecoveryError
from .generators import _freeze, _load_scripted, _read_bytes
from .loaded import default_device

SPACES = ("pixel", "net")


@dataclass(frozen=True)
class FeatureSpec:
    """Which feature space the detectors measure distances in.

    space: pixel (the image's values, flattened) | net (a TorchScript network: `net` is its URL).
    net: the network's URL (space: net only).
    crop: side of a center crop taken before flattening or before the network (None: the whole image).
    batch_size: images per forward pass of the network.
    """

    space: str = "pixel"
    net: str | None = None
    crop: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise RecoveryError(f"features.space: {self.space!r} is not one of {', '.join(SPACES)}")
        if self.space == "net" and not self.net:
            raise RecoveryError("features.net: space: net needs a TorchScript network URL")
        if self.space == "pixel" and self.net:
            raise RecoveryError("features.net: only used with space: net (space is pixel)")
        if self.crop is not None and self.crop < 1:
            raise RecoveryError(f"features.crop: must be >= 1, got {self.crop}")
        if self.batch_size < 1:
            raise RecoveryError(f"features.batch_size: must be >= 1, got {self.batch_size}")

    @property
    def name(self) -> str:
        """The space as neighbours.parquet's `space` column names it: pixel, pixel-crop48, net, net-crop224."""
        return self.space + (f"-crop{self.crop}" if self.crop else "")


def load_feature_extractor_net(url: str, *, device: str | torch.device | None = None,
                               storage_options: dict | None = None) -> nn.Module:
    """The user's TorchScript feature network (features.net), frozen and in eval mode."""
    device = torch.device(device) if device is not None else default_device()
    module = _load_scripted(_read_bytes(url, "features.net", storage_options), url, "features.net")
    return _freeze(module, device)


def center_crop(images: torch.Tensor, side: int | None) -> torch.Tensor:
    """The central side x side window of images [N, C, H, W]; raises if the images are smaller."""
    if side is None:
        return images
    h, w = images.shape[-2:]
    if side > h or side > w:
        raise RecoveryError(f"features.crop: {side} is larger than the audit resolution {h}x{w}")
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top:top + side, left:left + side]


class FeatureExtractor:
    """Maps images in G's output range to feature vectors, one space for the whole audit."""

    def __init__(self, spec: FeatureSpec, *, net: nn.Module | None = None, device: str | torch.device | None = None) -> None:
        if (spec.space == "net") != (net is not None):
            raise RecoveryError("features.net: space: net needs the loaded network, and only then")
        self.spec, self.net = spec, net
        self.device = torch.device(device) if device is not None else default_device()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] float32 in G's output range -> [N, D] float32 on the CPU."""
        images = center_crop(images, self.spec.crop)
        if self.net is None:
            return images.reshape(len(images), -1).float().cpu().contiguous()
        out = []
        for chunk in images.split(self.spec.batch_size):
            y = self.net(chunk.to(self.device))
            if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != len(chunk):
                shape = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise RecoveryError(f"features.net: output for a batch of {len(chunk)} images is {shape}; expected [N, D]")
            if not torch.isfinite(y).all():
                raise RecoveryError("features.net: output is not finite (NaN or inf)")
            out.append(y.float().cpu())
        if not out:
            return torch.empty((0, 0))
        return torch.cat(out).contiguous()
