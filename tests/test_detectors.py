"""Companion detectors: exact kNN, feature spaces, and each statistic against a reference value,
a planted-copy case that must fire and an exchangeable case that must not."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from recovery import RecoveryError
from recovery.features import FeatureExtractor, FeatureSpec, load_feature_extractor_net
from recovery.neighbours import knn
from stats import StatsSettings
from stats.detect.companions import evaluate
from stats.detect.copying import ct_test
from stats.detect.detectors import below_min_pvalue, birthday_test, mifid_test
from stats.detect.nearest import nearest
from stats.detect.nearest import merge_neighbours



def mifid_distances(train: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The numpy oracle for the actors' MiFID distance: min over train of 1 - |cos| for each query row
    (the nearest of the signed copies +t and -t in cosine distance)."""
    if len(queries) == 0:
        return np.empty(0)
    both = np.concatenate([np.asarray(train), -np.asarray(train)])
    return np.clip(nearest(queries, both, "cosine"), 0.0, 1.0)

def _brute(q: np.ndarray, t: np.ndarray, metric: str) -> np.ndarray:
    q, t = q.astype(np.float64), t.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((q[:, None] - t[None]) ** 2).sum(-1))
    if metric == "l1":
        return np.abs(q[:, None] - t[None]).sum(-1)
    qn, tn = q / np.linalg.norm(q, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
    return 1 - qn @ tn.T


@pytest.mark.parametrize("metric", ["l2", "l1", "cosine"])
def test_knn_equals_brute_force_numpy_whatever_the_blocks(metric):
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(37, 16, generator=g), torch.randn(101, 16, generator=g)
    q[3] = t[50]  # an exact copy: distance 0, not the ~1e-3 the matmul form of L2 leaves
    want = _brute(q.numpy(), t.numpy(), metric)
    order = np.argsort(want, axis=1, kind="stable")[:, :5]
    for qb, tb in ((10, 7), (4096, 16384)):
        found = knn(q, t, k=5, metric=metric, query_block=qb, train_block=tb)
        assert (found.indices.numpy() == order).all()
        np.testing.assert_allclose(found.distances.numpy(), np.take_along_axis(want, order, 1), atol=1e-5)
    assert found.distances[3, 0].item() == pytest.approx(0.0, abs=1e-6) and found.indices[3, 0].item() == 50
    np.testing.assert_allclose(found.mifid_distance.numpy(), mifid_distances(t.numpy(), q.numpy()), atol=1e-5)


def test_knn_with_fewer_train_rows_than_k_pads_and_checks_its_inputs():
    found = knn(torch.zeros(2, 3), torch.ones(2, 3), k=4)
    assert found.indices[0].tolist() == [0, 1, -1, -1] and math.isinf(found.distances[0, 3].item())
    with pytest.raises(RecoveryError, match="neighbours.metric"):
        knn(torch.zeros(2, 3), torch.ones(2, 3), metric="hamming")


def test_feature_spaces_pixel_crop_and_a_user_network(tmp_path):
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) / 384 - 1  # [2, 3, 8, 8]
    flat = FeatureExtractor(FeatureSpec(), device="cpu")(images)
    assert flat.shape == (2, 192) and torch.equal(flat[1], images[1].flatten())
    crop = FeatureExtractor(FeatureSpec(crop=4), device="cpu")(images)
    assert crop.shape == (2, 48) and torch.equal(crop[0], images[0, :, 2:6, 2:6].flatten())
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5)))
    torch.jit.save(net, str(tmp_path / "f.pt"))
    spec = FeatureSpec(space="net", net=str(tmp_path / "f.pt"), batch_size=1)
    out = FeatureExtractor(spec, net=load_feature_extractor_net(spec.net, device="cpu"), device="cpu")(images)
    assert out.shape == (2, 5) and spec.name == "net"
    with pytest.raises(RecoveryError, match="features.crop: 9 is larger"):
        FeatureExtractor(FeatureSpec(crop=9), device="cpu")(images)
    with pytest.raises(RecoveryError, match="features.net"):
        FeatureSpec(space="net")


