"""An output that cannot be written is a one-line error (exit 2) naming the URL, found by a write probe before
Ray starts: a file where the output directory should be, a bucket that does not exist, no S3 credentials."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, tiny_config, write_yaml

from jobs.audit import main


def _config(tmp_path, tiny_data, tiny_generator, **extra):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}]}
    return write_yaml(tmp_path / "audit.yaml", tiny_config(tiny_generator, targets=targets, **extra))


def _one_error_line(err: str, url: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: output: cannot write to ") and url in lines[0], err
    return lines[0]


def test_a_file_where_the_output_directory_should_be(tmp_path, tiny_data, tiny_generator, capsys):
    import ray

    (tmp_path / "blocker").write_text("a file, not a directory")
    out = str(tmp_path / "blocker" / "out")
    assert main(["--config", str(_config(tmp_path, tiny_data, tiny_generator)), "--out", out]) == 2
    _one_error_line(capsys.readouterr().err, out)
    assert not ray.is_initialized()


def test_a_bucket_that_does_not_exist(tmp_path, tiny_data, tiny_generator, moto_server, capsys):
    import ray

    out = "s3://no-such-bucket-memaudit/out"
    config = _config(tmp_path, tiny_data, tiny_generator, storage={"endpoint_url": moto_server})
    assert main(["--config", str(config), "--out", out]) == 2
    _one_error_line(capsys.readouterr().err, out)
    assert not ray.is_initialized()


def test_no_s3_credentials(tmp_path, tiny_data, tiny_generator, moto_server, bucket):
    """In a subprocess: s3fs caches its filesystems by options, not by environment, so this process's would
    still hold the fake moto credentials."""
    (tmp_path / "empty").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "empty"), AWS_CONFIG_FILE=str(tmp_path / "empty"),
               AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path))
    out = f"s3://{bucket}/out"
    config = _config(tmp_path, tiny_data, tiny_generator, storage={"endpoint_url": moto_server})
    proc = subprocess.run([sys.executable, "-m", "jobs.audit", "--config", str(config), "--out", out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr, out)
    assert "credentials" in line.lower()
    assert "starting a local Ray" not in proc.stdout
