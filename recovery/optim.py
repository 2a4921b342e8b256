"""Batched latent search in which every (image, start) is an independent optimization.

A fixed number of slots run side by side. Each round evaluates every busy slot exactly once (one
batched forward and backward through G), then each slot advances its own state machine: its own
L-BFGS history, step length, line search and stopping, or its own Adam/SGD moments. A slot whose
search ends is refilled at once from the scheduler, so the batch stays full while images converge
at different speeds, and converged images cost nothing more. An image's result therefore does not
depend on which images share its batch, the batch size, or their order (DESIGN.md §1: torch.optim.LBFGS
over a summed loss would couple them).

This module holds what every method shares: slot bookkeeping, the best point seen, and the stopping
rules (exact, converged, stalled, iteration cap, evaluation budget). The methods live in lbfgs.py and
first_order.py and are chosen from METHODS, whose keys are the config's `recovery.optimizer` choices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

# evaluate(points [n, D], target index [n]) -> (loss, mse, mae [n], grad [n, D], failure reasons [n]);
# the loss is inf where G failed for that point, with the reason; never raises for one bad latent
Evaluate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]]

EXACT = 1e-10  # a loss this small is an exact recovery (pixel RMS 1e-5): below it float32 rounding is all that changes
MAX_ITERATIONS = 10_000  # per start, when neither an iteration cap nor a budget bounds it
NO_LIMIT = 1 << 62

# Why a start ended (TaskResult.stop). CONVERGED_STOPS reached a minimum; the others did not.
EXACT_STOP, CONVERGED, MINIMUM = "exact", "converged", "no descent"
STALLED, ITERATIONS, BUDGET, NONFINITE = "stalled", "iterations", "budget", "nonfinite"
CONVERGED_STOPS = (EXACT_STOP, CONVERGED, MINIMUM)


@dataclass(frozen=True)
class Task:
    """One start of one image, as the scheduler hands it out."""

    image: int  # index into the targets
    restart: int  # start index: seeds the start, breaks ties between equal losses
    start: torch.Tensor  # [D] the free variable's first point (CPU)
    max_evaluations: int | None  # generator evaluations this start may spend (None: no cap)
    max_iterations: int | None  # iterations this start may run (None: until it converges or stalls)


@dataclass
class TaskResult:
    """The outcome of one start."""

    image: int
    restart: int
    loss: float  # best loss seen; inf if G never gave a finite value
    mse: float  # of the best point
    mae: float
    latent: torch.Tensor  # [D] best free variable (CPU)
    iterations: int
    evaluations: int  # generator evaluations this start spent
    evaluations_to_exact: int | None  # evaluations until its MSE first fell below exact_level
    stop: str  # why it ended: one of the *_STOP names above
    seconds: float
    trace: torch.Tensor | None  # [iterations + 1] best loss at the start and after each iteration
    failure: str | None

    @property
    def converged(self) -> bool:
        return self.stop in CONVERGED_STOPS


@dataclass(frozen=True)
class StopRules:
    """When a start ends, besides its method's own convergence test."""

    exact_level: float  # MSE below which the image counts as recovered (no stall, no restart)
    patience: int  # iterations over which progress is measured
    stall_ratio: float  # above exact_level, a start stalls when its loss fell by less than this factor in `patience`
    tolerance: float  # relative decrease per iteration below which a start has converged
    stop_mse: float  # a start whose MSE is below this is recovered and ends


