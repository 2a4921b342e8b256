"""Every number in a config is finite and bounded, and YAML aliases are refused, before any cluster work."""

from __future__ import annotations

import re

import pytest
from conftest import tiny_config, write_yaml

from jobs.config import ConfigError, load_config
from jobs.limits import BOUNDS


def _load(tmp_path, tiny_generator, text: str | None = None, overrides=()):
    path = write_yaml(tmp_path / "audit.yaml", tiny_config(tiny_generator, targets={"generated": {"count": 4}}))
    if text is not None:
        path.write_text(path.read_text() + text)
    return load_config(path, out=str(tmp_path / "out"), overrides=list(overrides))


@pytest.mark.parametrize("override, field", [
    ("recovery.restarts=1.0e+12", "recovery.restarts"),
    ("targets.generated.count=1000000000000", "targets.generated.count"),
    ("stats.bootstrap=10000000000", "stats.bootstrap"),
    ("recovery.batch_size=100000000", "recovery.batch_size"),
    ("job.progress_seconds=1.0e+300", "job.progress_seconds"),
])
def test_an_absurd_number_is_refused_naming_the_field_and_its_limit(tmp_path, tiny_generator, override, field):
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: .* above the limit of {re.escape(format(BOUNDS[field], 'g'))}"):
        _load(tmp_path, tiny_generator, overrides=[override])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused_naming_the_field(tmp_path, tiny_generator, value):
    with pytest.raises(ConfigError, match=r"^stats\.alpha: expected a finite number"):
        _load(tmp_path, tiny_generator, overrides=[f"stats.alpha={value}"])
    with pytest.raises(ConfigError, match=r"^recovery\.iterations: expected an integer"):
        _load(tmp_path, tiny_generator, overrides=[f"recovery.iterations={value}"])


def test_values_at_the_limit_are_accepted(tmp_path, tiny_generator):
    config = _load(tmp_path, tiny_generator, overrides=[f"recovery.restarts={BOUNDS['recovery.restarts']}",
                                                        "recovery.seed=4294967295"])
    assert config.recovery.restarts == BOUNDS["recovery.restarts"] and config.recovery.seed == 2**32 - 1


def test_yaml_aliases_are_refused_with_their_line(tmp_path, tiny_generator):
    bomb = "\nrun:\n  tags: &a {x: [1, 2, 3]}\nlabels: &b [*a, *a, *a]\n"
    with pytest.raises(ConfigError, match=r"aliases \(\*a\) are not allowed .*line \d+"):
        _load(tmp_path, tiny_generator, bomb)
    with pytest.raises(ConfigError, match="aliases"):
        _load(tmp_path, tiny_generator, overrides=["run.tags=[&x 1, *x]"])


@pytest.mark.parametrize("glob, out", [("data/**/*.parquet", "data/audits/run-1"), ("data/*.parquet", "data")])
def test_an_output_read_by_a_source_glob_is_refused(tmp_path, tiny_generator, glob, out):
    (tmp_path / "data").mkdir()
    raw = tiny_config(tiny_generator, targets={"train": [{"uri": str(tmp_path / glob), "image_column": "image",
                                                          "id_column": "id"}]})
    with pytest.raises(ConfigError, match=r"^output: .* is read by targets.train\[0\].uri"):
        load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(tmp_path / out))
    assert load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(tmp_path / "elsewhere")).output
