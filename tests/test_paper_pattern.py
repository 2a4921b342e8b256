"""The paper's Table 1 pattern on the bundled models, through the public API: GLO-64 memorizes, the DCGAN does not."""

import pytest

from experiments.paper_table import audit_model, row
from recovery import RecoverySettings


@pytest.mark.slow
def test_glo64_is_flagged_and_dcgan_is_not():
    settings = RecoverySettings()
    glo = audit_model("glo-64.pt", per_split=64, generated=32, settings=settings)
    r = row(glo)
    assert glo.verdict.label == "memorization", glo.verdict.sentence
    assert r["ks_p"] < 1e-3 and r["gap"] > 0.3
    # MRE-gap is a ratio of medians: at 64 images per split its sampling noise alone reaches 0.1, so use the whole val split
    gan = audit_model("dcgan.pt", per_split=300, generated=32, settings=settings)
    r = row(gan)
    assert gan.verdict.label == "no evidence", gan.verdict.sentence
    assert r["ks_p"] > 0.01 and abs(r["gap"]) < 0.1
