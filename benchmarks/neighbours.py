"""The blocked exact kNN of the companion detectors (recovery.neighbours.knn): time, peak memory, FLOP/s.

    python benchmarks/neighbours.py                       # 10^5 train x 10^4 queries, D = 512, 2 threads
    python benchmarks/neighbours.py --train 20000 --queries 2000 --threads 2 --device cuda

Prints, for each train size (the full one and two smaller ones, each in a fresh process so peak RSS is its
own; the full one also without MiFID's distance, which costs a pass over each tile): seconds, the kNN's
rate in matmul FLOP/s (2 Q T D flops) as a fraction of plain matmuls of the same tiles, timed alternately
with it in the same process, and the peak resident memory above the inputs. Targets: >= 60% of
the matmul rate; memory independent of the train size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(train: int, queries: int, dim: int, threads: int, device: str, query_block: int, train_block: int,
        mifid: bool, rounds: int = 2) -> dict:
    """The whole kNN, then the plain matmuls of the same tiles, `rounds` times alternately: alternating keeps
    both under the same machine load (a shared machine's load drifts)."""
    import torch

    from recovery.neighbours import knn

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(train, dim, generator=g).to(device)  # [T, D]
    q = torch.randn(queries, dim, generator=g).to(device)  # [Q, D]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    _ = q[:query_block] @ t[:train_block].T  # warm-up
    del _
    base = _rss_mb()
    knn_s = matmul_s = 0.0
    for _ in range(rounds):
        sync()
        started = time.perf_counter()
        knn(q, t, k=5, metric="l2", mifid=mifid, query_block=query_block, train_block=train_block, device=device)
        sync()
        knn_s += time.perf_counter() - started
        started = time.perf_counter()
        for qb in q.split(query_block):
            for tb in t.split(train_block):
                _ = qb @ tb.T  # [qb, tb]
        sync()
        matmul_s += time.perf_counter() - started
    flops = 2 * queries * train * dim * rounds
    return {"train": train, "queries": queries, "dim": dim, "device": device, "threads": threads,
            "seconds": knn_s / rounds,
            "knn_flops": flops / knn_s, "matmul_flops": flops / matmul_s, "fraction": matmul_s / knn_s,
            "peak_above_inputs_mb": _rss_mb() - base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--query-block", type=int, default=4096)
    parser.add_argument("--train-block", type=int, default=4096)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mifid", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.train, args.queries, args.dim, args.threads, args.device, args.query_block,
                             args.train_block, bool(args.mifid))))
        return 0
    print(f"kNN of {args.queries} queries, D = {args.dim}, k = 5, L2, {args.threads} threads, {args.device}, "
          f"tiles {args.query_block} x {args.train_block}")
    print(f"{'train':>9} {'MiFID':>6} {'seconds':>8} {'GFLOP/s':>8} {'matmul':>8} {'fraction':>8} "
          f"{'peak MB above inputs':>21}")
    for train, mifid in [(args.train // 4, 1), (args.train // 2, 1), (args.train, 1), (args.train, 0)]:
        cmd = [sys.executable, __file__, "--one", "--mifid", str(mifid), "--train", str(train), "--queries",
               str(args.queries), "--dim", str(args.dim), "--threads", str(args.threads), "--device", args.device,
               "--query-block", str(args.query_block), "--train-block", str(args.train_block)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{train:>9} {'yes' if mifid else 'no':>6} {r['seconds']:>8.2f} {r['knn_flops'] / 1e9:>8.1f} "
              f"{r['matmul_flops'] / 1e9:>8.1f} {r['fraction']:>8.0%} {r['peak_above_inputs_mb']:>21.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
