"""The objective loss(A(G(z)), A(x)) per image: audit resolution, operators A and losses, each a small registry.

Everything here is per image ([B] out for [B] in) and has no cross-batch terms, which is what lets
every image run its own optimizer inside a shared batch.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .batching import check_batch_output, single_dtype
from .device_targets import DeviceTargets
from .errors import RecoveryError
from .loaded import LoadedGenerator
from .settings import OperatorSpec, RecoverySettings


def target_shape(generator: LoadedGenerator, settings: RecoverySettings) -> tuple[int, int, int]:
    """(C, H, W) of targets: G's output, or G's output scaled so its shorter side is settings.resolution."""
    c, h, w = generator.output_shape
    if settings.resolution is None or settings.resolution == min(h, w):
        return c, h, w
    if settings.resolution > min(h, w):
        raise RecoveryError(
            f"recovery.resolution: {settings.resolution} is larger than the generator's output {w}x{h}; "
            "audit at or below the generator's resolution"
        )
    s = settings.resolution / min(h, w)
    return c, max(1, round(h * s)), max(1, round(w * s))


def to_audit_resolution(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool G(z) [B, C, H, W] down to the audit shape when that is smaller (DESIGN.md §1)."""
    if tuple(x.shape[-2:]) == shape[1:]:
        return x
    return F.adaptive_avg_pool2d(x, shape[1:])


class Operator(nn.Module):
    """A: image [B, C, H, W] -> image-shaped [B, C, H', W']; `count` elements per image enter the pixel losses."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], count: int) -> None:
        super().__init__()
        self.fn, self.count = fn, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _identity(spec: OperatorSpec, shape: tuple[int, int, int], device: torch.device) -> Operator:
    return Operator(lambda x: x, math.prod(shape))


def _mask(spec: OperatorSpec, shape: tuple[int, int, int], device: torch.device) -> Operator:
    c, h, w = shape
    mask = torch.zeros((h, w), dtype=torch.bool)
    for i, (top, left, bh, bw) in enumerate(spec.boxes):
        if top + bh > h or left + bw > w:
            raise RecoveryError(
                f"recovery.operator.boxes[{i}]: box [{top}, {left}, {bh}, {bw}] reaches past the audit image {w}x{h}"
            )
        mask[top : top + bh, left : left + bw] = True
    m = mask.to(device=device, dtype=torch.float32)
    return Operator(lambda x: x * m, c * int(mask.sum()))  # zero outside, so only masked pixels differ


def _pool(spec: OperatorSpec, shape: tuple[int, int, int], device: torch.device) -> Operator:
    c, h, w = shape
    k = int(spec.factor)
    if k > min(h, w):
        raise RecoveryError(f"recovery.operator.factor: {k} is larger than the audit image {w}x{h}")
    return Operator(lambda x: F.avg_pool2d(x, k), c * (h // k) * (w // k))


OPERATORS: dict[str, Callable[[OperatorSpec, tuple[int, int, int], torch.device], Operator]] = {
    "identity": _identity,
    "mask": _mask,
    "pool": _pool,
}


def build_operator(spec: OperatorSpec, shape: tuple[int, int, int], device: torch.device) -> Operator:
    return OPERATORS[spec.kind](spec, shape, device)


def squared_error(a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
    """Per-image mean squared error over the `count` elements the operator keeps, [B]."""
    return (a - b).square().flatten(1).sum(1, dtype=torch.float64).float() / count  # float64 sum: no order noise


def absolute_error(a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
    return (a - b).abs().flatten(1).sum(1, dtype=torch.float64).float() / count


def psnr(mse: torch.Tensor, output_range: tuple[float, float]) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for the generator's value range."""
    lo, hi = output_range
    return 10 * torch.log10((hi - lo) ** 2 / mse.clamp_min(1e-30))


class Objective:
    """loss(A(pool(G(z))), A(x)) per image, with the operator's view of every target computed once."""

    def __init__(
        self,
        generator: LoadedGenerator,
        targets: torch.Tensor,  # [N, C, H, W] float32 in generator.spec.output_range
        settings: RecoverySettings,
        feature_net: nn.Module | None = None,
        labels: torch.Tensor | None = None,  # [N] int64 class per target (conditional generators)
    ) -> None:
        self.generator, self.settings = generator, settings
        self.labels = labels.to(generator.device) if labels is not None else None
        self.shape = target_shape(generator, settings)
        if tuple(targets.shape[1:]) != self.shape:
            raise RecoveryError(f"targets have shape {list(targets.shape[1:])}; the audit shape for this generator is {list(self.shape)}")
        if settings.loss == "features" and feature_net is None:
            raise RecoveryError("recovery.loss: 'features' needs a feature network (recovery.feature_net)")
        device = generator.device
        self.op = build_operator(settings.operator, self.shape, device)
        self.feature_net = feature_net
        self.dtype = single_dtype(generator)  # every batch's output must have it (and the load check's shape)
        step = max(1, settings.batch_size)
        views, features = [], []
        with torch.no_grad():  # A(x) (and its features) batch by batch, kept on the host
            for j in range(0, len(targets), step):
                view = self.op(targets[j:j + step].to(device))  # [b, C, H', W']
                views.append(view.cpu())
                if settings.loss == "features":
                    features.append(self._features(view).cpu())
        host = torch.cat(views) if views else torch.empty((0, *self.shape))
        self.targets = DeviceTargets(host, device, step)  # [N, C, H', W'] A(x): on the device a batch at a time
        self.target_features = (DeviceTargets(torch.cat(features) if features else torch.empty(0, 0), device, step)
                                if settings.loss == "features" else None)

    def _features(self, a: torch.Tensor) -> torch.Tensor:
        return self.feature_net(a).flatten(1)

    def images(self, z: torch.Tensor, index: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """G(z) (G(z, c) with the targets' classes, or `labels` [B] when given) at the audit resolution, [B, C, H, W]."""
        if labels is None and self.labels is not None:
            labels = self.labels[index]
        x = check_batch_output(self.generator, self.generator(z, labels), self.dtype)  # [B, C, H, W] as at load
        return to_audit_resolution(x, self.shape)

    def __call__(self, z: torch.Tensor, index: torch.Tensor,
                 labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, mse, mae), each [B], of latents z [B, *latent] against targets[index]; the loss includes the
        generator's own regularizer (optimized noise maps), the reported mse and mae do not. labels [B]: the
        classes to render with instead of the targets' own (a class search screens several per target)."""
        a, b = self.op(self.images(z, index, labels)), self.targets[index]
        count = self.op.count
        mse = squared_error(a, b, count)
        mae = absolute_error(a, b, count)
        loss = LOSSES[self.settings.loss](self, a, index, mse, mae)
        extra = self.generator.penalty(z)
        if extra is not None:
            loss = loss + extra
        return loss, mse.detach(), mae.detach()


def _feature_distance(objective: Objective, a: torch.Tensor, index: torch.Tensor, mse, mae) -> torch.Tensor:
    """Mean squared distance between feature maps of A(G(z)) and A(x), [B]."""
    return (objective._features(a) - objective.target_features[index]).square().mean(1)


# recovery.loss -> loss(objective, A(G(z)) [B, C, H', W'], target index [B], mse [B], mae [B]) -> [B]
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": lambda objective, a, index, mse, mae: mse,
    "mae": lambda objective, a, index, mse, mae: mae,
    "features": _feature_distance,
}
