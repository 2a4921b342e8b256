"""The search's batch size (recovery.batching): a fixed rule per device and image size by default, so a
config gives the same table on every run, and a measurement a user can run to choose one."""

from __future__ import annotations

import pytest
import torch

from recovery import LatentSpec, RecoverySettings, batch_size_for, recover, sample_generated, wrap_generator
from recovery.batching import rates
from recovery.models import DCGAN
from recovery.recover import evaluation_step

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def g():
    torch.manual_seed(0)
    return wrap_generator(DCGAN(nz=8, ngf=8, nc=1, size=16).eval(), latent=LatentSpec((8,)), device="cpu")


@pytest.mark.parametrize("shape, cpu, cuda", [((3, 64, 64), 16, 64), ((1, 32, 32), 64, 64), ((3, 128, 128), 4, 64),
                                             ((3, 256, 256), 1, 64), ((3, 512, 512), 1, 16), ((3, 1024, 1024), 1, 4),
                                             ((1, 8, 8), 64, 64)])
def test_the_default_keeps_a_batch_of_outputs_within_the_device(shape, cpu, cuda):
    from recovery.batching import default_batch_size

    assert default_batch_size(CPU, shape) == cpu
    assert default_batch_size(torch.device("cuda"), shape) == cuda


def test_a_batch_that_does_not_fit_names_the_setting_that_fixes_it():
    from torch import nn

    class Big(nn.Module):  # pretends that more than 4 images at a time exhaust the device
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            if len(z) > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return torch.tanh(z.reshape(len(z), 1, 2, 4))

    g = wrap_generator(Big(), latent=LatentSpec((8,)), device="cpu")
    ids = [f"i{i}" for i in range(6)]
    x = torch.zeros(6, 1, 2, 4)
    with pytest.raises(Exception, match=r"out of cpu memory searching 6 images of 1x2x4 side by side; set "
                                        r"recovery.batch_size lower \(e.g. 3\)"):
        recover(g, x, ids, settings=RecoverySettings(protocol="paper", iterations=3, batch_size=6))
    assert recover(g, x, ids, settings=RecoverySettings(protocol="paper", iterations=3, batch_size=4)).num_rows == 6


def test_an_unset_batch_size_follows_the_rule_and_a_set_one_wins(g):
    assert batch_size_for(g, RecoverySettings()) == 64  # 1x16x16 outputs on a CPU
    assert batch_size_for(g, RecoverySettings(batch_size=5)) == 5
    ids = [f"i{i}" for i in range(6)]
    _, x = sample_generated(g, ids, seed=1)
    auto = recover(g, x, ids, settings=RecoverySettings(protocol="paper", iterations=20))
    fixed = recover(g, x, ids, settings=RecoverySettings(protocol="paper", iterations=20, batch_size=64))
    assert auto.drop_columns(["seconds"]).equals(fixed.drop_columns(["seconds"]))


def test_rates_time_the_real_evaluation_and_stop_where_memory_ends(g):
    found = rates(lambda b: evaluation_step(g, RecoverySettings(), b), CPU, sizes=(1, 2, 4))
    assert list(found) == [1, 2, 4] and all(r > 0 for r in found.values())

    def make_step(b: int):
        def step() -> None:
            if b >= 8:
                raise torch.OutOfMemoryError("CUDA out of memory")
        return step

    assert list(rates(make_step, CPU, sizes=(2, 4, 8, 16))) == [2, 4]  # 8 did not fit: 16 is not tried
