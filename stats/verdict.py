"""The verdict: memorization, no evidence, or inconclusive (DESIGN.md §2).

The verdict is a test with a stated false-positive rate. For every memorization pair
(a, b) of ``settings.pairs`` ((train, val) by default) four rules each give a p-value
for "a is recovered better than b", all in the direction of memorization:

    ks         one-sided two-sample KS (a's errors stochastically smaller): a global shift
    mre_gap    bootstrap p-value of "MRE-gap <= gap_threshold"; it also needs the lower end
               of the gap's confidence interval above gap_threshold, never the point estimate
    images     Simes' test over the per-image p-values of stats.ranking: a few a-images
               far below everything b holds (partial memorization)
    low_count  exact hypergeometric test of the number of a-errors below b's low quantile

Holm's step-down procedure over all of them keeps the family-wise error rate at alpha:
on exchangeable splits the chance that any rule fires is at most alpha at every split
size (benchmarks/calibration.py measures it). The paper's rule (KS p < 1% or gap > 10% on
the point estimate) fires by chance 27% of the time at 64 images per split; its numbers
stay in tests.parquet and the report for comparison with the paper.

The audit is inconclusive, whatever the rules say, when the test cannot be run or
trusted: a pair's split missing or below min_split_size, or generated images that the
search does not recover. Confounds (format, size, channels) are warnings, not blockers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stats.settings import StatsSettings
from stats.inputs import GENERATED
from stats.text import ordinal

MEMORIZATION = "memorization"
NO_EVIDENCE = "no evidence"
INCONCLUSIVE = "inconclusive"

RULE_KS = "ks"
RULE_GAP = "mre_gap"
RULE_IMAGES = "images"
RULE_COUNT = "low_count"
RULES = (RULE_IMAGES, RULE_COUNT, RULE_KS, RULE_GAP)  # the order the sentence names them
P_COLUMN = {RULE_KS: "ks_one_sided_pvalue", RULE_GAP: "gap_pvalue", RULE_IMAGES: "images_pvalue",
            RULE_COUNT: "low_count_pvalue"}


@dataclass(frozen=True)
class RuleTest:
    """One rule on one pair: its p-value, Holm-adjusted p-value, and whether it fired."""

    pair: tuple[str, str]
    rule: str
    p_value: float
    adjusted: float
    fired: bool


@dataclass(frozen=True)
class Verdict:
    """What the audit concludes, and why.

    label: "memorization" | "no evidence" | "inconclusive".
    sentence: the conclusion in one sentence, with the numbers that decided it.
    rules_fired: the rules that fired ("images", "low_count", "ks", "mre_gap"); empty
        unless memorization.
    numbers: the values behind the decision for the first pair (floats, ints, the
        strongest image's id; NaN when unknown).
    reasons: why the label was chosen, and caveats, one statement each.
    tests: every rule on every pair, with Holm-adjusted p-values.
    confounds: warnings about differences between a pair's splits (format, size, channels).
    """

    label: str
    sentence: str
    rules_fired: tuple[str, ...] = ()
    numbers: dict[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    tests: tuple[RuleTest, ...] = ()
    confounds: tuple[str, ...] = ()


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values: max over j <= i of (m - j + 1) p_(j), capped at 1, in input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def decide(
    summary: pa.Table,
    tests: pa.Table,
    settings: StatsSettings,
    *,
    ranking: pa.Table | None = None,
    confounds: tuple[str, ...] = (),
    detectors: pa.Table | None = None,
) -> Verdict:
    """Apply the rules to the tables of one reduction (summary, tests, ranking) and the confound warnings.

    detectors: detectors.parquet. The companion detectors do not change the label, which stays
    the calibrated recovery test's; their outcomes join the reasons and the sentence says which agree."""
    verdict = _decide(summary, tests, settings, ranking=ranking, confounds=confounds)
    if detectors is None or detectors.num_rows == 0:
        return verdict
    return _with_detectors(verdict, detectors)


def _with_detectors(verdict: Verdict, detectors: pa.Table) -> Verdict:
    """The verdict with one reason per companion detector and a sentence on which of them agree."""
    rows = detectors.to_pylist()
    ran = [r for r in rows if not str(r["reason"]).startswith("not run")]
    fired = [r["detector"] for r in ran if r["fired"]]
    quiet = [r["detector"] for r in ran if not r["fired"]]
    if verdict.label == MEMORIZATION:
        agree, disagree = fired, quiet
    elif verdict.label == NO_EVIDENCE:
        agree, disagree = quiet, fired
    else:
        agree, disagree = [], []
    if verdict.label == INCONCLUSIVE:
        tail = f"Companion detectors that fired: {', '.join(fired) or 'none'}." if ran else ""
    else:
        tail = (f"Companion detectors that agree: {', '.join(agree) or 'none'}"
                + (f"; that disagree: {', '.join(disagree)}." if disagree else "."))
    reasons = [f"detector {r['detector']!r} {'fired' if r['fired'] else 'did not fire'}: {r['reason']}" for r in rows]
    numbers = {**verdict.numbers, "detectors_fired": ",".join(fired)}
    return Verdict(verdict.label, f"{verdict.sentence} {tail}".rstrip(), verdict.rules_fired, numbers,
                   verdict.reasons + tuple(reasons), verdict.tests, verdict.confounds)


def _decide(
    summary: pa.Table,
    tests: pa.Table,
    settings: StatsSettings,
    *,
    ranking: pa.Table | None,
    confounds: tuple[str, ...],
) -> Verdict:
    splits = {row["split"]: row for row in summary.to_pylist()}
    rows = {(r["split_a"], r["split_b"]): r for r in tests.to_pylist()}
    for (_, b), row in rows.items():
        row["min_b"] = splits[b]["min"] if b in splits else None  # the smallest reference error, for scale
    numbers: dict[str, Any] = {
        "alpha": settings.alpha,
        "gap_threshold": settings.gap_threshold,
        "fdr": settings.fdr,
        "min_split_size": settings.min_split_size,
        "tau_generated": settings.tau_generated,
        "min_generated_success": settings.min_generated_success,
    }
    blockers = _size_blockers(splits, settings, numbers)
    caveats: list[str] = []
    _generated_gate(splits.get(GENERATED), settings, numbers, blockers, caveats)
    rule_tests = _family(rows, settings)
    fired = [t for t in rule_tests if t.fired]
    first = next((rows[p] for p in settings.pairs if p in rows and rows[p]["ks_pvalue"] is not None), None)
    if first is not None:
        _pair_numbers(first, ranking, numbers)
        if first["mre_gap"] is None:
            caveats.append(first["note"] or "the MRE-gap is undefined")
    caveats += [_flag_summary(rows[p], ranking, settings) for p in settings.pairs if p in rows and rows[p]["flagged"] is not None]
    caveats += list(confounds)
    common = {"numbers": numbers, "tests": tuple(rule_tests), "confounds": tuple(confounds)}

    if blockers:
        if fired:
            caveats.insert(0, "the rules alone would fire: " + "; ".join(_describe(t, rows, settings) for t in fired))
        return Verdict(INCONCLUSIVE, _sentence("Inconclusive", "; ".join(blockers)), (), reasons=tuple(blockers + caveats),
                       **common)
    if fired:
        ordered = sorted(fired, key=lambda t: (settings.pairs.index(t.pair), RULES.index(t.rule)))
        body = "; ".join(_describe(t, rows, settings) for t in ordered)
        reasons = [f"rule {t.rule!r} fired on {t.pair[0]} vs {t.pair[1]}: {_describe(t, rows, settings)} "
                   f"(Holm-adjusted p = {_p(t.adjusted)} <= alpha = {settings.alpha:g})" for t in ordered]
        names = tuple(dict.fromkeys(t.rule for t in ordered))
        return Verdict(MEMORIZATION, _sentence("Memorization", body), names, reasons=tuple(reasons + caveats), **common)
    why = _no_evidence(first, rule_tests, settings)
    return Verdict(NO_EVIDENCE, _sentence("No evidence of memorization", why), (), reasons=tuple([why] + caveats),
                   **common)


def _size_blockers(splits: dict[str, dict], settings: StatsSettings, numbers: dict[str, Any]) -> list[str]:
    blockers: list[str] = []
    for a, b in settings.pairs:
        for name in (a, b):
            n = splits[name]["count"] if name in splits else 0
            numbers[f"n_{name}"] = n
            if name not in splits:
                message = f"there is no {name!r} split, so there is no {a}/{b} test"
            elif n < settings.min_split_size:
                message = (f"split {name!r} has {n} recovered image{'' if n == 1 else 's'}; the {a}/{b} test needs "
                           f"at least {settings.min_split_size} (min_split_size)")
            else:
                continue
            if message not in blockers:
                blockers.append(message)
    return blockers


def _generated_gate(generated: dict | None, settings: StatsSettings, numbers: dict[str, Any],
                    blockers: list[str], caveats: list[str]) -> None:
    """Block the verdict when the search fails on G's own images.

    A rejected generated image (G returned NaN or raised for its latent) counts as not
    recovered: the rate is recovered / (results + rejects), so a generator that breaks on
    part of its latent space cannot pass the gate on the images it happened to produce.
    """
    if generated is None:
        caveats.append("there is no generated split, so the search was not checked on the generator's own images")
        return
    rate, count, rejected = generated["success_rate"], int(generated["count"]), int(generated["rejected"] or 0)
    if rate is None:
        numbers["generated_success_rate"] = 0.0 if rejected else None
        blockers.append("the generated split has no recovered images, so the search cannot be checked")
        return
    recovered = round(rate * count)
    rate = recovered / (count + rejected)
    numbers["generated_success_rate"] = _num(rate)
    if rate < settings.min_generated_success:
        blockers.append(
            f"only {rate:.0%} of generated images ({recovered} of {count + rejected}"
            f"{f'; {rejected} rejected' if rejected else ''}) were recovered below tau_generated = "
            f"{settings.tau_generated:g} ({generated.get('tau_column') or 'mse'}; at least "
            f"{settings.min_generated_success:.0%} needed), so the search cannot be trusted to find training images either"
        )


def _family(rows: dict[tuple[str, str], dict], settings: StatsSettings) -> list[RuleTest]:
    """Every defined (pair, rule) p-value, Holm-adjusted together; the gap rule also needs its CI."""
    members = []
    for pair in settings.pairs:
        row = rows.get(pair)
        if row is None or row["ks_pvalue"] is None:
            continue
        for rule in (RULE_KS, RULE_GAP, RULE_IMAGES, RULE_COUNT):
            value = row.get(P_COLUMN[rule])
            if value is not None and not math.isnan(value):
                members.append((pair, rule, float(value)))
    adjusted = holm([p for _, _, p in members])
    out = []
    for (pair, rule, p), adj in zip(members, adjusted):
        fired = adj <= settings.alpha
        if rule == RULE_GAP:
            low = rows[pair]["gap_ci_low"]
            fired = fired and low is not None and low > settings.gap_threshold
        out.append(RuleTest(pair, rule, p, adj, fired))
    return out


def _pair_numbers(row: dict, ranking: pa.Table | None, numbers: dict[str, Any]) -> None:
    a, b = row["split_a"], row["split_b"]
    numbers.update({
        f"mre_{a}": _num(row["mre_a"]), f"mre_{b}": _num(row["mre_b"]),
        **{k: _num(row[k]) for k in ("mre_gap", "gap_ci_low", "gap_ci_high", "gap_pvalue", "ks_statistic", "ks_pvalue",
                                     "ks_one_sided_pvalue", "mw_pvalue", "images_pvalue", "low_count_pvalue",
                                     "low_expected")},
        "low_count": row["low_count"], "flagged": row["flagged"], "tail_model": row["tail_model"],
    })
    top = _strongest(ranking, a, b)
    if top is not None:
        numbers.update(strongest_image=top["image_id"], strongest_error=top["error"],
                       strongest_pvalue=top["p_value"], strongest_qvalue=top["q_value"])
    numbers[f"min_{b}_error"] = _num(row.get("min_b"))


def _strongest(ranking: pa.Table | None, a: str, b: str) -> dict | None:
    """The first ranking row of pair (a, b): rows are sorted by p-value within a pair."""
    if ranking is None or ranking.num_rows == 0:
        return None
    mine = pc.and_(pc.equal(ranking.column("split"), a), pc.equal(ranking.column("reference"), b))
    first = pc.index(mine, True).as_py()
    return None if first < 0 else ranking.slice(first, 1).to_pylist()[0]


def _flag_summary(row: dict, ranking: pa.Table | None, settings: StatsSettings) -> str:
    a, b = row["split_a"], row["split_b"]
    text = f"{row['flagged']} of {row['n_a']} {a} images flagged at q <= {settings.fdr:g} against {b}"
    top = _strongest(ranking, a, b)
    if top is not None:
        text += (f"; the strongest is {top['image_id']} (error {_g(top['error'])}, p = {_p(top['p_value'])}, "
                 f"q = {_p(top['q_value'])}; smallest {b} error {_g(row.get('min_b'))})")
    model = "an exponential lower-tail model on the log scale" if row["tail_model"] == "exponential" else "empirical ranks"
    return text + f"; p-values beyond the {b} sample from {model}"


def _describe(test: RuleTest, rows: dict[tuple[str, str], dict], settings: StatsSettings) -> str:
    row = rows[test.pair]
    a, b = test.pair
    if test.rule == RULE_IMAGES:
        n = row["flagged"]
        if not n:  # possible when fdr < alpha: the tail test fires, no single image passes q <= fdr
            return (f"{a} images far below every {b} error are more than chance allows (Simes p = {_p(test.p_value)}), "
                    f"though none passes q <= {settings.fdr:g}")
        return (f"{n} {'training image is' if n == 1 else 'training images are'} reproduced far better than any "
                f"unseen image (q <= {settings.fdr:g}; {a} vs {b}, Simes p = {_p(test.p_value)})")
    if test.rule == RULE_COUNT:
        return (f"{row['low_count']} {a} images lie below the {ordinal(row['low_rank'])} smallest {b} error, where "
                f"{row['low_expected']:.1f} are expected (p = {_p(test.p_value)})")
    if test.rule == RULE_KS:
        return (f"{a} errors are smaller than {b} errors overall (one-sided KS p = {_p(test.p_value)}, "
                f"D = {_g(row['ks_one_sided_statistic'])}; two-sided KS p = {_p(row['ks_pvalue'])})")
    level = f"{settings.confidence:.0%}"
    return (f"MRE-gap = {_g(row['mre_gap'])}, {level} CI [{_g(row['gap_ci_low'])}, {_g(row['gap_ci_high'])}] above "
            f"{settings.gap_threshold:g} (bootstrap p = {_p(test.p_value)})")


def _no_evidence(row: dict | None, rule_tests: list[RuleTest], settings: StatsSettings) -> str:
    smallest = min(rule_tests, key=lambda t: t.adjusted, default=None)
    level = f"no rule fires at family-wise level alpha = {settings.alpha:g}"
    if row is None or smallest is None:
        return level
    checks = (f"KS p = {_p(row['ks_pvalue'])}, MRE-gap = {_g(row['mre_gap'])}; smallest Holm-adjusted p = "
              f"{_p(smallest.adjusted)} (rule {smallest.rule!r})")
    if row["ks_pvalue"] < settings.alpha and row["ks_one_sided_pvalue"] >= settings.alpha:
        return (f"{row['split_a']} and {row['split_b']} errors differ, but {row['split_a']} is not recovered better "
                f"({checks}; one-sided KS p = {_p(row['ks_one_sided_pvalue'])}); {level}")
    return f"{level} ({checks})"


def _sentence(head: str, body: str) -> str:
    return f"{head}: {body}."


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
