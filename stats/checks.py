"""Checks that a set of results can be judged at all, shared by the job and `memaudit report`.

The job runs them before it reduces, and `memaudit report OUT` runs them again before it
writes a verdict, so an output that is incomplete or whose held-out split holds training
images gets no verdict either way. Stats cannot import jobs: the job passes the
planned counts in, and `memaudit report` takes them from run.json's ``plan.images``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stats.errors import StatsError

EXAMPLES = 3


def check_complete(results: pa.Table, rejects: pa.Table | None, planned: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Every planned image is exactly one results row or one rejects row (DESIGN.md §5).

    Returns per split {"images", "results", "rejects", "failures"} (failures: rejects of
    stage "recover"). Raises StatsError naming the first split whose rows do not add up.
    """
    counts = {}
    for split, expected in planned.items():
        mine = results.filter(pc.equal(results.column("split"), split))
        ids = [mine.column("image_id").combine_chunks().cast(pa.string())]
        n_rejects, failures = 0, 0
        if rejects is not None and rejects.num_rows:
            theirs = rejects.filter(pc.equal(rejects.column("split"), split))
            n_rejects = theirs.num_rows
            if "image_id" in theirs.column_names:
                ids.append(theirs.column("image_id").combine_chunks().cast(pa.string()))
            if "stage" in theirs.column_names:
                failures = int(pc.sum(pc.equal(theirs.column("stage"), "recover")).as_py() or 0)
        every = pa.concat_arrays(ids)
        repeated = len(every) - pc.count_distinct(every).as_py()
        if mine.num_rows + n_rejects != expected or repeated:
            raise StatsError(
                f"output: split {split} has {mine.num_rows} results and {n_rejects} rejects rows "
                f"({repeated} ids repeated) for {expected} planned images; the output is incomplete or "
                "inconsistent (finish the run by re-running the same command, or re-run with --overwrite)"
            )
        counts[split] = {"images": expected, "results": mine.num_rows, "rejects": n_rejects, "failures": failures}
    return counts


def overlaps(results: pa.Table, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Messages, one per memorization pair (a, b), for b-images that are also a-images.

    By id always, and by content through ``target_hash`` (the hash of the image as audited)
    when the results carry it. A held-out image that is a training image makes the test
    meaningless.
    """
    problems = []
    split = results.column("split")
    for a, b in pairs:
        in_a = results.filter(pc.equal(split, a))
        in_b = results.filter(pc.equal(split, b))
        if not in_a.num_rows or not in_b.num_rows:
            continue
        for column, what, how in (("image_id", "ids", ""), ("target_hash", "content", " (by target_hash)")):
            if column not in results.column_names:
                continue
            values_a = in_a.column(column).combine_chunks().cast(pa.string())
            shared = pc.is_in(in_b.column(column).cast(pa.string()), value_set=values_a)
            found = in_b.filter(shared).column("image_id").to_pylist()
            if found:
                problems.append(
                    f"{len(found)} {b} images have the same {what} as {a} images{how}, e.g. {found[:EXAMPLES]}; "
                    f"a held-out image must not be a training image"
                )
                break
    return problems


def planned_counts(run_info: Mapping[str, Any] | None) -> dict[str, int] | None:
    """run.json's plan.images (split -> planned images), or None when there is none."""
    plan = run_info.get("plan") if isinstance(run_info, Mapping) else None
    images = plan.get("images") if isinstance(plan, Mapping) else None
    if not isinstance(images, Mapping) or not all(isinstance(v, int) for v in images.values()):
        return None
    return {str(k): int(v) for k, v in images.items()}


def check_output(results: pa.Table, rejects: pa.Table | None, run_info: Mapping[str, Any] | None,
                 pairs: Iterable[tuple[str, str]]) -> None:
    """What `memaudit report` checks before a verdict: completeness against run.json's plan, and overlaps."""
    planned = planned_counts(run_info)
    if planned is not None:
        check_complete(results, rejects, planned)
    problems = overlaps(results, pairs)
    if problems:
        raise StatsError(f"output: {problems[0]}; fix the sources and run the audit again (no verdict written)")
