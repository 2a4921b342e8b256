"""The discriminator check's statistics: does D call training images real and held-out ones fake?

Input: discriminator.parquet, one row per scored image: image_id, split, score (D's output, a logit unless the
config's threshold says otherwise), classified_real (score > threshold). Output: per split the count, mean
score and fraction classified real; for the pair (train, val) the two-sided KS test of the score samples and
the AUC, P(a train score > a val score) + P(tie) / 2, with the one-sided Mann-Whitney p-value of "train scores
are higher" (the AUC's own test). The check fires when that p-value is at most alpha: D separates the images it
was trained on from unseen ones of the same distribution, i.e. it memorized its training set (Brock et al. 2019;
"GAN Discriminators Don't Generalize?"). Its row joins detectors.parquet, so the verdict's reasons name it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as sps

from stats.detect.detectors import DetectorResult, skipped
from stats.errors import StatsError
from stats.settings import StatsSettings

DISCRIMINATOR_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("score", pa.float64()),
    ("classified_real", pa.bool_()),
])

SUMMARY_SCHEMA = pa.schema([
    ("split", pa.string()),
    ("count", pa.int64()),
    ("mean_score", pa.float64()),
    ("fraction_real", pa.float64()),
])


def check_scores(table: pa.Table) -> None:
    """discriminator.parquet must have its four columns; scores finite."""
    missing = [f.name for f in DISCRIMINATOR_SCHEMA if f.name not in table.column_names]
    if missing:
        raise StatsError(f"discriminator.parquet: missing column(s) {', '.join(missing)}")
    score = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(score).all():
        k = int(np.flatnonzero(~np.isfinite(score))[0])
        raise StatsError(f"discriminator.parquet: image {table.column('image_id')[k].as_py()!r} has a non-finite score")


def _scores(table: pa.Table, split: str) -> np.ndarray:
    return table.filter(pc.equal(table.column("split"), split)).column("score").to_numpy(zero_copy_only=False).astype(np.float64)


def discriminator_summary(table: pa.Table) -> pa.Table:
    """Per split (sorted): count, mean score and the fraction classified real."""
    check_scores(table)
    rows = []
    for split in sorted(set(table.column("split").to_pylist())):
        part = table.filter(pc.equal(table.column("split"), split))
        real = part.column("classified_real").to_numpy(zero_copy_only=False).astype(np.float64)
        rows.append({"split": split, "count": part.num_rows, "mean_score": float(np.mean(_scores(table, split))),
                     "fraction_real": float(real.mean())})
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)


def discriminator_test(table: pa.Table, settings: StatsSettings, *, a: str = "train", b: str = "val") -> DetectorResult:
    """KS and AUC of a's scores against b's; fires when a's are higher with Mann-Whitney p <= alpha."""
    check_scores(table)
    x, y = _scores(table, a), _scores(table, b)
    if len(x) == 0 or len(y) == 0:
        return skipped("discriminator", f"needs D's scores of both {a!r} and {b!r} images")
    mw = sps.mannwhitneyu(x, y, alternative="greater")
    auc = float(mw.statistic) / (len(x) * len(y))
    ks = sps.ks_2samp(x, y)
    fired = float(mw.pvalue) <= settings.alpha
    summary = {r["split"]: r for r in discriminator_summary(table).to_pylist()}
    ra, rb = summary[a]["fraction_real"], summary[b]["fraction_real"]
    reason = (f"D scores {a} images above {b} images with AUC {auc:.3f} (one-sided Mann-Whitney p = {float(mw.pvalue):.2g}; "
              f"KS {float(ks.statistic):.3f}, p = {float(ks.pvalue):.2g}); it calls {ra:.0%} of {len(x)} {a} and "
              f"{rb:.0%} of {len(y)} {b} images real"
              + (": it has memorized its training set, evidence about the generator trained against it" if fired else ""))
    return DetectorResult("discriminator", "auc", auc, 0.5, float(mw.pvalue), fired, len(x), reason)


def ks_auc(table: pa.Table, *, a: str = "train", b: str = "val") -> dict[str, float]:
    """The numbers behind the test, for the report's table: ks_statistic, ks_pvalue, auc, auc_pvalue."""
    x, y = _scores(table, a), _scores(table, b)
    if len(x) == 0 or len(y) == 0:
        return {}
    mw = sps.mannwhitneyu(x, y, alternative="greater")
    ks = sps.ks_2samp(x, y)
    return {"ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "auc": float(mw.statistic) / (len(x) * len(y)), "auc_pvalue": float(mw.pvalue)}
