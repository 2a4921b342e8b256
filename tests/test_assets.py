"""The bundled demo data and generators: what is committed matches what is documented.

Built by experiments/make_digits.py and experiments/train_models.py; see the model card in
jobs/assets/models/MODEL_CARD.md.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
DIGITS = ASSETS / "digits"
MODELS = ASSETS / "models"
SIZES = {"train": 1200, "val": 300, "spare": 1797 - 1500}
PREFIXES = (64, 256)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
MODEL_FILES = ("dcgan.pt", "glo-64.pt", "glo-256.pt", "glo-1200.pt")


def read(name: str) -> pa.Table:
    return pq.read_table(DIGITS / f"{name}.parquet")


@pytest.fixture(scope="module")
def catalog() -> dict:
    return json.loads((MODELS / "models.json").read_text())


@pytest.mark.parametrize("name", [*SIZES, *(f"train-{n}" for n in PREFIXES)])
def test_digits_columns_and_images(name):
    table = read(name)
    assert table.column_names == ["id", "image", "label"]
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("image").type == pa.binary()
    assert pa.types.is_integer(table.schema.field("label").type)
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("digits-") and i[7:].isdigit() for i in ids)
    assert set(table.column("label").to_pylist()) <= set(range(10))
    for png in table.column("image").to_pylist()[:8]:
        image = Image.open(io.BytesIO(png))
        assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))


def test_digits_split_sizes_and_prefixes():
    for name, size in SIZES.items():
        assert read(name).num_rows == size
    train = read("train")
    for n in PREFIXES:
        # The GLO-n training set is exactly the first n rows of train, in order.
        assert read(f"train-{n}").equals(train.slice(0, n))


def test_digits_splits_disjoint():
    ids = {name: set(read(name).column("id").to_pylist()) for name in SIZES}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["spare"]
    assert not ids["val"] & ids["spare"]
    assert len(ids["train"] | ids["val"] | ids["spare"]) == 1797
    images = {name: set(read(name).column("image").to_pylist()) for name in ("train", "val")}
    assert not images["train"] & images["val"], "an image in val is byte-identical to one in train"


def test_models_json_matches_files(catalog):
    # The natural-image models (natural-*.pt) are checked in tests/test_natural_models.py.
    catalog = {k: v for k, v in catalog.items() if not k.startswith("natural-")}
    assert set(catalog) == set(MODEL_FILES)
    assert sorted(p.name for p in MODELS.glob("*.pt") if not p.name.startswith("natural-")) == sorted(MODEL_FILES)
    for name, entry in catalog.items():
        assert set(entry) == {"latent", "output_range", "train_set", "train_size", "kind"}
        assert entry["latent"] == {"shape": [32], "prior": {"gan": "normal", "glo": "sphere"}[entry["kind"]]}
        assert entry["output_range"] == [-1, 1]
        assert pq.read_metadata(DIGITS / entry["train_set"]).num_rows == entry["train_size"]
        if entry["kind"] == "glo":
            assert name == f"glo-{entry['train_size']}.pt"
        assert (MODELS / name).stat().st_size < 2_000_000


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_loads_and_maps_latents(name, catalog):
    g = torch.jit.load(str(MODELS / name))
    assert not g.training, "bundled generators are saved in eval mode"
    z = torch.randn(5, *catalog[name]["latent"]["shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = g(z)
        one = g(z[:1])
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1
    # Eval-mode batch norm: an image does not depend on its batch neighbours.
    torch.testing.assert_close(one, x[:1], atol=1e-5, rtol=0)
    assert float(x.std()) > 0.1, "generator output is (nearly) constant"


@pytest.mark.slow
def test_glo_reproduces_a_training_image():
    """GLO-64 memorizes: some latent reproduces its first training image closely (cheap check)."""
    g = torch.jit.load(str(MODELS / "glo-64.pt"))
    png = read("train-64").column("image")[0].as_py()
    target = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 127.5 - 1.0)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 32, generator=gen)
    z = (z / z.norm(dim=1, keepdim=True)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(150):
        err = ((g(z)[:, 0] - target) ** 2).flatten(1).mean(1)  # [8], independent per start
        opt.zero_grad()
        err.sum().backward()
        opt.step()
    assert float(err.detach().min()) < 2e-3
