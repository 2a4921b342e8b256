"""Generators that inject faults from the tests (never from production code), loaded as `generator.factory`.

CrashOnce behaves like the tests' tiny generator, except that in any process but the driver's the first
batch larger than the load check's kills that process abruptly (os._exit), as a preempted node would; a
marker file records that it did, so the restarted actor runs normally.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class CrashOnce(nn.Module):
    def __init__(self, marker: str, driver_pid: int, latent: int = 8, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(latent, side * side)
        self.marker, self.driver_pid, self.side = marker, driver_pid, side

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, latent] -> [B, 1, side, side] in [-1, 1]
        if len(z) > 3 and os.getpid() != self.driver_pid and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(f"{os.getpid()}\n")
            os._exit(1)
        return torch.tanh(self.fc(z.reshape(len(z), -1))).reshape(-1, 1, self.side, self.side)


class NanWhenMarked(nn.Module):
    """The tiny generator, except that while `marker` exists every batch larger than the load check's is NaN:
    a generator that worked on the first attempt of a shard and fails on its retry."""

    def __init__(self, marker: str, latent: int = 8, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(latent, side * side)
        self.marker, self.side = marker, side

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, latent] -> [B, 1, side, side]
        x = torch.tanh(self.fc(z.reshape(len(z), -1))).reshape(-1, 1, self.side, self.side)
        return x * float("nan") if len(z) > 3 and os.path.exists(self.marker) else x


class BatchDependent(nn.Module):
    """The tiny generator on the load check's small batches; above `above` images it misbehaves as `fault` says:
    "shape" (a 4x4 image instead of 8x8), "channels" (3 channels instead of 1), "dtype" (float16),
    "range" (outputs scaled to [-3, 3], outside output_range), "inf" (every value infinite) or "raise"."""

    def __init__(self, fault: str, above: int = 3, latent: int = 8, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(latent, side * side)
        self.fault, self.above, self.side = fault, above, side

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, latent] -> [B, 1, side, side] in [-1, 1]
        x = torch.tanh(self.fc(z.reshape(len(z), -1))).reshape(-1, 1, self.side, self.side)
        if len(z) <= self.above:
            return x
        if self.fault == "shape":
            return x[:, :, ::2, ::2]
        if self.fault == "channels":
            return x.expand(-1, 3, -1, -1)
        if self.fault == "dtype":
            return x.half()
        if self.fault == "inf":
            return x * float("inf")
        if self.fault == "raise":
            raise RuntimeError(f"cannot run a batch of {len(z)}")
        return 3 * x


class HangAbove(nn.Module):
    """The tiny generator on the load check's small batches; a batch larger than `above` never returns
    (it sleeps in its forward pass), as a deadlocked custom kernel or a stuck collective would."""

    def __init__(self, above: int = 3, latent: int = 8, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(latent, side * side)
        self.above, self.side = above, side

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        while len(z) > self.above:
            time.sleep(1)
        return torch.tanh(self.fc(z.reshape(len(z), -1))).reshape(-1, 1, self.side, self.side)
