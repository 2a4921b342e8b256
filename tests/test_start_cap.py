"""The start cap: an image not in G's range stops after the starts that find an in-range image with the
recall asked for, measured on the generated split; train and val are treated alike."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recovery import GeneratorSpec, LatentSpec, RecoveryError, RecoverySettings, load_generator, recover, sample_generated
from stats import measure_start_cap


@pytest.fixture(scope="module")
def glo():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "models" / "glo-64.pt"
    return load_generator(GeneratorSpec(torchscript=str(path), latent=LatentSpec((32,), "sphere")), device="cpu")


def test_a_capped_search_is_the_uncapped_one_cut_after_the_cap(glo):
    ids = [f"noise-{i}" for i in range(4)]
    noise = torch.rand((4, 1, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1  # far from G's range
    free = recover(glo, noise, ids, settings=RecoverySettings(start_cap=None, budget=600))
    capped = recover(glo, noise, ids, settings=RecoverySettings(start_cap=2, budget=600))
    assert capped.column("restarts").to_pylist() == [2] * 4
    assert min(free.column("restarts").to_pylist()) > 2  # uncapped, they restart until the budget is gone
    assert sum(capped.column("evaluations").to_pylist()) < sum(free.column("evaluations").to_pylist()) / 2
    # The first two starts are the same seeded starts: a capped error is the best of the free search's first two.
    assert all(c >= f for c, f in zip(capped.column("mse").to_pylist(), free.column("mse").to_pylist()))
    alone = recover(glo, noise[[2, 0]], [ids[2], ids[0]], settings=RecoverySettings(start_cap=2, budget=600))
    assert alone.column("restarts").to_pylist() == [2, 2]  # its own batch: the same stop (errors to float32 rounding)
    assert alone.column("mse").to_pylist() == pytest.approx([capped.column("mse")[2].as_py(), capped.column("mse")[0].as_py()], rel=1e-5)


def test_a_recovered_image_is_untouched_by_the_cap(glo):
    ids = [f"gen-{i}" for i in range(6)]
    _, x = sample_generated(glo, ids, seed=0)
    free = recover(glo, x, ids, settings=RecoverySettings(start_cap=None))
    capped = recover(glo, x, ids, settings=RecoverySettings(start_cap=max(free.column("restarts").to_pylist())))
    assert capped.drop_columns(["seconds"]).equals(free.drop_columns(["seconds"]))


@pytest.mark.parametrize("value", ["sometimes", 0, -3, True])
def test_a_bad_start_cap_names_the_field(value):
    with pytest.raises(RecoveryError, match="recovery.start_cap"):
        RecoverySettings(start_cap=value)
    with pytest.raises(RecoveryError, match="recovery.start_cap_recall"):
        RecoverySettings(start_cap_recall=1.0)


def test_auto_is_no_cap_for_recover_alone_and_none_for_a_fixed_protocol():
    assert RecoverySettings().plan().start_cap is None  # "auto": the job measures it; recover() alone has nothing to measure on
    assert RecoverySettings(start_cap=3).plan().start_cap == 3
    assert RecoverySettings(start_cap=3, restarts=4).plan().start_cap is None  # a fixed count of starts is not capped


def _generated(starts: list[int], recovered: list[bool]) -> pa.Table:
    return pa.table({"mse": [1e-4 if r else 5e-2 for r in recovered], "restarts": starts})


def test_the_cap_finds_an_in_range_image_with_the_recall_asked_for():
    easy = measure_start_cap(_generated([1] * 64, [True] * 64), exact_level=1e-3, recall=0.99)
    assert easy.cap == 2 and easy.p_hat == 1.0 and 0.9 < easy.p_low < 1  # one start each: 2 (from the bound on p)
    assert measure_start_cap(_generated([1] * 64, [True] * 64), exact_level=1e-3).cap == 3  # the default recall, 0.999
    rng = np.random.default_rng(0)
    starts = rng.geometric(0.5, 64)  # each start finds the image with probability 1/2
    hard = measure_start_cap(_generated(starts.tolist(), [True] * 64), exact_level=1e-3, recall=0.99)
    assert hard.cap >= max(starts)  # every generated image the free search recovered stays recovered
    assert (1 - hard.p_low) ** hard.cap <= 0.01 and 0.35 < hard.p_low < hard.p_hat
    assert measure_start_cap(_generated(starts.tolist(), [True] * 64), exact_level=1e-3, recall=0.999).cap > hard.cap
    # Unrecovered images count all their starts as failures: the rate goes down, the cap up.
    censored = measure_start_cap(_generated(starts.tolist() + [20] * 8, [True] * 64 + [False] * 8), exact_level=1e-3)
    assert censored.p_hat < hard.p_hat and censored.cap >= hard.cap


def test_nothing_recovered_means_no_cap_and_says_why():
    none = measure_start_cap(_generated([9] * 5, [False] * 5), exact_level=1e-3)
    assert none.cap is None and "no generated image was recovered" in none.reason
    assert measure_start_cap(_generated([], []), exact_level=1e-3).cap is None


@pytest.mark.slow
def test_the_job_measures_the_cap_on_the_generated_split_and_a_resume_keeps_it(ray_local, tiny_data, tiny_generator, tmp_path):
    """start_cap auto: generated shards first, uncapped; the real shards get the measured cap, in every invocation."""
    import pyarrow.compute as pc
    from conftest import tiny_config, write_yaml

    from jobs.config import load_config
    from jobs.driver import run_audit
    from stats import read_output

    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 6, "seed": 0}, "shard_size": 4}
    raw = tiny_config(tiny_generator, targets=targets, recovery={"budget": 400, "batch_size": 16})
    path = write_yaml(tmp_path / "audit.yaml", raw)
    straight = run_audit(load_config(path, out=str(tmp_path / "straight")))
    cap = straight.run_info["search"]["start_cap"]
    assert straight.exit_code == 0 and isinstance(cap["cap"], int) and cap["images"] == 6 and cap["recovered"] >= 1
    results, _, _, _ = read_output(str(tmp_path / "straight"), columns=None)
    real = results.filter(pc.invert(pc.equal(results.column("split"), "generated")))
    assert max(real.column("restarts").to_pylist()) <= cap["cap"]  # no real image ran past the cap
    unrecovered = real.filter(pc.greater(real.column("mse"), 1e-3))
    assert cap["cap"] in unrecovered.column("restarts").to_pylist()  # unrecovered images ran up to the cap
    # A resume that ran only the first shard (a generated one) measures the same cap from the stored parts.
    config = load_config(path, out=str(tmp_path / "resumed"))
    assert run_audit(config, max_shards=1).run_info["status"] == "partial"
    resumed = run_audit(config)
    assert resumed.run_info["search"]["start_cap"] == cap
    again, _, _, _ = read_output(str(tmp_path / "resumed"), columns=None)
    key = [("split", "ascending"), ("image_id", "ascending")]
    assert again.drop_columns(["seconds"]).sort_by(key).equals(results.drop_columns(["seconds"]).sort_by(key))