class SlotOptimizer:
    """Runs tasks in `slots` parallel lanes; subclasses say where to evaluate and how to move."""

    def __init__(self, evaluate: Evaluate, dim: int, *, slots: int, lr: float | None, history: int,
                 rules: StopRules, keep_trace: bool, trace_length: int, device: torch.device) -> None:
        self.evaluate, self.dim, self.slots, self.device = evaluate, dim, slots, device
        self.rules, self.history_size = rules, history
        self.patience = rules.patience * self.patience_factor
        self.lr = self.default_lr if lr is None else lr
        self.auto_lr = lr is None
        S, D = slots, dim
        self.busy = torch.zeros(S, dtype=torch.bool, device=device)
        self.image = torch.zeros(S, dtype=torch.long, device=device)
        self.restart = [0] * S
        self.point = self._zeros(S, D)  # [S, D] the current iterate (L-BFGS: the last accepted point)
        self.loss, self.mse, self.mae = self._zeros(S), self._zeros(S), self._zeros(S)  # [S] at `point`
        self.grad = self._zeros(S, D)  # [S, D] at `point`
        self.fresh = torch.ones(S, dtype=torch.bool, device=device)  # start not evaluated yet
        self.best_point = self._zeros(S, D)  # [S, D] lowest finite loss seen in this start
        self.best_loss = torch.full((S,), float("inf"), device=device)
        self.best_mse, self.best_mae = self._zeros(S), self._zeros(S)
        self.iterations = self._counter(S)
        self.evaluations = self._counter(S)
        self.max_evaluations, self.max_iterations = self._counter(S), self._counter(S)
        self.evaluations_to_exact = self._counter(S)  # -1 until the MSE falls below exact_level
        # best loss at the end of each of the last `patience` iterations, a ring indexed by iteration % patience
        self.recent = self._zeros(S, self.patience)
        self.trace = self._zeros(S, trace_length + 1) if keep_trace else None
        self.seconds = [0.0] * S
        self.failure: list[str | None] = [None] * S
        self.stop: list[str | None] = [None] * S

    default_lr = 1.0
    patience_factor = 1  # first-order methods need about ten times L-BFGS's iterations (the paper: ~500 vs ~50)

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=self.device)

    def _counter(self, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=self.device)

    # -- hooks for the methods ---------------------------------------------------------------------

    def reset_method(self, slot: int) -> None:
        """Clear the method's own state for a slot that takes a new task."""

    def trial_points(self, idx: torch.Tensor) -> torch.Tensor:
        """[n, D] where each busy slot in idx is evaluated this round."""
        return self.point[idx].clone()

    def advance(self, idx, points, f, mse, mae, g, ok, fresh) -> tuple[torch.Tensor, dict[int, str]]:
        """Move each slot given its evaluation; returns (iterated [n] bool, {slot: stop reason})."""
        raise NotImplementedError

    # -- tasks ---------------------------------------------------------------------------------------

    def _start(self, slot: int, task: Task) -> None:
        self.busy[slot], self.image[slot], self.restart[slot] = True, task.image, task.restart
        self.point[slot] = task.start.to(self.device)
        self.fresh[slot] = True
        self.best_loss[slot] = float("inf")
        self.iterations[slot], self.evaluations[slot], self.evaluations_to_exact[slot] = 0, 0, -1
        cap = task.max_iterations if task.max_iterations is not None else MAX_ITERATIONS
        if self.trace is not None:
            cap = min(cap, self.trace.shape[1] - 1)
            self.trace[slot] = float("nan")
        self.max_iterations[slot] = cap
        self.max_evaluations[slot] = task.max_evaluations if task.max_evaluations is not None else NO_LIMIT
        self.seconds[slot], self.failure[slot], self.stop[slot] = 0.0, None, None
        self.reset_method(slot)

    def _finish(self, slot: int) -> TaskResult:
        self.busy[slot] = False
        n = int(self.iterations[slot])
        to_exact = int(self.evaluations_to_exact[slot])
        return TaskResult(
            image=int(self.image[slot]),
            restart=self.restart[slot],
            loss=self.best_loss[slot].item(),
            mse=self.best_mse[slot].item(),
            mae=self.best_mae[slot].item(),
            latent=self.best_point[slot].detach().cpu().clone(),
            iterations=n,
            evaluations=int(self.evaluations[slot]),
            evaluations_to_exact=to_exact if to_exact >= 0 else None,
            stop=self.stop[slot] or BUDGET,
            seconds=self.seconds[slot],
            trace=self.trace[slot, : n + 1].cpu().clone() if self.trace is not None else None,
            failure=self.failure[slot],
        )

    def run(self, next_tasks: Callable[[int], list[Task]], on_done: Callable[[TaskResult], None]) -> None:
        """Run until next_tasks has nothing more; on_done sees every finished start (and may queue more)."""
        free = list(range(self.slots))[::-1]
        while True:
            if free:
                for task in next_tasks(len(free)):
                    self._start(free.pop(), task)
            idx = self.busy.nonzero().flatten()
            if idx.numel() == 0:
                return
            t0 = time.perf_counter()
            done = self._round(idx)
            share = (time.perf_counter() - t0) / idx.numel()
            for s in idx.tolist():
                self.seconds[s] += share
            for s in done:
                free.append(s)
                on_done(self._finish(s))

    # -- one round: evaluate every busy slot once, then advance each ---------------------------------

    def _round(self, idx: torch.Tensor) -> list[int]:
        fresh = self.fresh[idx].clone()
        points = self.trial_points(idx)  # [n, D]
        f, mse, mae, g, errors = self.evaluate(points, self.image[idx])
        for k, err in enumerate(errors):
            if err is not None:
                self.failure[int(idx[k])] = err
        ok = torch.isfinite(f) & torch.isfinite(g).all(1)
        self.evaluations[idx] += 1
        self._track_best(idx, points, f, mse, mae, ok)
        iterated, stops = self.advance(idx, points, f, mse, mae, g, ok, fresh)
        self.fresh[idx[ok]] = False
        stops = {**self._progress(idx[iterated]), **stops}  # the method's own reasons win
        over = idx[self.evaluations[idx] >= self.max_evaluations[idx]].tolist()
        for s in over:
            stops.setdefault(s, BUDGET)
        for s, reason in stops.items():
            self.stop[s] = reason
        return sorted(stops)

    def _track_best(self, idx, points, f, mse, mae, ok) -> None:
        better = ok & (f < self.best_loss[idx])
        b = idx[better]
        self.best_loss[b], self.best_point[b] = f[better], points[better]
        self.best_mse[b], self.best_mae[b] = mse[better], mae[better]
        hit = ok & (mse < self.rules.exact_level) & (self.evaluations_to_exact[idx] < 0)
        self.evaluations_to_exact[idx[hit]] = self.evaluations[idx[hit]]

    def _progress(self, it: torch.Tensor) -> dict[int, str]:
        """After an iteration: record it, and end starts that are exact, stalled or out of iterations."""
        if it.numel() == 0:
            return {}
        self.iterations[it] += 1
        n, best = self.iterations[it], self.best_loss[it]
        if self.trace is not None:
            self.trace[it, n] = best
        rules = self.rules
        slot_in_ring = n % self.patience
        before = self.recent[it, slot_in_ring]  # best loss `patience` iterations ago (overwritten below)
        stalled = (n >= self.patience) & (self.best_mse[it] > rules.exact_level) & (best > rules.stall_ratio * before)
        self.recent[it, slot_in_ring] = best
        stops: dict[int, str] = {}
        for mask, reason in ((n >= self.max_iterations[it], ITERATIONS), (stalled, STALLED), (self._exact(it), EXACT_STOP)):
            for s in it[mask].tolist():
                stops[s] = reason  # later entries win: exact over stalled over the iteration cap
        return stops

    def _exact(self, slots: torch.Tensor) -> torch.Tensor:
        """[n] bool: recovered for every purpose of the audit, or at float32 precision."""
        return (self.best_loss[slots] <= EXACT) | (self.best_mse[slots] < self.rules.stop_mse)

    def record_start(self, slots: torch.Tensor) -> None:
        """The start's own loss as iteration 0 of the trace and of the stall ring."""
        if slots.numel() == 0:
            return
        if self.trace is not None:
            self.trace[slots, 0] = self.best_loss[slots]
        self.recent[slots, 0] = self.best_loss[slots]

