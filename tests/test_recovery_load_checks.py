"""The load check keeps a generator's own error text, refuses non-float output and warns on a wrong
output_range."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from recovery import GeneratorSpec, LatentSpec, RecoveryError, load_generator


class Raising(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] > 0:
            raise RuntimeError("weights for layer 'to_rgb' were never loaded")
        return z


class IntOutput(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z.reshape(z.shape[0], 1, 2, 2) > 0).long()  # [N, 1, 2, 2] int64


class UnitRange(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z.reshape(z.shape[0], 1, 2, 2))  # [N, 1, 2, 2] in [0, 1]


def _spec(tmp_path, module: nn.Module, output_range=(-1.0, 1.0)) -> GeneratorSpec:
    path = tmp_path / "g.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return GeneratorSpec(torchscript=str(path), latent=LatentSpec((4,), "normal"), output_range=output_range)


def test_a_torchscript_generators_own_error_is_kept(tmp_path):
    with pytest.raises(RecoveryError, match="weights for layer 'to_rgb' were never loaded") as info:
        load_generator(_spec(tmp_path, Raising()), device="cpu")
    assert "TorchScript interpreter" not in str(info.value)


def test_integer_output_is_refused_at_load(tmp_path):
    with pytest.raises(RecoveryError, match="output dtype is torch.int64"):
        load_generator(_spec(tmp_path, IntOutput()), device="cpu")


def test_output_far_inside_the_declared_range_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="memaudit.recovery"):
        load_generator(_spec(tmp_path, UnitRange(), output_range=(0.0, 255.0)), device="cpu")
    assert any("is output_range right?" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memaudit.recovery"):
        load_generator(_spec(tmp_path, UnitRange(), output_range=(0.0, 1.0)), device="cpu")
    assert not any("output_range" in r.getMessage() for r in caplog.records)
