"""Targets stream to the device batch by batch: recover() holds about batch_size targets on the
device, not all N, and its rows do not change. Also the progress callback the job reports images with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recovery import GeneratorSpec, LatentSpec, RecoverySettings, load_generator, recover, sample_generated
from recovery.device_targets import DeviceTargets
from recovery.objective import Objective

MODEL = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "models" / "glo-64.pt"
SETTINGS = RecoverySettings(iterations=5, restarts=2, batch_size=4)


@pytest.fixture(scope="module")
def g():
    return load_generator(GeneratorSpec(torchscript=str(MODEL), latent=LatentSpec((32,), "sphere")), device="cpu")


def test_the_device_holds_at_most_batch_size_targets(g, monkeypatch):
    ids = [f"gen-{i}" for i in range(10)]
    _, targets = sample_generated(g, ids, seed=0)  # [10, 1, 32, 32]
    seen: list[Objective] = []
    real_init = Objective.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(Objective, "__init__", spy)
    streamed = recover(g, targets, ids, settings=SETTINGS)
    (objective,) = seen
    assert isinstance(objective.targets, DeviceTargets) and len(objective.targets) == 10
    assert objective.targets.peak <= SETTINGS.batch_size  # never all 10 on the device
    assert objective.targets.buffer.shape[0] <= SETTINGS.batch_size
    monkeypatch.undo()
    whole = recover(g, targets, ids, settings=RecoverySettings(iterations=5, restarts=2, batch_size=10))  # all resident
    for column in ("error", "mse", "iterations", "restarts"):
        assert streamed.column(column).to_pylist() == pytest.approx(whole.column(column).to_pylist(), rel=1e-5)


def test_device_targets_serve_the_right_rows_and_evict_idle_ones():
    host = torch.arange(10, dtype=torch.float32).reshape(10, 1).repeat(1, 3)  # row i holds i
    cache = DeviceTargets(host, torch.device("cpu"), capacity=3)
    for batch in ([0, 1, 2], [1, 2, 3], [3, 3, 4], [9, 0, 5], [5]):
        index = torch.tensor(batch)
        assert torch.equal(cache[index], host[index])
        assert len(cache.resident) <= 3
    assert torch.equal(cache[torch.arange(5)], host[:5])  # a wider call grows the buffer to what it asks for
    assert cache.peak == 5


def test_progress_counts_every_finished_image_once(g):
    ids = [f"gen-{i}" for i in range(9)]
    _, targets = sample_generated(g, ids, seed=1)
    calls: list[int] = []
    recover(g, targets, ids, settings=SETTINGS, progress=calls.append)
    assert calls == list(range(1, 10))
