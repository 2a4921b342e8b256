"""The verdict: memorization, no evidence, or inconclusive (DESIGN §2, issue 3).

The paper flags overfitting when the train/val KS p-value is below 1% or the MRE-gap is
above 10%. We fire a rule only in the direction of memorization, train recovered better
than val: the KS rule needs the one-sided test (train errors smaller) to agree, and the
gap is signed. The audit is inconclusive, whatever the rules say, when the test cannot be
run or trusted: no train or val split, a split below the minimum size, or generated
images that the search does not recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from stats.settings import StatsSettings
from stats.table import GENERATED, TRAIN, VAL

MEMORIZATION = "memorization"
NO_EVIDENCE = "no evidence"
INCONCLUSIVE = "inconclusive"

RULE_KS = "ks"  # KS p-value < alpha, one-sided (train smaller) p-value < alpha
RULE_GAP = "mre_gap"  # MRE-gap > gap_threshold


@dataclass(frozen=True)
class Verdict:
    """What the audit concludes, and why.

    label: "memorization" | "no evidence" | "inconclusive".
    sentence: the conclusion in one sentence, with the numbers that decided it.
    rules_fired: the rules that fired ("ks", "mre_gap"); empty unless memorization.
    numbers: the values behind the decision (plain floats and ints; NaN when unknown).
    reasons: why the label was chosen, and caveats, one statement each.
    """

    label: str
    sentence: str
    rules_fired: tuple[str, ...] = ()
    numbers: dict[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()


def decide(summary: pa.Table, tests: pa.Table, settings: StatsSettings) -> Verdict:
    """Apply the rules to the summary and tests tables of one reduction."""
    splits = {row["split"]: row for row in summary.to_pylist()}
    pair = next((r for r in tests.to_pylist() if (r["split_a"], r["split_b"]) == (TRAIN, VAL)), None)
    numbers: dict[str, Any] = {
        "alpha": settings.alpha,
        "gap_threshold": settings.gap_threshold,
        "min_split_size": settings.min_split_size,
        "tau_generated": settings.tau_generated,
        "min_generated_success": settings.min_generated_success,
    }
    blockers: list[str] = []
    caveats: list[str] = []

    for name in (TRAIN, VAL):
        n = splits[name]["count"] if name in splits else 0
        numbers[f"n_{name}"] = n
        if name not in splits:
            blockers.append(f"there is no {name!r} split, so there is no train/val test")
        elif n < settings.min_split_size:
            blockers.append(
                f"split {name!r} has {n} recovered image{'' if n == 1 else 's'}; the train/val test needs at least "
                f"{settings.min_split_size} (min_split_size)"
            )

    generated = splits.get(GENERATED)
    if generated is None:
        caveats.append("there is no generated split, so the search was not checked on the generator's own images")
    else:
        rate = generated["success_rate"]
        numbers["generated_success_rate"] = _num(rate)
        if rate is None:
            blockers.append("the generated split has no recovered images, so the search cannot be checked")
        elif rate < settings.min_generated_success:
            blockers.append(
                f"only {rate:.0%} of generated images were recovered below tau_generated = "
                f"{settings.tau_generated:g} (at least {settings.min_generated_success:.0%} needed), "
                "so the search cannot be trusted to find training images either"
            )

    fired: list[str] = []
    if pair is not None and pair["ks_pvalue"] is not None:
        numbers.update(
            mre_train=_num(pair["mre_a"]),
            mre_val=_num(pair["mre_b"]),
            mre_gap=_num(pair["mre_gap"]),
            gap_ci_low=_num(pair["gap_ci_low"]),
            gap_ci_high=_num(pair["gap_ci_high"]),
            ks_statistic=_num(pair["ks_statistic"]),
            ks_pvalue=_num(pair["ks_pvalue"]),
            ks_one_sided_pvalue=_num(pair["ks_one_sided_pvalue"]),
            mw_pvalue=_num(pair["mw_pvalue"]),
        )
        if pair["ks_pvalue"] < settings.alpha and pair["ks_one_sided_pvalue"] < settings.alpha:
            fired.append(RULE_KS)
        if pair["mre_gap"] is not None and pair["mre_gap"] > settings.gap_threshold:
            fired.append(RULE_GAP)
        if pair["mre_gap"] is None:
            caveats.append(pair["note"] or "the MRE-gap is undefined")

    if blockers:
        if fired:
            caveats.append(f"the train/val rules alone would fire: {', '.join(_describe(r, numbers) for r in fired)}")
        return Verdict(
            label=INCONCLUSIVE,
            sentence=_sentence("Inconclusive", "; ".join(blockers)),
            rules_fired=(),
            numbers=numbers,
            reasons=tuple(blockers + caveats),
        )

    assert pair is not None  # no blocker means train and val both have results
    if fired:
        because = "; ".join(_describe(r, numbers) for r in fired)
        return Verdict(
            label=MEMORIZATION,
            sentence=_sentence("Memorization", f"train images are recovered better than val images ({because})"),
            rules_fired=tuple(fired),
            numbers=numbers,
            reasons=tuple([f"rule {r!r} fired: {_describe(r, numbers)}" for r in fired] + caveats),
        )
    checks = f"KS p = {_p(numbers['ks_pvalue'])}, MRE-gap = {_g(numbers['mre_gap'])}"
    if pair["ks_pvalue"] < settings.alpha:
        why = (
            f"train and val errors differ, but train is not recovered better "
            f"({checks}; one-sided p = {_p(numbers['ks_one_sided_pvalue'])} ≥ {settings.alpha:g})"
        )
    else:
        why = (
            f"train and val errors do not differ detectably "
            f"({checks}; p ≥ {settings.alpha:g}, gap ≤ {settings.gap_threshold:g})"
        )
    return Verdict(
        label=NO_EVIDENCE,
        sentence=_sentence("No evidence of memorization", why),
        rules_fired=(),
        numbers=numbers,
        reasons=tuple([why] + caveats),
    )


def _describe(rule: str, numbers: dict[str, Any]) -> str:
    if rule == RULE_KS:
        return (
            f"KS p = {_p(numbers['ks_pvalue'])} < {numbers['alpha']:g}, "
            f"one-sided p = {_p(numbers['ks_one_sided_pvalue'])}"
        )
    return f"MRE-gap = {_g(numbers['mre_gap'])} > {numbers['gap_threshold']:g}"


def _sentence(head: str, body: str) -> str:
    return f"{head}: {body}."


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _p(value: float) -> str:
    return f"{value:.2g}"


def _g(value: float) -> str:
    return f"{value:.3g}"
