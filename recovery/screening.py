"""Each start's first point: the best of a few seeded prior draws, scored forward-only in batches.

For a conditional G(z, c) without labels the class is screened the way starts are: every start
spreads its `screening` draws over the classes, and the optimizer starts from the best (class, draw) pair
with that class. An image's first start screens every class (at least one draw each) and ranks them; its
later starts screen its `screening` best-ranked classes, so with K classes at most `screening`, an unknown
class costs what a known one does, and a start that ends in a wrong class is followed by a fresh race.
Every draw is seeded by (seed, image id, start index), so a row still depends only on its own image.
"""

from __future__ import annotations

import numpy as np
import torch

from .objective import Objective
from .priors import stream
from .settings import RecoverySettings, SearchPlan


class Screener:
    """screen(picks [(image, start)]) -> (first points [n, D], evaluations each cost); see the module doc.

    guesses [N, m, D]: extra candidates for an image's first start (the encoder's E(x), a style G's w_avg).
    class_search: objective.labels is a per-image [N] tensor that this sets to each start's chosen class
    before the start runs (an image has one start running at a time); `chosen` records them.
    """

    def __init__(self, objective: Objective, to_latent, ids: list[str], settings: RecoverySettings, plan: SearchPlan,
                 guesses: torch.Tensor | None, *, class_search: bool = False) -> None:
        self.objective, self.to_latent, self.ids, self.settings = objective, to_latent, ids, settings
        self.k, self.guesses, self.class_search = plan.screening, guesses, class_search
        self.generator = objective.generator
        self.dim = int(np.prod(self.generator.latent.shape))
        self.chosen: dict[tuple[int, int], int] = {}  # (image, start) -> class, in a class search
        self.ranked: dict[int, list[int]] = {}  # image -> classes by its first start's screening, best first

    def __call__(self, picks: list[tuple[int, int]]) -> tuple[torch.Tensor, list[int]]:
        candidates = [self._candidates(i, r) for i, r in picks]  # per pick ([k_i, D], classes [k_i] or None)
        counts = [len(c) for c, _ in candidates]
        if max(counts) == 1 and not self.class_search:
            return torch.cat([c for c, _ in candidates]), [0] * len(picks)  # a plain draw: the optimizer's first evaluation
        device = self.generator.device
        flat = torch.cat([c for c, _ in candidates]).to(device)  # [sum k_i, D]
        index = torch.tensor([i for (i, _), n in zip(picks, counts) for _ in range(n)], device=device)
        labels = torch.cat([lab for _, lab in candidates]).to(device) if self.class_search else None
        chunk = max(1, self.settings.batch_size)
        losses = torch.cat([self._score(flat[j:j + chunk], index[j:j + chunk],
                                        labels[j:j + chunk] if labels is not None else None)
                            for j in range(0, len(flat), chunk)])
        losses = torch.nan_to_num(losses.float().cpu(), nan=float("inf")).split(counts)
        best = []
        for (i, r), (c, lab), f in zip(picks, candidates, losses):
            j = int(torch.argmin(f))  # ties go to the first candidate
            best.append(c[j])
            if self.class_search:
                self._choose(i, r, lab, f, j)
        return torch.stack(best), counts

    def _candidates(self, i: int, r: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[k_i, D] draws for image i's start r (and their classes [k_i] in a class search)."""
        gen = stream(self.settings.seed, self.ids[i], r)
        guesses = self.guesses[i] if self.guesses is not None and r == 0 else None  # [m, D]
        if not self.class_search:
            label = int(self.objective.labels[i]) if self.objective.labels is not None else None
            draws = self.generator.draw(self.k, gen, label).reshape(self.k, self.dim)
            return (draws if guesses is None else torch.cat([guesses, draws])), None
        classes = list(range(self.generator.num_classes)) if r == 0 else self.ranked[i][:self.k]
        per = max(1, self.k // len(classes))
        points, labels = [], []
        for c in classes:
            if guesses is not None:
                points.append(guesses)
                labels.append(torch.full((len(guesses),), c, dtype=torch.long))
            points.append(self.generator.draw(per, gen, c).reshape(per, self.dim))
            labels.append(torch.full((per,), c, dtype=torch.long))
        return torch.cat(points), torch.cat(labels)

    def _choose(self, i: int, r: int, labels: torch.Tensor, losses: torch.Tensor, j: int) -> None:
        """Start r of image i runs in the class of its best candidate; the first start ranks the classes."""
        c = int(labels[j])
        self.chosen[(i, r)] = c
        self.objective.labels[i] = c
        if r == 0:
            order = sorted(set(labels.tolist()), key=lambda k: (float(losses[labels == k].min()), k))
            self.ranked[i] = order

    @torch.no_grad()
    def _score(self, u: torch.Tensor, index: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        try:
            return self.objective(self.to_latent(u), index, labels)[0]
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - a draw G cannot render is never chosen; the start itself reports why
            if len(u) == 1:
                return torch.full((1,), float("inf"), device=u.device)
            return torch.cat([self._score(u[j:j + 1], index[j:j + 1], labels[j:j + 1] if labels is not None else None)
                              for j in range(len(u))])
