"""Targets on the device batch by batch: at most about `batch_size` images at a time.

The slot optimizer only ever evaluates the images in its slots (and, when it screens starts, the few
images being started), so Objective keeps every target's operator view A(x) on the host and holds on the
device only the images being searched, uploading an image when it enters a slot and evicting images that
left. Device memory is then bounded by batch_size, not by the number of targets passed to recover()
(256 x 3 x 1024^2 float32 targets are 3.2 GB). When all targets fit in `capacity` they are uploaded once.
"""

from __future__ import annotations

import torch


class DeviceTargets:
    """Rows of a host tensor [N, ...], served on `device` by image index through a bounded resident set."""

    def __init__(self, host: torch.Tensor, device: torch.device, capacity: int) -> None:
        self.host = host  # [N, ...] on the CPU
        self.device = device
        self.capacity = max(1, int(capacity))
        self.buffer: torch.Tensor | None = None  # [rows, ...] on the device
        self.resident: dict[int, int] = {}  # image index -> row of buffer
        self.peak = 0  # most images resident at once (tests check the bound)
        if len(host) <= self.capacity:
            self.buffer = host.to(device)
            self.resident = {i: i for i in range(len(host))}
            self.peak = len(host)

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        """host[index] on the device, [B, ...]; uploads the images not resident, evicting idle ones."""
        wanted = index.tolist()
        unique = list(dict.fromkeys(wanted))
        missing = [i for i in unique if i not in self.resident]
        if missing:
            self._load(unique, missing)
        rows = torch.tensor([self.resident[i] for i in wanted], dtype=torch.long, device=self.device)
        return self.buffer.index_select(0, rows)

    def _load(self, unique: list[int], missing: list[int]) -> None:
        size = max(self.capacity, len(unique))
        if self.buffer is None or len(self.buffer) < size:  # first use, or a call wider than the capacity
            self.buffer = torch.empty((size, *self.host.shape[1:]), dtype=self.host.dtype, device=self.device)
            self.resident, missing = {}, unique
        used = set(self.resident.values())
        free = [r for r in range(len(self.buffer)) if r not in used]
        if len(free) < len(missing):
            keep = set(unique)
            for image in [i for i in self.resident if i not in keep][: len(missing) - len(free)]:
                free.append(self.resident.pop(image))  # an image that left its slot
        rows = free[: len(missing)]
        batch = self.host.index_select(0, torch.tensor(missing, dtype=torch.long))
        self.buffer[torch.tensor(rows, dtype=torch.long, device=self.device)] = batch.to(self.device)
        self.resident.update(zip(missing, rows))
        self.peak = max(self.peak, len(self.resident))