def test_merging_partial_top_k_of_train_blocks_equals_one_knn():
    rng = np.random.default_rng(0)
    q, t = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    ids = [f"t{i:02d}" for i in range(30)]
    parts = []
    for lo, hi in ((20, 30), (0, 10), (10, 20)):  # any order of the blocks
        found = knn(torch.from_numpy(q), torch.from_numpy(t[lo:hi]), k=3)
        parts.append(_part(found, [f"q{i:02d}" for i in range(20)], "generated", ids[lo:hi]))
    merged, mifid = merge_neighbours(pa.concat_tables(parts), k=3, space="pixel")
    whole = knn(torch.from_numpy(q), torch.from_numpy(t), k=3)
    assert merged.column("train_id").to_pylist() == [ids[i] for i in whole.indices.numpy().ravel()]
    assert merged.column("rank").to_pylist() == [1, 2, 3] * 20
    np.testing.assert_allclose(mifid.sort_by("query_id").column("mifid_distance").to_numpy(),
                               whole.mifid_distance.numpy()[np.argsort([f"q{i:02d}" for i in range(20)])], atol=1e-6)


def _part(found, query_ids, split, train_ids):
    k = found.indices.shape[1]
    return pa.table({"query_id": np.repeat(query_ids, k), "query_split": [split] * (len(query_ids) * k),
                     "train_id": [train_ids[i] if i >= 0 else None for i in found.indices.numpy().ravel()],
                     "distance": found.distances.numpy().ravel().astype(np.float64),
                     "mifid_distance": np.repeat(found.mifid_distance.numpy(), k).astype(np.float64)})


def _moons(n, rng, noise=0.2):
    a = np.linspace(0, np.pi, n // 2)
    b = np.linspace(0, np.pi, n - n // 2)
    x = np.concatenate([np.c_[np.cos(a), np.sin(a)], np.c_[1 - np.cos(b), 0.5 - np.sin(b)]])
    return x + rng.normal(0, noise, x.shape)


def test_ct_in_meehans_two_moons_setting():
    """Their figures: a KDE 'generator' with bandwidth 1e-3 copies (C_T about -17), with 10 it does not (+16)."""
    rng = np.random.default_rng(0)
    train, held_out = _moons(2000, rng), _moons(1000, rng)
    kde = lambda sigma: train[rng.integers(0, 2000, 1000)] + rng.normal(0, sigma, (1000, 2))  # noqa: E731
    copying, cells = ct_test(train, held_out, kde(1e-3), StatsSettings())
    assert copying.fired and copying.statistic < -12 and copying.count == 5
    assert cells.num_rows == 5 and abs(sum(cells.column("val_mass").to_pylist()) - 1) < 1e-9
    assert all(z < 0 for z in cells.column("z_u").to_pylist())
    wide, _ = ct_test(train, held_out, kde(10.0), StatsSettings())
    assert not wide.fired and wide.statistic > 12


def test_mifid_distance_against_a_hand_computed_toy():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    generated = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])  # 0, 1 - 1/sqrt(2), 0 (|cos| ignores the sign)
    d = mifid_distances(train, generated)
    np.testing.assert_allclose(d, [0.0, 1 - 2 ** -0.5, 0.0], atol=1e-12)
    row = mifid_test(d, StatsSettings(), reference=np.linspace(0.3, 0.6, 30))
    assert row.statistic == pytest.approx((1 - 2 ** -0.5) / 3) and row.threshold == 0.1  # 0.0976 < eps
    assert row.fired and "Bai et al.'s rule fires" in row.reason and row.count == 2
    # The paper's rule holds, but held-out images are as close: not a copy signal, so the row does not fire.
    same = mifid_test(d, StatsSettings(), reference=np.array([0.0, 0.0, 0.29, 0.0, 0.29, 0.0] * 5))
    assert not same.fired and "Bai et al.'s rule fires" in same.reason
    assert not mifid_test(np.full(5, 0.2), StatsSettings(), reference=np.full(5, 0.9)).fired  # d >= eps


def test_birthday_on_a_generator_with_a_known_small_support():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(200, 16))
    generated = support[rng.integers(0, 200, 2000)]  # 100 batches of 20: P(collision) = 1 - prod(1 - i/200) = 0.62
    real = rng.normal(size=(400, 16))
    row, pairs = birthday_test([f"g{i}" for i in range(2000)], generated, real, StatsSettings(birthday_size=20))
    assert row.fired and 0.5 < row.statistic < 0.75
    implied = float(row.reason.split("implied support about ")[1].split(" ")[0])
    assert 120 < implied < 330  # the true support is 200
    assert pairs.num_rows == 100 and pairs.column("distance")[0].as_py() == 0.0
    fresh, _ = birthday_test([f"g{i}" for i in range(400)], rng.normal(size=(400, 16)), real,
                             StatsSettings(birthday_size=20))
    assert not fresh.fired


