"""Broken input files are named in a one-line error before Ray starts, never a traceback."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import tiny_config, write_yaml

from jobs.audit import main


def _run(tmp_path, tiny_generator, uri: str, capsys) -> tuple[int, str]:
    raw = tiny_config(tiny_generator, targets={"train": [{"uri": uri, "image_column": "image", "id_column": "id"}],
                                               "generated": {"count": 2}})
    code = main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--dry-run", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("content, reason", [(b"", "0 bytes"), (b"PAR1\x00\x01garbage", "magic bytes"),
                                             (b"\xff\xfe\x00not utf-8 at all", "magic bytes")])
def test_a_zero_byte_truncated_or_binary_parquet_file_is_named(tmp_path, tiny_generator, capsys, content, reason):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(content)
    code, err = _run(tmp_path, tiny_generator, str(bad), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: targets.train[0].uri: {bad} is not a readable Parquet file") and reason in err


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 file names itself")
def test_a_file_name_that_is_not_utf8_is_named_not_a_traceback(tmp_path, tiny_generator, tiny_data, capsys):
    raw_name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.parquet")
    with open(raw_name, "wb") as f:
        f.write((tiny_data / "train.parquet").read_bytes())
    code, err = _run(tmp_path, tiny_generator, str(tmp_path / "caf*.parquet"), capsys)
    assert code == 2 and "Traceback" not in err and "is not valid UTF-8" in err and "\\udce9" in err
