"""Shared fixtures: a moto S3 server, s3fs pointed at it, one local Ray per test module, tiny audit inputs.

Everything stays on 127.0.0.1. The environment below is set when pytest imports this file, before any
Ray process starts, so Ray's workers (which inherit it) see the same fake AWS credentials and settings.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Fake credentials for moto, and nothing from the machine's own AWS set-up.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)
# Ray on loopback only, without token auth prompts or usage reporting.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # on Linux this makes Ray use 127.0.0.1 as the node address
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import logging

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise

REPO = Path(__file__).resolve().parents[1]
LATENT = 8  # the tiny generator: [B, 8] -> [B, 1, 8, 8] in [-1, 1]
SIDE = 8


@pytest.fixture(scope="session")
def moto_server():
    """An S3 endpoint URL served by moto on 127.0.0.1 (a random free port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3(moto_server):
    """An s3fs filesystem on the moto server."""
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_server}, skip_instance_cache=True)


@pytest.fixture
def bucket(s3):
    """A fresh, empty bucket name for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs, loopback) for the whole test module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------------------
# Tiny inputs


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def images(n: int, seed: int, side: int = SIDE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(side, side), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory) -> str:
    """A TorchScript generator small enough that recovery of an 8x8 image takes milliseconds."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(LATENT, SIDE * SIDE)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.fc(z.reshape(z.shape[0], -1))).reshape(-1, 1, 8, 8)  # SIDE, SIDE

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.jit.save(torch.jit.trace(Tiny().eval(), torch.zeros(2, LATENT)), str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A local data directory:
        train.parquet   12 rows: id, image (PNG bytes)
        val/*.png       6 files
        arrays.parquet  5 rows: uid, pixels (list<uint8>, 8x8), shape (list<int>)
    """
    root = tmp_path_factory.mktemp("data")
    train = images(12, seed=1)
    pq.write_table(pa.table({"id": [f"train-{i:03d}" for i in range(12)], "image": [png(a) for a in train]}),
                   root / "train.parquet", row_group_size=5)
    (root / "val").mkdir()
    for i, a in enumerate(images(6, seed=2)):
        (root / "val" / f"v{i:02d}.png").write_bytes(png(a))
    arrays = images(5, seed=3)
    pq.write_table(pa.table({
        "uid": pa.array([100 + i for i in range(5)], pa.int64()),
        "pixels": pa.array([a.reshape(-1).tolist() for a in arrays], pa.list_(pa.uint8())),
        "shape": pa.array([[SIDE, SIDE]] * 5, pa.list_(pa.int32())),
    }), root / "arrays.parquet")
    return root


def tiny_config(generator: str, **sections) -> dict:
    """A raw config dict for the tiny generator; `sections` replace whole sections."""
    config = {
        "generator": {"torchscript": generator, "latent": {"shape": [LATENT], "prior": "normal"}, "output_range": [-1, 1]},
        "targets": {},
        "recovery": {"iterations": 5, "batch_size": 16},
        "resources": {"actors": 2, "cpus_per_actor": 1},
        "stats": {"bootstrap": 0, "min_split_size": 2},
        "job": {"progress_seconds": 1, "shard_retries": 1},
    }
    config.update(sections)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
