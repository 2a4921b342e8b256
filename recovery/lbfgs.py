"""L-BFGS per slot: each image's own curvature history, Armijo backtracking line search and stopping.

Nocedal & Wright, Numerical Optimization, Algorithm 7.4 (two-loop recursion) and 3.1 (sufficient
decrease). One trial point per slot per round, so a line search costs one batched evaluation per
backtrack and never waits for its batch neighbours.
"""

from __future__ import annotations

import torch

from .optim import CONVERGED, MINIMUM, NONFINITE, SlotOptimizer

ARMIJO_C1 = 1e-4  # sufficient decrease (Nocedal & Wright 3.1)
MAX_BACKTRACKS = 20
CURVATURE_EPS = 1e-8  # pairs with y.s <= eps |y| |s| are not stored (keeps H positive definite at any loss scale)
FIRST_STEP = 0.1  # a search's first step (no curvature yet) moves this fraction of the latent's norm


class LBFGS(SlotOptimizer):
    """Per-slot L-BFGS; the loop, the best point and the shared stopping rules are SlotOptimizer's."""

    default_lr = 1.0  # scales every trial step; 1 is the quasi-Newton step

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        S, D, M = self.slots, self.dim, self.history_size
        # the last M curvature pairs per slot in a ring, the newest at (pairs - 1) % M
        self.steps_hist = self._zeros(S, M, D)  # [S, M, D] s_k = x_{k+1} - x_k
        self.grads_hist = self._zeros(S, M, D)  # [S, M, D] y_k = g_{k+1} - g_k
        self.inv_curv = self._zeros(S, M)  # [S, M] rho_k = 1 / (y_k . s_k)
        self.scale = torch.ones(S, device=self.device)  # [S] gamma = s.y / y.y, the initial inverse Hessian
        self.pairs = self._counter(S)  # [S] pairs stored since the history was last cleared
        self.direction = self._zeros(S, D)  # [S, D] search direction from `point`
        self.step = self._zeros(S)  # [S] trial step length along `direction`
        self.slope = self._zeros(S)  # [S] directional derivative g . d at `point` (< 0)
        self.backtracks = self._counter(S)  # [S] rejected trials since the last accepted point

    def reset_method(self, slot: int) -> None:
        self.pairs[slot], self.backtracks[slot] = 0, 0
        self.inv_curv[slot], self.scale[slot] = 0, 1.0

    def trial_points(self, idx: torch.Tensor) -> torch.Tensor:
        points = self.point[idx].clone()  # [n, D]
        trial = ~self.fresh[idx]
        points[trial] += self.step[idx][trial, None] * self.direction[idx][trial]
        return points

    def advance(self, idx, points, f, mse, mae, g, ok, fresh):
        stops: dict[int, str] = {}
        for s in idx[fresh & ~ok].tolist():
            stops[s] = NONFINITE  # no finite value at the start
        start = fresh & ok
        trial = ~fresh
        f_old = self.loss[idx]
        accept = trial & ok & (f <= f_old + ARMIJO_C1 * self.step[idx] * self.slope[idx])
        reject = trial & ~accept
        small = self._store_pairs(idx, accept, points, f, g, f_old)
        moved = start | accept
        mv = idx[moved]
        self.point[mv], self.loss[mv], self.grad[mv] = points[moved], f[moved], g[moved]
        self.mse[mv], self.mae[mv], self.backtracks[mv] = mse[moved], mae[moved], 0
        self.record_start(idx[start])
        stops.update(self._backtrack(idx[reject], f[reject]))
        go = idx[moved & ~torch.isin(idx, torch.tensor(sorted(stops), dtype=torch.long, device=self.device))]
        self._direction(go)
        # converged: the last step gained less than `tolerance` and a full quasi-Newton step predicts no more
        a = idx[accept]
        predicted = -self.slope[a] <= self.rules.tolerance * self.loss[a].abs().clamp_min(1e-30)
        for s in a[small & predicted].tolist():
            stops.setdefault(s, CONVERGED)
        return accept, stops

    def _store_pairs(self, idx, accept, points, f, g, f_old) -> torch.Tensor:
        """Store accepted slots' curvature pairs; [n_accepted] bool: the step gained less than `tolerance`."""
        a = idx[accept]
        s = points[accept] - self.point[a]  # [n, D]
        y = g[accept] - self.grad[a]  # [n, D]
        ys, yy = (y * s).sum(1), (y * y).sum(1)
        keep = ys > CURVATURE_EPS * (yy * (s * s).sum(1)).sqrt()
        kept = a[keep]
        pos = self.pairs[kept] % self.history_size
        self.steps_hist[kept, pos], self.grads_hist[kept, pos] = s[keep], y[keep]
        self.inv_curv[kept, pos] = 1.0 / ys[keep]
        self.scale[kept] = ys[keep] / yy[keep]
        self.pairs[kept] += 1
        gained = f_old[accept] - f[accept]
        small = gained <= self.rules.tolerance * f_old[accept].abs().clamp_min(1e-30)
        return small & (self.pairs[a] > 1)  # a step before any curvature is known says nothing

    def _backtrack(self, r: torch.Tensor, f_trial: torch.Tensor) -> dict[int, str]:
        """Shrink rejected slots' steps (safeguarded quadratic interpolation); NaN or inf counts as a rejection."""
        if r.numel() == 0:
            return {}
        t, slope, f0 = self.step[r], self.slope[r], self.loss[r]
        denom = 2 * (f_trial - f0 - slope * t)
        t_quad = torch.where(torch.isfinite(f_trial) & (denom > 0), -slope * t * t / denom, 0.1 * t)
        self.step[r] = torch.minimum(torch.maximum(t_quad, 0.1 * t), 0.5 * t)
        self.backtracks[r] += 1
        stuck = self.backtracks[r] > MAX_BACKTRACKS
        stops: dict[int, str] = {}
        if stuck.any():
            # no decrease along this direction: drop the history and try steepest descent once more. With no
            # history left the slot is at a minimum to working precision, unless G was NaN or inf there.
            st = r[stuck]
            had_history = self.pairs[st] > 0
            finite = torch.isfinite(f_trial[stuck])
            for s, fin in zip(st[~had_history].tolist(), finite[~had_history].tolist()):
                stops[s] = MINIMUM if fin else NONFINITE
            retry = st[had_history]
            self.pairs[retry], self.inv_curv[retry], self.backtracks[retry] = 0, 0, 0
            self._direction(retry)
        return stops

    def _direction(self, sl: torch.Tensor) -> None:
        """Two-loop recursion over each slot's own history (Nocedal & Wright, Algorithm 7.4)."""
        if sl.numel() == 0:
            return
        g = self.grad[sl]  # [n, D]
        n, M = sl.numel(), self.history_size
        newest_first = (self.pairs[sl, None] - 1 - torch.arange(M, device=self.device)[None, :]) % M  # [n, M]
        rows = torch.arange(n, device=self.device)[:, None]
        S, Y = self.steps_hist[sl][rows, newest_first], self.grads_hist[sl][rows, newest_first]  # [n, M, D]
        valid = torch.arange(M, device=self.device)[None, :] < self.pairs[sl, None]
        rho = torch.where(valid, self.inv_curv[sl][rows, newest_first], torch.zeros(()))  # [n, M]
        q = g.clone()
        alpha = torch.zeros_like(rho)
        for i in range(M):
            alpha[:, i] = rho[:, i] * (S[:, i] * q).sum(1)
            q -= alpha[:, i, None] * Y[:, i]
        has = self.pairs[sl] > 0
        r = q * torch.where(has, self.scale[sl], torch.ones_like(self.scale[sl]))[:, None]
        for i in reversed(range(M)):
            beta = rho[:, i] * (Y[:, i] * r).sum(1)
            r += S[:, i] * (alpha[:, i] - beta)[:, None]
        d = -r
        slope = (g * d).sum(1)
        bad = ~(slope < 0)  # not a descent direction: forget the history, go downhill
        if bad.any():
            d[bad] = -g[bad]
            slope[bad] = -(g[bad] * g[bad]).sum(1)
            self.pairs[sl[bad]] = 0
            has = has & ~bad
        # first step of a search (no curvature yet): move a tenth of the latent's norm, whatever the loss's scale
        # (torch.optim.LBFGS's min(1, 1/|g|_1) crawls when the loss is small, as per-pixel MSE is)
        first = FIRST_STEP * self.point[sl].norm(dim=1).clamp_min(1.0) / g.norm(dim=1).clamp_min(1e-30)
        self.direction[sl], self.slope[sl] = d, slope
        self.step[sl] = torch.where(has, torch.ones_like(slope), first) * self.lr
