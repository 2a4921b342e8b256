"""cluster.yaml is a valid Ray cluster-launcher config (the schema Ray 2.60 ships) with the shape memaudit needs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml
from conftest import REPO


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)  # raises ValidationError naming the bad field


def test_cluster_yaml_has_a_cpu_head_and_spot_gpu_workers_from_zero():
    config = _config()
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [n for k, n in nodes.items() if k != config["head_node_type"]]
    assert workers and all(n["min_workers"] == 0 and n["resources"].get("GPU", 0) >= 1 for n in workers)
    assert all(n["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for n in workers)
    assert any("pip install" in c and "memaudit" in c for c in config["setup_commands"])
