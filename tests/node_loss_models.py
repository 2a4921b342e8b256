"""A generator for the node-loss tests and benchmark, loaded as `generator.factory` (never by production code).

SlowTiny is the tests' tiny generator, slowed down in Ray's worker processes only: every batch larger than
the load check's sleeps `delay` seconds, so a shard lasts long enough to lose its node in the middle, and
leaves a file named by the node's id in `marks`, so the test knows which node is running a shard right now.
In the driver (preflight, samples) it is as fast as the tiny generator.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn


def _ray_node() -> str | None:
    """This process's Ray node id if it is one of Ray's worker processes (an actor), else None."""
    try:
        import ray
        from ray._private import worker
    except ImportError:
        return None
    if not ray.is_initialized() or worker.global_worker.mode != worker.WORKER_MODE:
        return None
    return ray.get_runtime_context().get_node_id()


class SlowTiny(nn.Module):
    def __init__(self, marks: str, delay: float = 0.05, latent: int = 8, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(latent, side * side)
        self.marks, self.delay, self.side = marks, delay, side

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, latent] -> [B, 1, side, side] in [-1, 1]
        if len(z) > 3:
            node = _ray_node()
            if node is not None:
                mark = os.path.join(self.marks, node)
                if not os.path.exists(mark):
                    open(mark, "w").close()
                time.sleep(self.delay)
        return torch.tanh(self.fc(z.reshape(len(z), -1))).reshape(-1, 1, self.side, self.side)
