"""Conditional generators and the discriminator check on the bundled cGANs (experiments/train_cgan.py).

cgan-64 saw each of its 64 training digits ~1500 times; cgan-1200 trained on 1200. The paper's cGAN row: the
audit flags the small training set and not the large one, and each model's discriminator separates its own
training digits from held-out ones only when the training set was tiny.
"""

from __future__ import annotations

import pytest
import torch

from experiments.conditional_table import audit, load, targets, ASSETS
from recovery import RecoveryError, RecoverySettings, recover, sample_generated
from recovery.discriminator import DiscriminatorSpec, load_discriminator
from recovery.recover import generated_labels
from stats import StatsSettings

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
PAPER = RecoverySettings(protocol="paper")  # 50 L-BFGS iterations, one start (as tests/test_paper_pattern.py)


@pytest.mark.slow
def test_small_training_set_is_flagged_large_is_not():
    small, d_small = audit("cgan-64.pt", per_split=32, generated=8, settings=PAPER)
    large, d_large = audit("cgan-1200.pt", per_split=32, generated=8, settings=PAPER)
    assert small.verdict.label == "memorization", small.verdict.sentence
    assert large.verdict.label == "no evidence", large.verdict.sentence
    # The discriminator check: D trained on 64 digits calls them real and unseen digits fake; D on 1200 does not.
    assert d_small.fired and d_small.statistic > 0.9, d_small.reason
    assert not d_large.fired and d_large.statistic < 0.75, d_large.reason


def test_labels_generated_classes_and_the_class_search():
    g, _, meta = load("cgan-64.pt")
    ids = [f"generated-{i}" for i in range(3)]
    labels = generated_labels(g, ids, seed=0)
    assert labels.tolist() == generated_labels(g, ids, seed=0).tolist() and labels.dtype == torch.int64
    _, x = sample_generated(g, ids, seed=0, settings=PAPER)
    given = recover(g, x, ids, settings=PAPER, labels=labels)
    assert given.column("label").to_pylist() == labels.tolist()
    assert max(given.column("mse").to_pylist()) < 1e-2



def test_an_unknown_class_is_found_for_about_the_cost_of_a_known_one():
    """Issue 23: the class is screened with the starts instead of one full search per class (10x the cost)."""
    g, _, _ = load("cgan-64.pt")
    ids = [f"generated-{i}" for i in range(12)]
    labels = generated_labels(g, ids, seed=0)
    _, x = sample_generated(g, ids, seed=0)
    given = recover(g, x, ids, labels=labels)
    searched = recover(g, x, ids, labels=None)
    assert searched.column("label_searched").to_pylist() == [True] * 12
    assert searched.column("label").to_pylist() == labels.tolist()  # the right class for every generated image
    assert max(searched.column("mse").to_pylist()) < 1e-3
    known, unknown = (sum(t.column("evaluations").to_pylist()) for t in (given, searched))
    assert unknown <= 2 * known, (unknown, known)
    again = recover(g, x.flip(0), ids[::-1], labels=None)  # a row depends on its image only, not on its batch
    assert again.column("label").to_pylist()[::-1] == searched.column("label").to_pylist()
    assert again.column("evaluations").to_pylist()[::-1] == searched.column("evaluations").to_pylist()


def test_bad_labels_and_bad_discriminators_are_refused(tmp_path):
    g, _, _ = load("cgan-64.pt")
    _, x, y = targets(g, ASSETS / "digits" / "val.parquet", 2, 0)
    with pytest.raises(RecoveryError, match="label 10 is outside generator.classes"):
        recover(g, x, ["a", "b"], settings=PAPER, labels=torch.tensor([3, 10]))
    two = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2)))
    torch.jit.save(two, str(tmp_path / "two.pt"))
    with pytest.raises(RecoveryError, match=r"one score per image"):
        load_discriminator(DiscriminatorSpec(torchscript=str(tmp_path / "two.pt")), input_shape=(1, 32, 32))
    with pytest.raises(RecoveryError, match="trust_checkpoint: true"):
        DiscriminatorSpec(pickle="network-snapshot.pkl")
    with pytest.raises(RecoveryError, match="needs generator.classes"):
        load_discriminator(DiscriminatorSpec(torchscript=str(ASSETS / "models" / "cgan" / "cgan-64-d.pt"), conditional=True),
                           input_shape=(1, 32, 32))


def test_labels_on_an_unconditional_generator_are_refused():
    from tests.test_style_generators import spec
    from recovery import load_generator

    g = load_generator(spec(), device="cpu")
    with pytest.raises(RecoveryError, match="unconditional generator"):
        recover(g, torch.zeros(1, 1, 32, 32), ["a"], settings=PAPER, labels=[0])
