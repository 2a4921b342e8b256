"""Exact k nearest neighbours in blocks, on one device.

    found = knn(queries, train, k=5, metric="l2")        # queries [Q, D], train [T, D] float32
    found.distances   # [Q, k] ascending;  found.indices  # [Q, k] rows of `train` (-1 past T)
    found.mifid_distance  # [Q] min over train of 1 - |cos(q, t)|, MiFID's per-sample memorization distance

Distances are computed a (query block x train block) tile at a time with one matmul per tile (L2 and cosine;
L1 has no matmul form and uses torch.cdist), and a running top-k per query keeps the k best seen so far: the
whole Q x T matrix is never held, so memory depends on the block sizes and not on T. The matmul form of L2
(|q|^2 + |t|^2 - 2 q.t) loses precision exactly where it matters (a copy's distance is ~0 but cancellation
leaves ~1e-3): the running set keeps a few spare candidates and their L2 distances are recomputed directly
at the end, so reported distances are exact and the ranking is exact up to float32 ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import RecoveryError

METRICS = ("l2", "l1", "cosine")
SPARE = 4  # extra candidates kept per query so that the exact recomputation can reorder near-ties


@dataclass(frozen=True)
class Neighbours:
    distances: torch.Tensor  # [Q, k] float32, ascending; inf past the train size
    indices: torch.Tensor  # [Q, k] int64 into train; -1 past the train size
    mifid_distance: torch.Tensor  # [Q] float32: min over train of 1 - |cos(q, t)| (Bai et al. 2021 take |cos|)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _tile(q: torch.Tensor, q_norm: torch.Tensor, t: torch.Tensor, metric: str,
          mifid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a ranking key [qb, tb], smaller is nearer; min over the tile of 1 - |cos| [qb] or None) of one tile.

    One matmul and as few passes over the tile as each case allows (the elementwise work, not the matmul,
    is what keeps a CPU from its matmul rate): L2 without MiFID is a single fused addmm, |t|^2 - 2 q.t (the
    query's |q|^2 does not change its ranking); cosine ranks by -q.t of unit vectors."""
    t_norm = t.norm(dim=1)  # [tb]
    if metric == "cosine":  # q is unit already
        dots = q @ _unit(t).T  # [qb, tb] cosines
        best = None
        if mifid:
            lo, hi = torch.aminmax(dots, dim=1)
            best = 1.0 - torch.maximum(hi, -lo)
        return dots.neg_(), best
    if metric == "l2" and not mifid:
        return torch.addmm((t_norm**2)[None, :].expand(len(q), -1), q, t.T, beta=1.0, alpha=-2.0), None
    scaled = q @ (t / t_norm.clamp_min(1e-12)[:, None]).T  # [qb, tb] = |q| cos
    best = None
    if mifid:
        lo, hi = torch.aminmax(scaled, dim=1)
        best = 1.0 - torch.maximum(hi, -lo) / q_norm.clamp_min(1e-12)
    if metric == "l2":  # |t|^2 - 2 |t| (|q| cos) = |t|^2 - 2 q.t
        return scaled.mul_(-2.0 * t_norm[None, :]).add_((t_norm**2)[None, :]), best
    return torch.cdist(q, t, p=1.0), best


def knn(queries: torch.Tensor, train: torch.Tensor, *, k: int = 5, metric: str = "l2", mifid: bool = True,
        query_block: int = 4096, train_block: int = 4096, device: str | torch.device | None = None) -> Neighbours:
    """The k nearest rows of `train` to every row of `queries`, exactly.

    Args:
        queries: [Q, D] float32 features (CPU or device).
        train: [T, D] float32 features.
        k: neighbours per query.
        metric: l2 | l1 | cosine (1 - cosine similarity).
        mifid: also compute each query's min over train of 1 - |cos| (MiFID's distance); else it is NaN.
        query_block, train_block: tile sizes; peak memory is a few query_block x train_block floats.
        device: where the tiles are computed (default: the queries' device).

    Returns:
        Neighbours on the CPU.
    """
    if metric not in METRICS:
        raise RecoveryError(f"neighbours.metric: {metric!r} is not one of {', '.join(METRICS)}")
    if k < 1:
        raise RecoveryError(f"neighbours.k: must be >= 1, got {k}")
    if queries.dim() != 2 or train.dim() != 2 or queries.shape[1] != train.shape[1]:
        raise RecoveryError(f"neighbours: features must be [N, D] with one D, got {list(queries.shape)} and "
                            f"{list(train.shape)}")
    device = torch.device(device) if device is not None else queries.device
    keep = k + SPARE if metric == "l2" else k
    out_d, out_i, out_c = [], [], []
    for q in queries.split(query_block):
        q = q.to(device, torch.float32)  # [qb, D]
        if metric == "cosine":
            q = _unit(q)
        q_norm = q.norm(dim=1)  # [qb]
        best_d = torch.full((len(q), keep), float("inf"), device=device)
        best_i = torch.full((len(q), keep), -1, dtype=torch.int64, device=device)
        best_c = torch.full((len(q),), float("inf") if mifid else float("nan"), device=device)
        for start in range(0, len(train), train_block):
            t = train[start:start + train_block].to(device, torch.float32)  # [tb, D]
            key, tile_mifid = _tile(q, q_norm, t, metric, mifid)
            if tile_mifid is not None:
                best_c = torch.minimum(best_c, tile_mifid)
            d, i = key.topk(min(keep, key.shape[1]), dim=1, largest=False)  # the tile's best, then merge
            both_d, both_i = torch.cat([best_d, d], 1), torch.cat([best_i, i + start], 1)
            best_d, pos = both_d.topk(keep, dim=1, largest=False)
            best_i = both_i.gather(1, pos)
        if metric == "l2":
            best_d = _exact_l2(q, train, best_i)
        elif metric == "cosine":
            best_d = (1.0 + best_d).clamp(0.0, 2.0)  # -cos -> 1 - cos
        best_d, best_i = _by_distance_then_index(best_d, best_i)
        out_d.append(best_d[:, :k].cpu())
        out_i.append(best_i[:, :k].cpu())
        out_c.append(best_c.clamp(0.0, 1.0).cpu())
    if not out_d:
        return Neighbours(torch.empty((0, k)), torch.empty((0, k), dtype=torch.int64), torch.empty((0,)))
    return Neighbours(torch.cat(out_d), torch.cat(out_i), torch.cat(out_c))


def _exact_l2(q: torch.Tensor, train: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Direct L2 distances [qb, keep] of each query's candidates (not the cancelling matmul form); inf for -1."""
    valid = cand >= 0
    rows = train[cand.clamp_min(0).to(train.device)].to(q.device, torch.float32)  # [qb, keep, D]
    dist = (rows - q[:, None, :]).norm(dim=2)
    return torch.where(valid, dist, torch.full_like(dist, float("inf")))


def _by_distance_then_index(dist: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by distance, equal distances by train index, so ties do not depend on the blocks."""
    key = torch.where(idx >= 0, idx, torch.iinfo(torch.int64).max)
    order = key.argsort(dim=1, stable=True)
    dist, idx = dist.gather(1, order), idx.gather(1, order)
    order = dist.argsort(dim=1, stable=True)
    return dist.gather(1, order), idx.gather(1, order)
