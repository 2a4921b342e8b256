"""Checks before Ray starts: the generator is loaded and run once on the driver's CPU (also in
--dry-run), and a local output is refused when actors may run on other nodes. Also: a source file that
cannot be read because of the store is the shard's failure, never an image's reject."""

from __future__ import annotations

import pytest
from conftest import tiny_config, write_yaml

from stats import storage
from jobs.audit import main
from jobs.config import SourceConfig, load_config
from jobs.errors import ConfigError
from jobs.preflight import check_placement
from jobs.sources import read_items


def _targets(tiny_data):
    return {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}]}


def test_a_wrong_latent_shape_is_refused_by_dry_run_without_ray(tmp_path, tiny_data, tiny_generator, capsys):
    import ray

    raw = tiny_config(tiny_generator, targets=_targets(tiny_data))
    raw["generator"]["latent"]["shape"] = [7]  # the generator takes 8
    code = main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: generator") and "Traceback" not in err
    assert not ray.is_initialized()


def _node(node_id: str, cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}  # as ray.nodes() gives them


def test_a_local_output_needs_the_actors_on_the_drivers_node(tmp_path, tiny_data, tiny_generator):
    local = load_config(write_yaml(tmp_path / "audit.yaml", tiny_config(tiny_generator, targets=_targets(tiny_data))),
                        out=str(tmp_path / "out"))
    check_placement(local, [_node("head", 4)], "head")  # one node that hosts the actors: fine
    check_placement(local, [_node("head", 4), _node("gone", 4, alive=False)], "head")
    with pytest.raises(ConfigError, match=r"output: .*out is a local path, but the cluster has 2 nodes"):
        check_placement(local, [_node("head", 4), _node("worker", 4)], "head")
    with pytest.raises(ConfigError, match="actors cannot run on the driver's node"):
        check_placement(local, [_node("head", 0)], "head")  # a CPU: 0 head: the autoscaler would add workers
    remote = load_config(tmp_path / "audit.yaml", out="s3://bucket/out")
    check_placement(remote, [_node("head", 0), _node("worker", 4)], "head")  # an object store: any cluster


def test_an_unreachable_store_fails_the_read_instead_of_rejecting_images(tiny_data, monkeypatch):
    from moto.server import ThreadedMotoServer

    import s3fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir("outage")
    for name in ("v00.png", "v01.png"):
        fs.put(str(tiny_data / "val" / name), f"outage/{name}")
    src = SourceConfig(uri="s3://outage/*.png")
    segments = [("s3://outage/v00.png", range(0, 1)), ("s3://outage/gone.png", range(0, 1))]
    items = read_items(src, segments, "/", endpoint)
    assert items[0].error is None and "FileNotFoundError" in items[1].error  # a missing file is the image's reject
    server.stop()  # the store goes away: reads fail with connection errors
    monkeypatch.setattr(storage, "RETRIES", 1)
    monkeypatch.setattr(storage, "RETRY_SECONDS", 0.01)
    with pytest.raises(storage.StorageError, match="reading s3://outage/v0.\\.png failed after 2 attempts"):
        read_items(src, segments[:1], "/", endpoint)


def test_a_feature_crop_larger_than_the_images_is_refused_by_dry_run(tmp_path, tiny_data, tiny_generator, capsys):
    raw = tiny_config(tiny_generator, targets=_targets(tiny_data))
    raw["detectors"] = ["recovery", "neighbours"]
    raw["features"] = {"space": "pixel", "crop": 9}  # the tiny generator's images are 8x8
    code = main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: features.crop: 9 is larger than the audit images (8x8)")
    raw["features"]["crop"] = 8
    assert main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--dry-run"]) == 0
