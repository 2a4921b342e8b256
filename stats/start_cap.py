"""How many starts an image in the generator's range needs: the search's start cap, measured.

An unseen real image is not in G's range: it never reaches the exact level, so an adaptive search
restarts it until its evaluation budget is gone, although its own error stops improving after a few
starts. A training image that G copies is in G's range, like a generated image, and each start finds
it with some probability p; before that start its failed starts look like a real image's. So the
number of starts that matters is the one that finds an in-range image with high probability, and
the generated split, searched first without a cap, measures it on this generator with this search:

    S = max( ceil(log(1 - recall) / log(1 - p_low)),  the most starts any recovered generated image needed )

p_low is the one-sided Clopper-Pearson lower bound (at `confidence`) on the per-start success rate
p = recovered images / starts run over the generated split (a geometric model; unrecovered images are
censored: all their starts count as failures). The empirical maximum keeps every generated image that
the uncapped search recovered recovered under the cap, so the generated gate certifies the search that
train and val get. The cap never looks at train or val, so it treats them alike: under no memorization
their errors stay exchangeable and the verdict's calibration holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from scipy import stats as st

from stats.columns import numeric
from stats.errors import StatsError


@dataclass(frozen=True)
class StartCap:
    """The measured cap and what it rests on (recorded in run.json)."""

    cap: int | None  # starts per unrecovered image; None: no cap (nothing recovered to measure on)
    images: int  # generated images measured
    recovered: int  # of them, below exact_level
    starts: int  # starts run over them
    p_hat: float  # recovered / starts
    p_low: float  # its lower confidence bound
    most_needed: int  # the most starts a recovered image needed
    recall: float
    confidence: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def measure_start_cap(generated: pa.Table, *, exact_level: float, recall: float = 0.999,
                      confidence: float = 0.95) -> StartCap:
    """The start cap from the generated split's results (columns mse, restarts), searched without a cap."""
    for name in ("mse", "restarts"):
        if name not in generated.column_names:
            raise StatsError(f"start cap: the generated results have no {name!r} column")
    if not 0 < recall < 1 or not 0 < confidence < 1:
        raise StatsError(f"start cap: recall and confidence must be in (0, 1), got {recall}, {confidence}")
    mse = np.nan_to_num(numeric(generated, "mse"), nan=np.inf)  # [N]
    starts = np.nan_to_num(numeric(generated, "restarts")).astype(np.int64)  # [N]
    ok = mse <= exact_level
    n, hits, trials = len(mse), int(ok.sum()), int(starts.sum())
    if hits == 0 or trials == 0:
        return StartCap(None, n, hits, trials, 0.0, 0.0, 0, recall, confidence,
                        "no generated image was recovered, so there is nothing to measure the cap on; "
                        "every unrecovered image runs its whole budget")
    p_hat = hits / trials
    p_low = float(st.beta.ppf(1 - confidence, hits, trials - hits + 1))  # one-sided Clopper-Pearson
    geometric = 1 if p_low >= 1 else math.ceil(math.log(1 - recall) / math.log1p(-p_low))
    most = int(starts[ok].max())
    cap = max(geometric, most)
    reason = (f"{hits} of {n} generated images recovered in {trials} starts (p = {p_hat:.2f}, "
              f"{confidence:.0%} lower bound {p_low:.2f}): {geometric} starts find an in-range image with "
              f"probability {recall:g}; the hardest recovered one needed {most}")
    return StartCap(cap, n, hits, trials, p_hat, p_low, most, recall, confidence, reason)
