"""The job with the models: a conditional generator with a label column, and the discriminator check.

On a local Ray, the bundled cgan-64 (experiments/train_cgan.py) audits a few of its training digits and held-out
digits with their labels; its discriminator scores every image; discriminator.parquet, its detectors row and the
report section come out. Bad input is refused before any actor starts.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_yaml

from jobs.config import ConfigError, load_config
from jobs.driver import run_audit
from jobs.plan import make_plan
from jobs import labels_and_scores as models
from stats import read_output

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
CGAN = ASSETS / "models" / "cgan"
CLASSES = {"names": [str(i) for i in range(10)], "encoding": "one_hot"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def raw_config(**changes) -> dict:
    source = {"image_column": "image", "id_column": "id", "label_column": "label"}
    raw = {
        "generator": {"torchscript": str(CGAN / "cgan-64.pt"), "latent": {"shape": [32]}, "classes": CLASSES},
        "discriminator": {"torchscript": str(CGAN / "cgan-64-d.pt"), "conditional": True},
        "targets": {"train": [{"uri": str(ASSETS / "digits" / "train-64.parquet"), **source}],
                    "val": [{"uri": str(ASSETS / "digits" / "val.parquet"), **source}],
                    "generated": {"count": 4, "seed": 0}, "limit": 12},
        "recovery": {"protocol": "paper", "iterations": 10, "batch_size": 16},
        "resources": {"actors": 1, "cpus_per_actor": 1},
        "stats": {"bootstrap": 0, "min_split_size": 2},
        "job": {"progress_seconds": 1},
    }
    for key, value in changes.items():
        raw[key] = value
    return raw


@pytest.mark.slow
def test_conditional_audit_with_the_discriminator_check(ray_local, tmp_path):
    config = load_config(write_yaml(tmp_path / "audit.yaml", raw_config()), out=str(tmp_path / "out"))
    outcome = run_audit(config)
    assert outcome.exit_code == 0, outcome.run_info.get("error")
    out = tmp_path / "out"
    scores = pq.read_table(out / "discriminator.parquet")
    assert scores.column_names == ["image_id", "split", "score", "classified_real"]
    assert sorted(set(scores.column("split").to_pylist())) == ["generated", "train", "val"]
    assert scores.num_rows == 12 + 12 + 4
    detectors = pq.read_table(out / "detectors.parquet").to_pylist()
    row = next(r for r in detectors if r["detector"] == "discriminator")
    assert row["statistic_name"] == "auc" and row["fired"], row  # D trained on 64 digits knows them
    assert any("detector 'discriminator' fired" in r for r in outcome.reduction.verdict.reasons)
    results = read_output(str(out), columns=None)[0].to_pylist()
    train = [r for r in results if r["split"] == "train"]
    labels = dict(zip(*pq.read_table(ASSETS / "digits" / "train-64.parquet", columns=["id", "label"]).to_pydict().values()))
    assert all(r["label"] == labels[r["image_id"]] for r in train)  # each image searched in its own class
    assert outcome.run_info["search"] == {"space": "z", "style_based": False, "noise": "const", "classes": 10,
                                          "start": "prior (auto: 28 images < encoder_min_images 5000)"}
    html = (out / "report.html").read_text()
    assert "Discriminator check" in html and "Conditional generator, 10 classes" in html


def test_bad_conditional_input_is_refused_before_any_actor(tmp_path):
    unconditional = raw_config(generator={"torchscript": str(CGAN / "cgan-64.pt"), "latent": {"shape": [32]}}, discriminator=None)
    with pytest.raises(ConfigError, match=r"targets.train\[0\].label_column: the generator is unconditional"):
        load_config(write_yaml(tmp_path / "a.yaml", unconditional), out=str(tmp_path / "o"))
    few = raw_config(generator={"torchscript": str(CGAN / "cgan-64.pt"), "latent": {"shape": [32]},
                                "classes": {"names": ["0", "1", "2"], "encoding": "one_hot"}})
    config = load_config(write_yaml(tmp_path / "b.yaml", few), out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"label_column: row \d+ of .* has label \d, not one of generator.classes.names"):
        models.check_labels(config, make_plan(config))
    with pytest.raises(ConfigError, match="trust_checkpoint"):
        load_config(write_yaml(tmp_path / "c.yaml", raw_config(discriminator={"pickle": "x.pkl"})), out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="generator.space: 'w' needs a style-based generator"):
        load_config(write_yaml(tmp_path / "d.yaml", raw_config(
            generator={"builtin": "dcgan", "latent": {"shape": [32]}, "space": "w"}, discriminator=None,
            targets={"generated": {"count": 2, "seed": 0}})), out=str(tmp_path / "o"))


def test_preflight_loads_style_generators_and_checks_the_discriminator(tmp_path):
    import json

    import torch

    from jobs.preflight import load_generator_cpu
    from recovery import RecoveryError

    style = ASSETS / "models" / "style"
    entry = json.loads((style / "models.json").read_text())["style-digits.pt"]
    generator = {"factory": entry["factory"], "kwargs": entry["kwargs"], "checkpoint": str(style / "style-digits.pt"),
                 "space": "w_plus"}
    targets = {"generated": {"count": 2, "seed": 0}}
    config = load_config(write_yaml(tmp_path / "a.yaml", raw_config(generator=generator, discriminator=None, targets=targets)),
                         out=str(tmp_path / "o"))
    g = load_generator_cpu(config)
    assert g.space == "w_plus" and g.latent.shape == (entry["num_ws"], entry["w_dim"])
    two = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2)))
    torch.jit.save(two, str(tmp_path / "two.pt"))
    config = load_config(write_yaml(tmp_path / "b.yaml", raw_config(
        generator=generator, discriminator={"torchscript": str(tmp_path / "two.pt")}, targets=targets)), out=str(tmp_path / "o"))
    with pytest.raises(RecoveryError, match="one score per image"):
        load_generator_cpu(config)


def test_fingerprint_covers_the_models(tmp_path):
    from jobs.fingerprint import settings_hash

    base = load_config(write_yaml(tmp_path / "a.yaml", raw_config()), out=str(tmp_path / "o"))
    other_d = load_config(write_yaml(tmp_path / "b.yaml", raw_config(
        discriminator={"torchscript": str(CGAN / "cgan-1200-d.pt"), "conditional": True})), out=str(tmp_path / "o"))
    assert settings_hash(base) != settings_hash(other_d)  # D's scores are in the results rows
    pair = {"mapping": str(tmp_path / "m.pt"), "synthesis": str(tmp_path / "s.pt")}
    style = load_config(write_yaml(tmp_path / "c.yaml", raw_config(generator={"torchscript": pair}, discriminator=None,
                                                                    targets={"generated": {"count": 2, "seed": 0}})),
                        out=str(tmp_path / "o"))
    assert len(settings_hash(style)) == 64
