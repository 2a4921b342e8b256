"""generator.memory_format: channels-last convolutions on the CPU only where they give the same images.

A generator written for the plain layout (a `.view` of a conv activation, a layer reading NCHW strides)
must still load and give its own images under "auto"; an explicit "channels_last" that cannot hold is an
error naming the field.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recovery import GeneratorSpec, LatentSpec, RecoveryError, RecoverySettings, load_generator, recover, sample_generated
from recovery.memory_format import wants_channels_last


class ConvG(nn.Module):
    """z [N, 8] -> [N, 1, 8, 8]: a linear stem and two convolutions, fine in either layout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 4 * 4 * 4)
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
        self.out = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z).reshape(z.shape[0], 4, 4, 4)
        return torch.tanh(self.out(torch.relu(self.up(x))))


class ViewsActivation(ConvG):
    """Flattens a conv activation with .view, which a channels-last activation cannot take."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.up(self.stem(z).reshape(z.shape[0], 4, 4, 4))  # [N, 4, 8, 8]
        flat = x.view(z.shape[0], -1)
        return torch.tanh(self.out(flat.view(z.shape[0], 4, 8, 8)))


class ReadsStrides(ConvG):
    """Reads its activation's memory as if it were NCHW: in channels-last it would mix the channels."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.up(self.stem(z).reshape(z.shape[0], 4, 4, 4))  # [N, 4, 8, 8]
        n = z.shape[0]
        x = x.as_strided((n, 4, 8, 8), (256, 64, 8, 1))
        return torch.tanh(self.out(x))


def _spec(tmp_path, module: nn.Module, memory_format: str = "auto") -> GeneratorSpec:
    torch.manual_seed(0)
    path = tmp_path / f"{type(module).__name__}.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return GeneratorSpec(torchscript=str(path), latent=LatentSpec((8,), "normal"), memory_format=memory_format)


def _channels_last(g) -> bool:
    """Whether the loaded generator's conv weights are channels-last, as its `channels_last` flag also says."""
    convs = [p for p in g.module.parameters() if p.dim() == 4]
    nhwc = bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    assert g.channels_last == nhwc
    return nhwc


def test_auto_runs_convolutions_channels_last_on_a_cpu_with_the_same_images_and_recoveries(tmp_path):
    torch.manual_seed(0)
    module = ConvG()
    auto = load_generator(_spec(tmp_path, module), device="cpu")
    plain = load_generator(_spec(tmp_path, module, "contiguous"), device="cpu")
    assert _channels_last(auto) and not _channels_last(plain)
    z = torch.randn(5, 8)
    torch.testing.assert_close(auto(z), plain(z), rtol=1e-4, atol=1e-5)
    ids = [f"g{i}" for i in range(4)]
    _, x = sample_generated(plain, ids, seed=3)  # [4, 1, 8, 8]
    settings = RecoverySettings(budget=300, seed=1)
    a, p = recover(auto, x, ids, settings=settings), recover(plain, x, ids, settings=settings)
    assert (a.column("mse").to_numpy() < 1e-3).all() and (p.column("mse").to_numpy() < 1e-3).all()


@pytest.mark.parametrize("module", [ViewsActivation(), ReadsStrides()], ids=["view", "strides"])
def test_auto_keeps_the_plain_layout_for_a_generator_that_needs_it(tmp_path, module):
    g = load_generator(_spec(tmp_path, module), device="cpu")
    assert not _channels_last(g)
    z = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(g(z), module.eval()(z))  # its own images, not a channels-last misreading


@pytest.mark.parametrize("module", [ViewsActivation(), ReadsStrides()], ids=["view", "strides"])
def test_an_explicit_channels_last_that_cannot_hold_is_refused_naming_the_field(tmp_path, module):
    with pytest.raises(RecoveryError, match="generator.memory_format: channels_last does not work"):
        load_generator(_spec(tmp_path, module, "channels_last"), device="cpu")


def test_the_rule_tries_channels_last_only_where_it_was_measured_faster():
    conv = ConvG()
    assert wants_channels_last("auto", torch.device("cpu"), conv)
    assert not wants_channels_last("auto", torch.device("cuda"), conv)  # fp32 NHWC is no gain on CUDA
    assert wants_channels_last("channels_last", torch.device("cuda"), conv)
    assert not wants_channels_last("contiguous", torch.device("cpu"), conv)
    assert not wants_channels_last("auto", torch.device("cpu"), nn.Linear(8, 64))  # nothing to convert


def test_an_unknown_memory_format_names_the_field():
    with pytest.raises(RecoveryError, match="generator.memory_format"):
        GeneratorSpec(builtin="dcgan", latent=LatentSpec((8,), "normal"), memory_format="nhwc")