def test_birthday_counts_pairs_so_three_batches_of_crops_fire():
    """A generator that only reproduces (noisy crops of) 400 training images, 300 samples, batches of 100: every
    batch holds a near-duplicate, but three batches could never give p <= 0.01 when batches were counted; the
    pair count does. Fresh images from the same distribution rarely fire (20 seeds)."""
    rng = np.random.default_rng(1)
    train = rng.normal(size=(400, 32))
    generated = train[rng.integers(0, 400, 300)] + rng.normal(0, 0.05, (300, 32))
    real = rng.normal(size=(600, 32))
    row, _ = birthday_test([f"g{i}" for i in range(300)], generated, real, StatsSettings())
    assert row.count == 3 and row.statistic == 1.0  # 3 of 3 batches hold a near-duplicate pair
    assert row.fired and row.p_value <= 0.002, row.reason
    fired = 0
    for seed in range(20):
        r = np.random.default_rng(100 + seed)
        fresh, _ = birthday_test([f"g{i}" for i in range(300)], r.normal(size=(300, 32)), r.normal(size=(600, 32)),
                                 StatsSettings(seed=seed))
        fired += fresh.fired
    assert fired <= 1  # alpha = 0.01: P(2 or more of 20) < 0.02


def test_exact_count_pvalue():
    assert below_min_pvalue(0, 5, 5) == 1.0
    assert below_min_pvalue(1, 10, 30) == pytest.approx(10 / 40)
    assert below_min_pvalue(2, 10, 30) == pytest.approx(10 / 40 * 9 / 39)


def _blobs(n, rng, dim=32):
    centres = np.random.default_rng(99).normal(0, 3, (8, dim))
    return (centres[rng.integers(0, 8, n)] + rng.normal(0, 1, (n, dim))).astype(np.float32)


def _evaluate(train, val, generated):
    features = {"train": ([f"t{i}" for i in range(len(train))], train),
                "val": ([f"v{i}" for i in range(len(val))], val),
                "generated": ([f"g{i}" for i in range(len(generated))], generated)}
    found = knn(torch.from_numpy(np.concatenate([val, generated])), torch.from_numpy(train), k=3)
    part = _part(found, features["val"][0] + features["generated"][0], "val", features["train"][0])
    part = part.set_column(1, "query_split", pa.array(["val"] * len(val) * 3 + ["generated"] * len(generated) * 3))
    neighbours, mifid = merge_neighbours(part, k=3, space="pixel")
    settings = StatsSettings(birthday_size=20, ct_min_generated=10)
    return evaluate(["recovery", "neighbours", "mifid", "ct", "birthday"], neighbours=neighbours, mifid=mifid,
                    features=features, settings=settings)


def test_a_generated_split_of_train_copies_is_flagged_by_every_detector_and_an_independent_one_by_none():
    rng = np.random.default_rng(1)
    train, val = _blobs(300, rng), _blobs(150, rng)
    copies = _evaluate(train, val, train[rng.integers(0, 300, 200)].copy())
    assert copies.table.column("detector").to_pylist() == ["neighbours", "mifid", "ct", "birthday"]
    assert copies.table.column("fired").to_pylist() == [True] * 4
    assert copies.table.column("count")[0].as_py() == 200  # every copy is nearer than any val image
    fresh = _evaluate(train, val, _blobs(200, rng))
    assert fresh.table.column("fired").to_pylist() == [False] * 4
    assert "Bai et al.'s rule fires" in fresh.table.column("reason")[1].as_py()  # the paper's rule alone would


