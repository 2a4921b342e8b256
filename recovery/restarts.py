"""Starts and restarts per image: screened starts, adaptive restarts and the evaluation budget.

Trained generators have hard latent landscapes: from one random start most searches end in a
local minimum well above an exact recovery. Two things fix that cheaply:

- screening: each start draws K candidates from the prior (seeded by seed, image id, start index),
  scores them in one batched forward pass and starts from the best, so the optimizer begins in a
  good basin more often than a single draw does;
- adaptive restarts: a start that converges or stalls above the exact-recovery level ends early
  and the image starts again from a fresh screened draw, until it is recovered, its budget of
  generator evaluations is spent or it has had start_cap starts (the number of starts
  that finds an in-range image with the recall asked for, measured on the generated split).
  Images that recover at once cost one start.

Every decision uses only the image's own results, so an image's row does not depend on its batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from .optim import NONFINITE, Task, TaskResult
from .settings import SearchPlan

MIN_START_EVALUATIONS = 10  # a restart needs at least this many evaluations left after screening to be worth it
MAX_FAILED_STARTS = 3  # consecutive starts with no finite value before an image is given up

# screen(picks) -> (starts [n, D], evaluations each screening cost): the best candidate per (image, start index)
Screen = Callable[[list[tuple[int, int]]], tuple[torch.Tensor, list[int]]]


@dataclass
class ImageSearch:
    """What one image has spent and found so far."""

    evaluations: int = 0  # over all starts, screening draws included
    starts: int = 0
    failed_in_a_row: int = 0
    best: TaskResult | None = None
    evaluations_to_exact: int | None = None
    seconds: float = 0.0
    started_at: int = 0  # evaluations spent before the running start's optimizer began


class RestartScheduler:
    """Hands out tasks to the slot optimizer and decides, per image, whether to start again."""

    def __init__(self, n_images: int, plan: SearchPlan, *, exact_level: float,
                 adaptive_threshold: float | None, screen: Screen) -> None:
        self.plan, self.exact_level, self.threshold, self.screen = plan, exact_level, adaptive_threshold, screen
        self.images = [ImageSearch() for _ in range(n_images)]
        self.pending: deque[tuple[int, int]] = deque((i, 0) for i in range(n_images))

    def next_tasks(self, k: int) -> list[Task]:
        """Up to k tasks: pending restarts first (an image finishes before new ones begin), screened in one pass."""
        picks = [self.pending.popleft() for _ in range(min(k, len(self.pending)))]
        if not picks:
            return []
        starts, costs = self.screen(picks)  # [n, D]
        tasks = []
        for (image, restart), start, cost in zip(picks, starts, costs):
            state = self.images[image]
            state.evaluations += cost
            state.started_at = state.evaluations
            left = None if self.plan.budget is None else max(1, self.plan.budget - state.evaluations)
            tasks.append(Task(image, restart, start, left, self.plan.iterations))
        return tasks

    def on_done(self, result: TaskResult) -> None:
        state = self.images[result.image]
        state.evaluations += result.evaluations
        state.starts += 1
        state.seconds += result.seconds
        if result.evaluations_to_exact is not None and state.evaluations_to_exact is None:
            state.evaluations_to_exact = state.started_at + result.evaluations_to_exact
        failed = result.stop == NONFINITE and result.iterations == 0
        state.failed_in_a_row = state.failed_in_a_row + 1 if failed else 0
        best = state.best
        if best is None or result.loss < best.loss or (result.loss == best.loss and result.restart < best.restart):
            state.best = result
        if self._again(state, result.restart + 1):
            self.pending.appendleft((result.image, result.restart + 1))

    def _again(self, state: ImageSearch, next_restart: int) -> bool:
        plan, best = self.plan, state.best
        if state.failed_in_a_row >= MAX_FAILED_STARTS:
            return False
        if plan.budget is not None:
            cost = plan.screening if plan.screening > 1 else 0
            if plan.budget - state.evaluations < cost + MIN_START_EVALUATIONS:
                return False
        if plan.restarts is not None:  # a fixed count, optionally cut short by adaptive_threshold
            return next_restart < plan.restarts and not (self.threshold is not None and best.loss <= self.threshold)
        if plan.start_cap is not None and state.starts >= plan.start_cap:
            return False  # adaptive with a cap: an in-range image is found within it with the recall asked for
        return not best.mse <= self.exact_level  # adaptive: until recovered (NaN and inf are not recovered)
