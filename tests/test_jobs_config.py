"""jobs.config: YAML + overrides -> one validated config; errors name the dotted field; the fingerprint."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_config, write_yaml

from jobs.fingerprint import settings_hash
from jobs.config import DEMO_CONFIG, ConfigError, build_config, load_config


def _load(tmp_path, raw, **kw):
    return load_config(write_yaml(tmp_path / "audit.yaml", raw), **kw)


def _base(**sections):
    raw = tiny_config("models/g.pt", **sections)
    raw["targets"] = {"train": [{"uri": "data/train.parquet", "image_column": "image", "id_column": "id"}],
                      "val": ["data/val/*.png"], "generated": {"count": 4, "seed": 1}}
    return raw


def test_demo_config_loads_with_paths_relative_to_its_file(tmp_path):
    config = load_config(None, cwd=str(tmp_path))
    assert config.generator.torchscript == str(DEMO_CONFIG.parent / "models" / "glo-64.pt")
    assert config.generator.latent.prior == "sphere" and config.generator.latent.shape == (32,)
    assert config.targets.splits["train"][0].uri == str(DEMO_CONFIG.parent / "digits" / "train-64.parquet")
    assert config.targets.generated.count == 64
    assert config.output == str(tmp_path / "memaudit-out")  # no --out, no output: ./memaudit-out
    assert config.resources.actors == 2


def test_relative_paths_resolve_against_the_yaml_and_flags_against_cwd(tmp_path):
    config = _load(tmp_path, _base(output="out"), overrides=["recovery.feature_net=f.pt", "recovery.loss=features"],
                   cwd="/somewhere")
    assert config.generator.torchscript == str(tmp_path / "models" / "g.pt")
    assert config.targets.splits["val"][0].uri == str(tmp_path / "data" / "val" / "*.png")
    assert config.output == str(tmp_path / "out")
    assert config.feature_net == "/somewhere/f.pt"
    assert _load(tmp_path, _base(), out="o2", cwd="/w").output == "/w/o2"
    s3 = _load(tmp_path, _base(output="s3://b/x/"))
    assert s3.output == "s3://b/x/"


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.update(extra=1), "extra: unknown field"),
    (lambda r: r["recovery"].update(iteration=3), "recovery.iteration: unknown field"),
    (lambda r: r["generator"]["latent"].update(size=3), "generator.latent.size: unknown field"),
    (lambda r: r["targets"]["train"][0].update(colum="x"), "targets.train[0].colum: unknown field"),
    (lambda r: r["resources"].update(gpus=1), "resources.gpus: unknown field"),
    (lambda r: r["stats"].update(alfa=0.1), "stats.alfa: unknown field"),
    (lambda r: r["job"].update(retries=1), "job.retries: unknown field"),
    (lambda r: r.update(storage={"endpoint_url": "http://x", "key": "k"}), "storage.key: unknown field"),
])
def test_unknown_fields_are_named(tmp_path, mutate, field):
    raw = _base()
    mutate(raw)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        _load(tmp_path, raw)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["recovery"].update(iterations="many"), "recovery.iterations: expected an integer, got 'many'"),
    (lambda r: r["recovery"].update(iterations=True), "recovery.iterations: expected an integer"),
    (lambda r: r["resources"].update(actors=0), "resources.actors: must be >= 1"),
    (lambda r: r["generator"]["latent"].update(shape="32"), "generator.latent.shape: expected a list"),
    (lambda r: r["generator"].update(output_range=[1, 2, 3]), "generator.output_range: expected a list of 2 values"),
    (lambda r: r["stats"].update(alpha="x"), "stats.alpha: expected a number"),
    (lambda r: r["stats"].update(alpha=2.0), "stats.alpha: 2.0 is outside"),
    (lambda r: r["targets"].update(limit=0), "targets.limit: must be >= 1"),
    (lambda r: r["targets"].update(limit={"test": 3}), "targets.limit.test: no such split"),
    (lambda r: r["targets"].update(shard_size=-1), "targets.shard_size: must be >= 1"),
    (lambda r: r["targets"].update(shard_size=0), "targets.shard_size: must be >= 1 (or auto), got 0"),
    (lambda r: r["targets"].update(shard_size="big"), "targets.shard_size: expected auto or an integer >= 1, got 'big'"),
    (lambda r: r["targets"].update(shard_size=2.5), "targets.shard_size: expected an integer"),
    (lambda r: r["targets"]["generated"].update(count="x"), "targets.generated.count: expected an integer"),
    (lambda r: r["targets"].update(train=3), "targets.train: expected a list of sources"),
    (lambda r: r["job"].update(max_reject_fraction=1.5), "job.max_reject_fraction: must be in"),
])
def test_bad_values_are_named_with_the_reason(tmp_path, mutate, message):
    raw = _base()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, raw)
    assert message in str(info.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["recovery"].update(loss="l2"), "recovery.loss: 'l2' is not one of mse, mae, features"),
    (lambda r: r["recovery"].update(optimizer="bfgs"), "recovery.optimizer: 'bfgs' is not one of lbfgs, adam, sgd"),
    (lambda r: r["recovery"].update(operator={"kind": "blur"}), "recovery.operator.kind: 'blur' is not one of"),
    (lambda r: r["generator"]["latent"].update(prior="gauss"), "generator.latent.prior: 'gauss' is not one of normal"),
    (lambda r: r["generator"].update(memory_format="nhwc"),
     "generator.memory_format: 'nhwc' is not one of auto, channels_last, contiguous"),
    (lambda r: r["targets"]["train"][0].update(format="tiff"), "targets.train[0].format: 'tiff' is not one of parquet, png"),
    (lambda r: r["targets"].update(val=["data/val/"]), "targets.val[0].format: cannot infer the format"),
])
def test_bad_choices_list_the_valid_ones(tmp_path, mutate, message):
    raw = _base()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, raw)
    assert message in str(info.value)


@pytest.mark.parametrize("source, message", [
    ({"uri": "a.parquet"}, "needs exactly one of image_column"),
    ({"uri": "a.parquet", "image_column": "i", "array_column": "a"}, "needs exactly one of image_column"),
    ({"uri": "a.parquet", "array_column": "a"}, "array_column needs exactly one of shape"),
    ({"uri": "a.parquet", "array_column": "a", "shape": [3]}, "targets.train[0].shape: expected [H, W] or [H, W, C]"),
    ({"uri": "x/*.png", "id_column": "id"}, "targets.train[0].id_column: only Parquet sources have columns"),
])
def test_source_fields_are_checked(tmp_path, source, message):
    raw = _base()
    raw["targets"]["train"] = [source]
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, raw)
    assert message in str(info.value)


def test_generator_and_recovery_checks_are_recoverys_own(tmp_path):
    raw = _base()
    raw["generator"]["builtin"] = "dcgan"
    with pytest.raises(ConfigError, match="generator: give exactly one of torchscript, factory, builtin"):
        _load(tmp_path, raw)
    raw = _base()
    raw["recovery"]["loss"] = "features"
    with pytest.raises(ConfigError, match="recovery.feature_net: loss: features needs"):
        _load(tmp_path, raw)


def test_memory_urls_are_refused_for_a_ray_job(tmp_path):
    with pytest.raises(ConfigError, match="output: memory:// is private to one process"):
        _load(tmp_path, _base(output="memory://x"))


def test_overrides_parse_yaml_values_and_reject_bad_keys(tmp_path):
    config = _load(tmp_path, _base(), overrides=["recovery.iterations=20", "targets.limit={train: 3}",
                                                  "recovery.operator={kind: pool, factor: 2}", "stats.alpha=0.05"])
    assert config.recovery.iterations == 20 and config.targets.limit == {"train": 3}
    assert config.recovery.operator.kind == "pool" and config.stats.alpha == 0.05
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        _load(tmp_path, _base(), overrides=["recovery.iterations"])
    with pytest.raises(ConfigError, match="recovery.iterations: expected an integer"):
        _load(tmp_path, _base(), overrides=["recovery.iterations=abc"])
    with pytest.raises(ConfigError, match="output: is not a section"):
        _load(tmp_path, _base(output="o"), overrides=["output.x=1"])


def test_fingerprint_covers_what_changes_results_only(tmp_path):
    base = settings_hash(_load(tmp_path, _base()))
    same = [
        _load(tmp_path, _base(), out="elsewhere"),
        _load(tmp_path, _base(resources={"actors": 7, "gpus_per_actor": 1, "cpus_per_actor": 4})),
        _load(tmp_path, _base(storage={"endpoint_url": "http://127.0.0.1:9"})),
        _load(tmp_path, _base(job={"shard_retries": 5})),
        _load(tmp_path, _base(stats={"alpha": 0.05})),
        _load(tmp_path, _base(), overrides=["recovery.batch_size=3"]),  # recover() rows do not depend on it
    ]
    assert all(settings_hash(c) == base for c in same)
    different = [
        _load(tmp_path, _base(), overrides=["recovery.iterations=6"]),
        _load(tmp_path, _base(), overrides=["recovery.seed=1"]),
        _load(tmp_path, _base(), overrides=["targets.limit=3"]),
        _load(tmp_path, _base(), overrides=["targets.shard_size=2"]),
        _load(tmp_path, _base(), overrides=["generator.latent.prior=uniform"]),
        _load(tmp_path, _base(), overrides=["targets.generated.seed=2"]),
    ]
    assert len({settings_hash(c) for c in different} | {base}) == len(different) + 1


def test_shard_size_defaults_to_auto_and_takes_auto_or_an_int(tmp_path):
    assert _load(tmp_path, _base()).targets.shard_size == "auto"
    assert _load(tmp_path, _base(), overrides=["targets.shard_size=auto"]).targets.shard_size == "auto"
    assert _load(tmp_path, _base(), overrides=["targets.shard_size=32"]).targets.shard_size == 32


def test_fingerprint_is_the_same_for_the_same_config_in_another_directory(tmp_path):
    a = settings_hash(_load(tmp_path, _base()))
    other = tmp_path / "copy"
    other.mkdir()
    b = settings_hash(load_config(write_yaml(other / "audit.yaml", _base())))
    assert a == b


def test_run_json_config_holds_no_credentials(tmp_path):
    config = _load(tmp_path, _base(storage={"endpoint_url": "http://127.0.0.1:9"}))
    text = json.dumps(config.to_dict())
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
    assert config.to_dict()["storage"] == {"endpoint_url": "http://127.0.0.1:9"}


def test_build_config_requires_generator_and_targets():
    with pytest.raises(ConfigError, match="generator: required"):
        build_config({"targets": {}, "output": "o"}, base_dir="/")
    with pytest.raises(ConfigError, match="targets: no splits"):
        build_config({"generator": _base()["generator"], "targets": {}, "output": "o"}, base_dir="/")