def test_detectors_join_the_verdicts_reasons_and_the_report(tmp_path):
    from _tables import table_of

    from stats import reduce, render_report
    from stats.report.companions import PAIRS_SCHEMA, CompanionFiles

    rng = np.random.default_rng(2)
    train, val = _blobs(300, rng), _blobs(150, rng)
    found = _evaluate(train, val, train[rng.integers(0, 300, 200)].copy())
    results = table_of(train=rng.uniform(0.1, 1, 40), val=rng.uniform(0.1, 1, 40), generated=np.full(20, 1e-5))
    plain = reduce(results)
    reduction = reduce(results, detectors=found.table)
    assert reduction.verdict.label == plain.verdict.label == "no evidence"  # the label stays the recovery test's
    assert reduction.verdict.sentence.startswith(plain.verdict.sentence)
    assert "that disagree: neighbours, mifid, ct, birthday" in reduction.verdict.sentence
    assert any(r.startswith("detector 'ct' fired: C_T = ") for r in reduction.verdict.reasons)
    pixel = b"\x89PNG\r\n\x1a\n"  # drawn as given; the job renders real PNGs
    pairs = pa.Table.from_pylist([{"kind": "neighbours", "query_id": "g<1>", "query_split": "generated",
                                   "other_id": "t1", "other_split": "train", "distance": 0.0, "query_png": pixel,
                                   "other_png": pixel}], schema=PAIRS_SCHEMA)
    html = render_report(reduction, results=results,
                         companions=CompanionFiles(found.table, found.cells, found.birthday, pairs))
    assert '<section id="detectors">' in html and "C_T per cell" in html and "Birthday test: closest pairs" in html
    assert "g&lt;1&gt;" in html and "g<1>" not in html  # ids are escaped
    assert '<section id="detectors">' not in render_report(plain, results=results)


def test_a_new_detector_is_one_function_and_one_registry_line(monkeypatch):
    """The config accepts, the job computes inputs for, and evaluate runs a companion added to the registry."""
    from jobs.detector_config import check_detectors
    from stats.detect.companions import REGISTRY, Companion, evaluate, needs
    from stats.detect.detectors import DetectorResult

    def toy(x):
        gen_ids, _ = x.features.get(x.generated, ([], None))
        return DetectorResult("toy", "count", float(len(gen_ids)), 0.0, None, False, len(gen_ids), "counted"), {}

    from jobs.errors import ConfigError

    with pytest.raises(ConfigError, match=r"detectors\[1\]: 'toy' is not one of recovery, neighbours, mifid, ct, birthday"):
        check_detectors(["recovery", "toy"])
    monkeypatch.setitem(REGISTRY, "toy", Companion("toy", frozenset({"features", "sketch"}), toy))
    assert check_detectors(["recovery", "toy"]) == ("recovery", "toy")
    assert needs(["recovery", "toy", "neighbours"]) == {"features", "sketch", "knn"}
    found = evaluate(["recovery", "toy"], neighbours=None, mifid=None, settings=StatsSettings(),
                     features={"generated": (["g0", "g1", "g2"], np.zeros((3, 2)))})
    assert found.table.column("detector").to_pylist() == ["toy"]
    assert found.table.column("count").to_pylist() == [3]


def test_the_registry_names_what_each_companion_needs():
    from stats.detect.companions import needs

    assert needs(["neighbours"]) == {"knn"} and needs(["mifid"]) == {"knn", "mifid"}
    assert needs(["ct", "birthday"]) == {"features"} and needs(["recovery"]) == frozenset()


def test_extraction_uses_the_configured_held_out_split():
    """Copies must be nearer than any held-out image: with held-out images named `heldout`, the floor is theirs.
    g0 is a near-copy of t0 but no nearer to it than a held-out image is to its own nearest training image."""
    from stats.detect.extraction import extraction_section
    from stats.report.companions import CompanionFiles

    rows = []
    for split, qid, d1, d2, tid in (("generated", "g0", 0.5, 5.0, "t0"), ("generated", "g1", 0.1, 5.0, "t1"),
                                    ("heldout", "h0", 0.4, 5.0, "t2")):
        rows += [{"query_id": qid, "query_split": split, "rank": 1, "train_id": tid, "distance": d1},
                 {"query_id": qid, "query_split": split, "rank": 2, "train_id": "t9", "distance": d2}]
    neighbours = pa.Table.from_pylist(rows)
    companions = CompanionFiles(neighbours=neighbours)
    html = extraction_section(companions, StatsSettings(pairs=(("member", "heldout"),)))
    assert html.startswith('<section id="extraction">') and "1 training images have a near-copy" in html
    assert ">t1<" in html and ">t0<" not in html
