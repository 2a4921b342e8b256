"""The bundled natural-image test subjects: what is committed loads, behaves and matches its catalog.

Built by experiments/train_natural.py (data: experiments/natural_data.py); card in
jobs/assets/models/MODEL_CARD.md.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from recovery import GeneratorSpec, LatentSpec, load_generator, to_target

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
MODELS = ASSETS / "models"
NATURAL = ASSETS / "natural"
MODEL_FILES = {"natural-dcgan.pt": [100, 1, 1], "natural-upconv.pt": [128]}  # file -> latent shape
PATCH = 64
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def catalog() -> dict:
    return json.loads((MODELS / "models.json").read_text())


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    return {split: pq.read_table(NATURAL / f"{split}.parquet") for split in ("train", "val")}


def load(name: str, catalog: dict):
    entry = catalog[name]
    latent = LatentSpec(tuple(entry["latent"]["shape"]), entry["latent"]["prior"])
    spec = GeneratorSpec(torchscript=str(MODELS / name), latent=latent, output_range=tuple(entry["output_range"]))
    return load_generator(spec, device="cpu")


def test_catalog_entries(catalog, tables):
    for name, shape in MODEL_FILES.items():
        entry = catalog[name]
        assert entry == {
            "kind": "gan",
            "latent": {"shape": shape, "prior": "normal"},
            "output_range": [-1, 1],
            "train_set": "natural/train.parquet",
            "train_size": entry["train_size"],
        }
        # The audit targets are a subsample of the (larger) training set the model saw.
        assert entry["train_size"] > tables["train"].num_rows
        assert (ASSETS / entry["train_set"]).exists()
        assert (MODELS / name).stat().st_size < 5_000_000
    records = json.loads((MODELS / "training.json").read_text())
    assert {n[:-3] for n in MODEL_FILES} <= set(records)
    card = (MODELS / "MODEL_CARD.md").read_text()
    assert all(f"## {n}" in card for n in MODEL_FILES)


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_model_loads_and_generates(name, catalog):
    g = load(name, catalog)
    assert g.output_shape == (3, PATCH, PATCH)
    assert not g.module.training, "bundled generators are saved in eval mode"
    z = torch.randn(6, *MODEL_FILES[name], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, again, one = g(z), g(z), g(z[:1])
    assert x.shape == (6, 3, PATCH, PATCH) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, again), "eval-mode generator is not deterministic"
    torch.testing.assert_close(one, x[:1], atol=1e-5, rtol=0)  # an image does not depend on its batch
    assert float(x.std()) > 0.1, "generator output is (nearly) constant"
    assert float((x[0] - x[1]).abs().mean()) > 0.05, "different latents give the same image"


@pytest.mark.parametrize("split", ["train", "val"])
def test_targets_decode(split, tables):
    table = tables[split]
    assert table.column_names[:2] == ["id", "image"]
    assert table.schema.field("id").type == pa.string() and table.schema.field("image").type == pa.binary()
    ids = table.column("id").to_pylist()
    assert len(ids) == 200 == len(set(ids))
    assert all(i.startswith("natural-") for i in ids)
    for png in table.column("image").to_pylist():
        image = Image.open(io.BytesIO(png))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (PATCH, PATCH))
        x = to_target(png, shape=(3, PATCH, PATCH), output_range=(-1.0, 1.0))
        assert x.shape == (3, PATCH, PATCH) and x.min() >= -1 and x.max() <= 1


def test_train_and_val_do_not_overlap(tables):
    train, val = (tables[s].to_pylist() for s in ("train", "val"))
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    # No held-out patch shares a pixel with a training patch of the same photo.
    for v in val:
        for t in train:
            if t["photo"] == v["photo"]:
                apart = abs(t["top"] - v["top"]) >= PATCH or abs(t["left"] - v["left"]) >= PATCH
                assert apart, f"{v['id']} overlaps {t['id']}"
    assert {r["photo"] for r in train} == {r["photo"] for r in val}, "val covers other photos than train"


def test_targets_are_rebuilt_identically():
    """The committed targets are what experiments/natural_data.py builds, and train targets are in the training set."""
    import skimage  # noqa: F401 - a test dependency: the committed patches must be rebuilt from its photos
    from experiments import natural_data

    train, train_targets, val = natural_data.build()
    assert len(train) == json.loads((MODELS / "models.json").read_text())["natural-dcgan.pt"]["train_size"]
    assert {p.id for p in train_targets} <= {p.id for p in train}
    for split, patches in (("train", train_targets), ("val", val)):
        assert natural_data.to_table(patches).equals(pq.read_table(NATURAL / f"{split}.parquet"))
