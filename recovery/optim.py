"""Batched latent search in which every (image, restart) is an independent optimization.

A fixed number of slots run side by side. Each round evaluates every busy slot exactly once (one
batched forward and backward through G), then each slot advances its own state machine: its own
L-BFGS history, step length, line search and stopping, or its own Adam/SGD moments. A slot whose
search ends is refilled at once from the queue, so the batch stays full while images converge at
different speeds, and converged images cost nothing more. An image's result therefore does not
depend on which images share its batch, the batch size, or their order (DESIGN §1: torch.optim.LBFGS
over a summed loss would couple them).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

# evaluate(points [n, D], target index [n]) -> (loss, mse, mae [n], grad [n, D], failure reasons [n]);
# the loss is inf where G failed for that point, with the reason; never raises for one bad latent
Evaluate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]]

DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.05, "sgd": None}  # sgd: per image, see _first_order
ARMIJO_C1 = 1e-4  # sufficient decrease (Nocedal & Wright 3.1)
MAX_BACKTRACKS = 20
EXACT = 1e-10  # a loss this small is an exact recovery (pixel RMS 1e-5): below it float32 rounding is all that changes
CURVATURE_EPS = 1e-8  # pairs with y.s <= eps |y| |s| are not stored (keeps H positive definite at any loss scale)


@dataclass
class TaskResult:
    """The outcome of one (image, restart) search."""

    image: int
    restart: int
    loss: float  # best loss seen; inf if G never gave a finite value
    mse: float
    mae: float
    latent: torch.Tensor  # [D] best free variable (CPU)
    iterations: int
    converged: bool
    seconds: float
    trace: torch.Tensor | None  # [iterations + 1] loss after each iteration
    failure: str | None


class SlotOptimizer:
    """Runs (image, restart) tasks in `slots` parallel lanes until the queue is empty."""

    def __init__(
        self,
        evaluate: Evaluate,
        dim: int,
        *,
        slots: int,
        method: str,
        iterations: int,
        lr: float | None,
        history: int,
        tolerance: float,
        keep_trace: bool,
        device: torch.device,
    ) -> None:
        self.evaluate, self.dim, self.slots = evaluate, dim, slots
        self.method, self.iterations = method, iterations
        self.lr = DEFAULT_LR[method] if lr is None else lr
        self.auto_lr = method == "sgd" and lr is None
        self.m, self.tol, self.keep_trace, self.device = history, tolerance, keep_trace, device
        self.max_evals = 2 * iterations + 1 if method == "lbfgs" else iterations + 1
        S, D, dev = slots, dim, device
        z = lambda *shape: torch.zeros(shape, device=dev)  # noqa: E731
        self.busy = torch.zeros(S, dtype=torch.bool, device=dev)
        self.image = torch.zeros(S, dtype=torch.long, device=dev)
        self.restart = [0] * S
        self.u, self.g, self.d = z(S, D), z(S, D), z(S, D)
        self.f, self.mse, self.mae = z(S), z(S), z(S)
        self.t, self.gtd = z(S), z(S)
        self.fresh = torch.ones(S, dtype=torch.bool, device=dev)  # needs its first evaluation
        self.iters = torch.zeros(S, dtype=torch.long, device=dev)
        self.evals = torch.zeros(S, dtype=torch.long, device=dev)
        self.backtracks = torch.zeros(S, dtype=torch.long, device=dev)
        self.seconds = [0.0] * S
        self.failure: list[str | None] = [None] * S
        # L-BFGS: the last `m` pairs per slot in a ring, newest at (ptr - 1) % m
        self.S_hist, self.Y_hist = z(S, history, D), z(S, history, D)
        self.rho, self.gamma = z(S, history), torch.ones(S, device=dev)
        self.ptr = torch.zeros(S, dtype=torch.long, device=dev)
        # Adam / SGD: moments and the best point seen
        self.m1, self.m2, self.sgd_lr = z(S, D), z(S, D), z(S)
        self.best_u, self.best_f = z(S, D), torch.full((S,), float("inf"), device=dev)
        self.best_mse, self.best_mae = z(S), z(S)
        self.trace = z(S, iterations + 1) if keep_trace else None
        self.converged = torch.zeros(S, dtype=torch.bool, device=dev)

    # -- task bookkeeping -------------------------------------------------------------------------

    def _start(self, slot: int, image: int, restart: int, u0: torch.Tensor) -> None:
        self.busy[slot], self.image[slot], self.restart[slot] = True, image, restart
        self.u[slot] = u0.to(self.device)
        self.fresh[slot] = True
        for name in ("iters", "evals", "backtracks", "ptr"):
            getattr(self, name)[slot] = 0
        for name in ("rho", "m1", "m2", "g", "d"):
            getattr(self, name)[slot] = 0
        self.gamma[slot], self.best_f[slot], self.converged[slot] = 1.0, float("inf"), False
        self.seconds[slot], self.failure[slot] = 0.0, None
        if self.trace is not None:
            self.trace[slot] = float("nan")

    def _finish(self, slot: int) -> TaskResult:
        self.busy[slot] = False
        lbfgs = self.method == "lbfgs"
        loss = (self.f if lbfgs else self.best_f)[slot].item()
        n = int(self.iters[slot])
        return TaskResult(
            image=int(self.image[slot]),
            restart=self.restart[slot],
            loss=loss if not bool(self.fresh[slot]) else float("inf"),
            mse=(self.mse if lbfgs else self.best_mse)[slot].item(),
            mae=(self.mae if lbfgs else self.best_mae)[slot].item(),
            latent=(self.u if lbfgs else self.best_u)[slot].detach().cpu().clone(),
            iterations=n,
            converged=bool(self.converged[slot]),
            seconds=self.seconds[slot],
            trace=self.trace[slot, : n + 1].cpu().clone() if self.trace is not None else None,
            failure=self.failure[slot],
        )

    def run(self, tasks: deque, make_start: Callable[[int, int], torch.Tensor], on_done: Callable[[TaskResult], None]) -> None:
        """Drain `tasks` ((image, restart) pairs); on_done may push follow-up restarts onto the left of the queue."""
        free = list(range(self.slots))[::-1]
        while True:
            while free and tasks:
                image, restart = tasks.popleft()
                self._start(free.pop(), image, restart, make_start(image, restart))
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

    # -- one round: evaluate every busy slot once, then advance each ------------------------------

    def _round(self, idx: torch.Tensor) -> list[int]:
        fresh = self.fresh[idx]
        trial = ~fresh
        points = self.u[idx].clone()
        if self.method == "lbfgs":
            points[trial] += self.t[idx][trial, None] * self.d[idx][trial]
        f, mse, mae, g, errors = self.evaluate(points, self.image[idx])
        for k, err in enumerate(errors):
            if err is not None:
                self.failure[int(idx[k])] = err
        ok = torch.isfinite(f) & torch.isfinite(g).all(1)
        self.evals[idx] += 1
        if self.method == "lbfgs":
            return self._lbfgs(idx, points, f, mse, mae, g, ok, fresh)
        return self._first_order(idx, f, mse, mae, g, ok, fresh)

    def _lbfgs(self, idx, points, f, mse, mae, g, ok, fresh) -> list[int]:
        done = torch.zeros_like(idx, dtype=torch.bool)
        # fresh slots: their start point is evaluated; a non-finite start fails the task
        start = fresh & ok
        done |= fresh & ~ok
        # trial slots: Armijo sufficient decrease against the slot's accepted point
        trial = ~fresh
        f_old = self.f[idx]
        accept = trial & ok & (f <= f_old + ARMIJO_C1 * self.t[idx] * self.gtd[idx])
        reject = trial & ~accept
        # accepted: store the curvature pair, move, test convergence
        a = idx[accept]
        if a.numel():
            s = points[accept] - self.u[a]
            y = g[accept] - self.g[a]
            ys, yy = (y * s).sum(1), (y * y).sum(1)
            keep = ys > CURVATURE_EPS * (yy * (s * s).sum(1)).sqrt()
            if keep.any():
                ak = a[keep]
                pos = self.ptr[ak] % self.m
                self.S_hist[ak, pos], self.Y_hist[ak, pos] = s[keep], y[keep]
                self.rho[ak, pos] = 1.0 / ys[keep]
                self.gamma[ak] = ys[keep] / yy[keep]
                self.ptr[ak] += 1
            self.iters[a] += 1
            small = (f_old[accept] - f[accept]) <= self.tol * f_old[accept].abs().clamp_min(1e-30)
            small &= self.ptr[a] > 1  # a step before any curvature is known says nothing about convergence
            small |= (f[accept] <= EXACT) | (g[accept].abs().amax(1) <= 1e-12)
            self.converged[a] = small
            done[accept] = small | (self.iters[a] >= self.iterations)
        moved = start | accept
        if moved.any():
            mv = idx[moved]
            self.u[mv], self.f[mv], self.g[mv] = points[moved], f[moved], g[moved]
            self.mse[mv], self.mae[mv] = mse[moved], mae[moved]
            self.backtracks[mv] = 0
            if self.trace is not None:
                self.trace[mv, self.iters[mv]] = f[moved]
        self.fresh[idx[start]] = False
        # rejected: shrink the step (quadratic interpolation, safeguarded); G's NaN or inf counts as a rejection
        if reject.any():
            r = idx[reject]
            t, gtd = self.t[r], self.gtd[r]
            fr = f[reject]
            denom = 2 * (fr - self.f[r] - gtd * t)
            t_quad = torch.where(torch.isfinite(fr) & (denom > 0), -gtd * t * t / denom, 0.1 * t)
            self.t[r] = torch.minimum(torch.maximum(t_quad, 0.1 * t), 0.5 * t)
            self.backtracks[r] += 1
            stuck = self.backtracks[r] > MAX_BACKTRACKS
            if stuck.any():
                # no decrease along this direction: drop the history and try steepest descent once more;
                # with no history left, the slot is at a minimum to working precision
                st = r[stuck]
                had_history = self.ptr[st] > 0
                self.converged[st[~had_history]] = True
                done[reject.nonzero().flatten()[stuck][~had_history]] = True
                retry = st[had_history]
                self.ptr[retry], self.rho[retry] = 0, 0
                self.backtracks[retry] = 0
                self._direction(retry)
        # new directions for every slot that moved and goes on
        go = moved & ~done
        self._direction(idx[go])
        done |= self.evals[idx] >= self.max_evals
        return idx[done].tolist()

    def _direction(self, sl: torch.Tensor) -> None:
        """Two-loop recursion over each slot's own history (Nocedal & Wright, Algorithm 7.4)."""
        if sl.numel() == 0:
            return
        g = self.g[sl]
        n = sl.numel()
        order = (self.ptr[sl, None] - 1 - torch.arange(self.m, device=self.device)[None, :]) % self.m  # newest first
        rows = torch.arange(n, device=self.device)[:, None]
        S, Y, rho = self.S_hist[sl][rows, order], self.Y_hist[sl][rows, order], self.rho[sl][rows, order]
        valid = torch.arange(self.m, device=self.device)[None, :] < self.ptr[sl, None]
        rho = torch.where(valid, rho, torch.zeros_like(rho))
        q = g.clone()
        alpha = torch.zeros_like(rho)
        for i in range(self.m):
            alpha[:, i] = rho[:, i] * (S[:, i] * q).sum(1)
            q -= alpha[:, i, None] * Y[:, i]
        has = self.ptr[sl] > 0
        r = q * torch.where(has, self.gamma[sl], torch.ones_like(self.gamma[sl]))[:, None]
        for i in reversed(range(self.m)):
            beta = rho[:, i] * (Y[:, i] * r).sum(1)
            r += S[:, i] * (alpha[:, i] - beta)[:, None]
        d = -r
        gtd = (g * d).sum(1)
        bad = ~(gtd < 0)  # not a descent direction: forget the history, go downhill
        if bad.any():
            d[bad] = -g[bad]
            gtd[bad] = -(g[bad] * g[bad]).sum(1)
            self.ptr[sl[bad]] = 0
            has = has & ~bad
        # first step of a search (no curvature yet): move a tenth of the latent's norm, whatever the loss's scale
        # (torch.optim.LBFGS's min(1, 1/|g|_1) crawls when the loss is small, as per-pixel MSE is)
        first = 0.1 * self.u[sl].norm(dim=1).clamp_min(1.0) / g.norm(dim=1).clamp_min(1e-30)
        t0 = torch.where(has, torch.ones_like(gtd), first) * self.lr
        self.d[sl], self.gtd[sl], self.t[sl] = d, gtd, t0

    def _first_order(self, idx, f, mse, mae, g, ok, fresh) -> list[int]:
        """Adam or SGD with momentum: a step per evaluation; a non-finite value resets the slot to its best point."""
        done = torch.zeros_like(idx, dtype=torch.bool)
        better = ok & (f < self.best_f[idx])
        b = idx[better]
        self.best_f[b], self.best_u[b], self.best_mse[b], self.best_mae[b] = f[better], self.u[b], mse[better], mae[better]
        self.fresh[idx[ok]] = False
        done |= fresh & ~ok  # no finite start
        bad = ~ok & ~fresh
        if bad.any():
            r = idx[bad]
            self.u[r], self.m1[r], self.m2[r] = self.best_u[r], 0, 0
        if self.trace is not None:
            self.trace[idx, self.iters[idx]] = torch.where(ok, f, self.best_f[idx])
        finished = self.iters[idx] >= self.iterations
        tiny = ok & ((f <= EXACT) | (g.abs().amax(1) <= 1e-12))
        self.converged[idx[tiny]] = True
        done |= finished | tiny
        step = ok & ~done
        s = idx[step]
        if s.numel():
            gs = g[step]
            k = (self.iters[s] + 1).to(gs.dtype)[:, None]
            if self.method == "adam":
                b1, b2 = 0.9, 0.999
                self.m1[s] = b1 * self.m1[s] + (1 - b1) * gs
                self.m2[s] = b2 * self.m2[s] + (1 - b2) * gs * gs
                upd = (self.m1[s] / (1 - b1**k)) / ((self.m2[s] / (1 - b2**k)).sqrt() + 1e-8)
                lr = self.lr
            else:
                self.m1[s] = 0.9 * self.m1[s] + gs
                upd = self.m1[s]
                if self.auto_lr:  # scale-free default: the first step moves 1% of the latent's norm, per image
                    first = self.iters[s] == 0
                    self.sgd_lr[s[first]] = 0.01 * self.u[s[first]].norm(dim=1).clamp_min(1.0) / gs[first].norm(dim=1).clamp_min(1e-30)
                lr = self.sgd_lr[s, None] if self.auto_lr else self.lr
            self.u[s] = self.u[s] - lr * upd
        self.iters[idx[step | bad]] += 1
        return idx[done].tolist()
