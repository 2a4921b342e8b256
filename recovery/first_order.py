"""Adam and SGD with momentum per slot: one step per evaluation, each slot with its own moments.

A non-finite loss or gradient sends the slot back to its best point with fresh moments, a restarted
bias correction and half its step size, so it neither repeats the step that failed nor keeps the
momentum that carried it there.
"""

from __future__ import annotations

import torch

from .optim import CONVERGED, NONFINITE, SlotOptimizer

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
SGD_MOMENTUM = 0.9
SGD_FIRST_MOVE = 0.01  # sgd's default step: its first move is this fraction of the latent's norm


class FirstOrder(SlotOptimizer):
    """The part Adam and SGD share: moments, NaN resets, window convergence."""

    patience_factor = 10

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        S, D = self.slots, self.dim
        self.moment1 = self._zeros(S, D)  # [S, D] Adam's mean of gradients; SGD's velocity
        self.moment2 = self._zeros(S, D)  # [S, D] Adam's mean of squared gradients
        self.moment_steps = self._counter(S)  # [S] steps since the moments were last reset (bias correction)
        self.step_scale = torch.ones(S, device=self.device)  # [S] halves at every NaN reset
        self.slot_lr = self._zeros(S)  # [S] sgd's per-image step when lr is left to its default

    def reset_method(self, slot: int) -> None:
        self.moment1[slot], self.moment2[slot], self.moment_steps[slot] = 0, 0, 0
        self.step_scale[slot], self.slot_lr[slot] = 1.0, 0.0

    def advance(self, idx, points, f, mse, mae, g, ok, fresh):
        stops: dict[int, str] = {s: NONFINITE for s in idx[fresh & ~ok].tolist()}  # no finite start
        self.record_start(idx[fresh & ok])
        bad = ~ok & ~fresh
        if bad.any():  # back to the best point, fresh moments, half the step
            r = idx[bad]
            self.point[r] = self.best_point[r]
            self.moment1[r], self.moment2[r], self.moment_steps[r] = 0, 0, 0
            self.step_scale[r] *= 0.5
        step = ok  # every finite evaluation, the start's too, takes a step
        s = idx[step]
        if s.numel():
            self.loss[s], self.grad[s] = f[step], g[step]
            self.moment_steps[s] += 1
            self.point[s] = self.point[s] - self._update(s, g[step])
        iterated = (ok & ~fresh) | bad
        # converged: the best loss gained less than `tolerance` over the last `patience` iterations
        it = idx[iterated]
        n = self.iterations[it] + 1
        before = self.recent[it, n % self.patience]
        flat = (n >= self.patience) & (self.best_loss[it] >= (1 - self.rules.tolerance) * before)
        for sl in it[flat].tolist():
            stops.setdefault(sl, CONVERGED)
        return iterated, stops

    def _update(self, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Adam(FirstOrder):
    default_lr = 0.05

    def _update(self, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b1, b2 = ADAM_BETAS
        k = self.moment_steps[s].to(g.dtype)[:, None]
        self.moment1[s] = b1 * self.moment1[s] + (1 - b1) * g
        self.moment2[s] = b2 * self.moment2[s] + (1 - b2) * g * g
        direction = (self.moment1[s] / (1 - b1**k)) / ((self.moment2[s] / (1 - b2**k)).sqrt() + ADAM_EPS)
        return self.lr * self.step_scale[s, None] * direction


class SGD(FirstOrder):
    default_lr = 0.0  # unused when auto_lr: each image's first move is SGD_FIRST_MOVE of its latent's norm

    def _update(self, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        self.moment1[s] = SGD_MOMENTUM * self.moment1[s] + g
        if self.auto_lr:  # scale-free default: MSE gradients scale with the image, so size steps per image
            first = self.slot_lr[s] == 0
            self.slot_lr[s[first]] = (SGD_FIRST_MOVE * self.point[s[first]].norm(dim=1).clamp_min(1.0)
                                      / g[first].norm(dim=1).clamp_min(1e-30))
            lr = self.slot_lr[s, None]
        else:
            lr = self.lr
        return lr * self.step_scale[s, None] * self.moment1[s]
