"""Diffusion models (generator.diffusers): loading, the per-image statistics, and the audit's verdict on the two
bundled DDPMs (jobs/assets/models/ddpm-64 memorizes its 64 training digits, ddpm-1200 does not).

The statistics run with 10 DDIM steps (the default is 50) and on subsets, so the module stays well under a
minute on 2 cores; the end-to-end job is marked slow.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("diffusers")

from recovery import GeneratorSpec, RecoveryError, RecoverySettings, load_generator, sample_generated, to_target  # noqa: E402
from recovery.diffusion_stats import audit_diffusion  # noqa: E402
from recovery.settings import DiffusionSettings  # noqa: E402
from stats import StatsSettings, reduce  # noqa: E402

from conftest import tiny_config, write_yaml  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
MODELS = ASSETS / "models"
FAST = DiffusionSettings(steps=10)
SUBJECT = {"steps": 4, "timesteps": (50, 100, 200), "noises": 1}  # 15 UNet evaluations per image


def _model(name: str, **diffusion) -> object:
    return load_generator(GeneratorSpec(diffusers=str(MODELS / name), diffusion=replace(FAST, **diffusion)), device="cpu")


def _digits(name: str, n: int, start: int = 0) -> tuple[list[str], torch.Tensor]:
    table = pq.read_table(ASSETS / "digits" / name).slice(start, n)
    x = torch.stack([to_target(b, shape=(1, 16, 16)) for b in table.column("image").to_pylist()])
    return [str(i) for i in table.column("id").to_pylist()], x  # [n, 1, 16, 16] in [-1, 1]


def _audit(g, splits: dict) -> pa.Table:
    parts = []
    for split, (ids, x) in splits.items():
        t = audit_diffusion(g, x, ids, settings=RecoverySettings(seed=0))
        parts.append(t.append_column("split", pa.array([split] * t.num_rows)))
    return pa.concat_tables(parts)


def _auc(results: pa.Table, column: str) -> float:
    train = results.filter(pc.equal(results.column("split"), "train")).column(column).to_numpy()
    val = results.filter(pc.equal(results.column("split"), "val")).column(column).to_numpy()
    return float((train[:, None] < val[None, :]).mean())


# --- loading ------------------------------------------------------------------------------------------------


def test_a_bundled_ddpm_loads_samples_and_stays_small():
    g = _model("ddpm-64")
    assert g.output_shape == (1, 16, 16)
    z0, images = sample_generated(g, ["a", "b"], seed=0)  # seeded noise through the DDIM sampler
    assert z0.shape == (2, 1, 16, 16) and images.shape == (2, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    z1, again = sample_generated(g, ["b"], seed=0)
    assert torch.equal(z1[0], z0[1]) and torch.allclose(again[0], images[1], atol=1e-5)  # per id, not per batch
    for name in ("ddpm-64", "ddpm-1200"):
        size = sum(p.stat().st_size for p in (MODELS / name).rglob("*") if p.is_file())
        assert size < 5_000_000, f"{name} is {size} bytes"


def test_a_folder_on_s3_loads_like_a_local_one(s3, bucket, moto_server):
    s3.put(str(MODELS / "ddpm-64") + "/", f"{bucket}/models/ddpm-64/", recursive=True)
    spec = GeneratorSpec(diffusers=f"s3://{bucket}/models/ddpm-64", diffusion=FAST)
    remote = load_generator(spec, device="cpu", storage_options={"client_kwargs": {"endpoint_url": moto_server}})
    local = _model("ddpm-64")
    z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(remote(z), local(z))


def test_missing_or_garbled_folders_are_one_clear_error(tmp_path):
    with pytest.raises(RecoveryError, match="generator.diffusers: .*nowhere is not a folder"):
        load_generator(GeneratorSpec(diffusers=str(tmp_path / "nowhere")), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecoveryError, match="neither unet/config.json .* not a diffusers folder"):
        load_generator(GeneratorSpec(diffusers=str(tmp_path / "empty")), device="cpu")
    garbled = tmp_path / "garbled"
    shutil.copytree(MODELS / "ddpm-64", garbled)
    (garbled / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RecoveryError, match="cannot load a UNet2DModel from"):
        load_generator(GeneratorSpec(diffusers=str(garbled)), device="cpu")
    (garbled / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(RecoveryError, match="bad scheduler config"):
        load_generator(GeneratorSpec(diffusers=str(garbled)), device="cpu")


def test_without_the_extra_the_error_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what `import diffusers` sees when it is not installed
    with pytest.raises(RecoveryError, match=r"needs the 'diffusion' extra: pip install memaudit\[diffusion\]"):
        load_generator(GeneratorSpec(diffusers=str(MODELS / "ddpm-64")), device="cpu")


# --- the statistics -----------------------------------------------------------------------------------------


def test_rows_depend_on_the_image_and_seed_not_on_batch_or_order():
    g = _model("ddpm-64", timesteps=(100, 200), noises=1, steps=4)
    ids, x = _digits("val.parquet", 6)
    a = audit_diffusion(g, x, ids, settings=RecoverySettings(seed=3, batch_size=6))
    b = audit_diffusion(g, x.flip(0), ids[::-1], settings=RecoverySettings(seed=3, batch_size=4))
    b = b.take(pa.array(list(range(5, -1, -1))))
    for column in ("denoise_error", "inversion_error", "proximal_error"):
        np.testing.assert_allclose(a.column(column).to_numpy(), b.column(column).to_numpy(), rtol=1e-4)
    again = audit_diffusion(g, x, ids, settings=RecoverySettings(seed=3, batch_size=6))
    assert again.drop(["seconds"]).equals(a.drop(["seconds"]))  # same config and seed: the same table
    other = audit_diffusion(g, x, ids, settings=RecoverySettings(seed=4, batch_size=6))
    assert not np.allclose(other.column("denoise_error").to_numpy(), a.column("denoise_error").to_numpy())
    assert a.column("error").equals(a.column("denoise_error"))  # the default statistic is the verdict's error


@pytest.fixture(scope="module")
def memorizing() -> pa.Table:
    return _audit(_model("ddpm-64", **SUBJECT), {"train": _digits("train-64.parquet", 32), "val": _digits("val.parquet", 48)})


@pytest.fixture(scope="module")
def generalizing() -> pa.Table:
    return _audit(_model("ddpm-1200", **SUBJECT), {"train": _digits("train.parquet", 32), "val": _digits("val.parquet", 48)})


def test_the_memorizing_model_separates_train_from_val_and_the_verdict_says_so(memorizing):
    for column in ("denoise_error", "inversion_error", "proximal_error"):
        assert _auc(memorizing, column) > 0.9, column
    verdict = reduce(memorizing, settings=StatsSettings(bootstrap=0)).verdict
    assert verdict.label == "memorization", verdict.sentence


def test_the_model_trained_on_1200_digits_gives_no_evidence(generalizing):
    verdict = reduce(generalizing, settings=StatsSettings(bootstrap=0)).verdict
    assert verdict.label == "no evidence", verdict.sentence
    assert _auc(generalizing, "denoise_error") < 0.75


# --- the job ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_job_audits_a_diffusion_model_and_resumes(tmp_path, ray_local):
    from jobs.config import load_config
    from jobs.driver import run_audit
    from stats.io import read_output

    config = tiny_config("unused",
                         targets={"train": [{"uri": str(ASSETS / "digits" / "train-64.parquet"), "image_column": "image",
                                             "id_column": "id"}],
                                  "val": [{"uri": str(ASSETS / "digits" / "val.parquet"), "image_column": "image",
                                           "id_column": "id"}],
                                  "generated": {"count": 16, "seed": 0}, "limit": 24},
                         recovery={"batch_size": 32}, detectors=["recovery", "neighbours"],
                         output=str(tmp_path / "out"))
    config["generator"] = {"diffusers": str(MODELS / "ddpm-64"), "diffusion": {"steps": 10}}
    path = write_yaml(tmp_path / "audit.yaml", config)
    reduction = run_audit(load_config(path)).reduction
    assert reduction.verdict.label == "memorization", reduction.verdict.sentence
    results, rejects, _, run_info = read_output(str(tmp_path / "out"))
    assert results.num_rows == 24 + 24 + 16 and rejects.num_rows == 0
    part = pq.read_table(next((tmp_path / "out" / "results").rglob("*.parquet")))  # every column of one shard
    for column in ("denoise_error", "inversion_error", "proximal_error", "latent"):
        assert column in part.column_names
    assert part.column("error").equals(part.column("denoise_error"))  # the default statistic is the verdict's
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Extraction by generation" in html and 'id="extraction"' in html  # its copies are listed
    parts = sorted(p.name for p in (tmp_path / "out" / "results").rglob("*.parquet"))
    again = run_audit(load_config(path)).reduction  # resume: every shard is done, nothing runs again
    assert again.verdict.label == reduction.verdict.label
    assert sorted(p.name for p in (tmp_path / "out" / "results").rglob("*.parquet")) == parts
    assert run_info["config"]["generator"]["diffusers"].endswith("ddpm-64")


# --- the config ---------------------------------------------------------------------------------------------


def _config(generator: dict, stats: dict | None = None):
    from jobs.config import build_config

    source = [{"uri": str(ASSETS / "digits" / "train-64.parquet"), "image_column": "image", "id_column": "id"}]
    raw = {"generator": generator, "targets": {"train": source}, "output": "/tmp/memaudit-unused"}
    return build_config({**raw, **({"stats": stats} if stats else {})}, base_dir=str(ASSETS))


def test_the_config_names_a_bad_diffusion_field_and_turns_the_search_off():
    from jobs.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generator.diffusion.statistic: 'bogus' is not one of denoise, inversion, proximal"):
        _config({"diffusers": str(MODELS / "ddpm-64"), "diffusion": {"statistic": "bogus"}})
    with pytest.raises(ConfigError, match="generator: give exactly one of .*diffusers"):
        _config({"diffusers": str(MODELS / "ddpm-64"), "torchscript": "g.pt"})
    config = _config({"diffusers": str(MODELS / "ddpm-64")})
    assert (config.recovery.start, config.recovery.start_cap) == ("prior", None)  # nothing is searched
    assert config.stats.min_generated_success == 0.0  # no search to gate for the denoising statistic
    gated = _config({"diffusers": str(MODELS / "ddpm-64"), "diffusion": {"statistic": "inversion"}})
    assert gated.stats.min_generated_success == 0.9
    assert _config({"diffusers": str(MODELS / "ddpm-64")}, {"min_generated_success": 0.5}).stats.min_generated_success == 0.5


def test_a_glob_of_diffusers_folders_is_a_checkpoint_sweep():
    from jobs.sweep import checkpoints

    found = checkpoints(_config({"diffusers": str(MODELS / "ddpm-*")}))
    assert [name for name, _ in found] == ["ddpm-1200", "ddpm-64"]
    assert all(Path(url).is_dir() for _, url in found)


def test_dotted_diffusers_folders_keep_their_whole_names(tmp_path):
    """Folders are not files: "ddpm.v1" and "ddpm.v2" are two checkpoints, not one "ddpm" twice."""
    import shutil

    from jobs.errors import ConfigError
    from jobs.sweep import checkpoints

    for name in ("ddpm.v1", "ddpm.v2"):
        shutil.copytree(MODELS / "ddpm-64", tmp_path / name)
    found = checkpoints(_config({"diffusers": str(tmp_path / "ddpm.v*")}))
    assert [name for name, _ in found] == ["ddpm.v1", "ddpm.v2"]
    with pytest.raises(ConfigError, match="matches no folder"):
        checkpoints(_config({"diffusers": str(tmp_path / "nothing-*")}))


def test_a_diffusers_folder_is_named_and_hashed_like_a_model_file(tmp_path):
    """The report's header and the history name a diffusion model by its folder, and run.json's generator_sha256
    covers every file of the folder (a copy hashes the same; an edited file does not)."""
    import shutil
    import types

    from jobs.tracking import generator_sha256
    from stats.history.runs import generator_url, model_stem
    from stats.report.page import audit_fields

    copy = tmp_path / "ddpm-64"
    shutil.copytree(MODELS / "ddpm-64", copy)
    before = generator_sha256(types.SimpleNamespace(diffusers=str(MODELS / "ddpm-64")))
    assert before and generator_sha256(types.SimpleNamespace(diffusers=str(copy))) == before
    config = next(copy.rglob("config.json"))
    config.write_text(config.read_text() + "\n")
    assert generator_sha256(types.SimpleNamespace(diffusers=str(copy))) != before
    assert model_stem(generator_url({"diffusers": "s3://bucket/ddpm-64/"})) == "ddpm-64"
    fields = dict(audit_fields({"config": {"generator": {"diffusers": str(copy)}}, "generator_sha256": before}, None))
    assert fields["model"] == "ddpm-64" and fields["generator sha256"] == before[:12]
