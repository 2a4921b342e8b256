"""The entry points without Ray: --dry-run, one-line user errors with exit code 2, the memaudit command."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, tiny_config, write_yaml

from jobs.audit import main
from jobs.cli import main as cli


def _config(tmp_path, tiny_data, generator="g.pt", **recovery):
    raw = tiny_config(generator, targets={"val": [str(tiny_data / "val" / "*.png")], "shard_size": 4})
    raw["recovery"].update(recovery)
    return str(write_yaml(tmp_path / "audit.yaml", raw))


def test_dry_run_prints_the_plan_without_ray(tmp_path, tiny_data, tiny_generator, capsys):
    assert main(["--config", _config(tmp_path, tiny_data, tiny_generator), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "2 shards, 6 images" in out and "val: 6 images of 6 in 2 shards" in out
    assert f"output: {tmp_path / 'o'}" in out
    assert "search start: prior (auto: 6 images < encoder_min_images 5000)" in out
    assert not (tmp_path / "o").exists()


def test_dry_run_shows_the_resolved_auto_shard_size(tmp_path, tiny_data, tiny_generator, capsys):
    raw = tiny_config(tiny_generator, targets={"val": [str(tiny_data / "val" / "*.png")],
                                               "generated": {"count": 2000, "seed": 0}})  # shard_size: auto
    config = str(write_yaml(tmp_path / "audit.yaml", raw))
    outputs = []
    for actors in ("2", "1"):  # the same shards whatever the actors
        assert main(["--config", config, "--dry-run", "--actors", actors, "--out", str(tmp_path / "o")]) == 0
        outputs.append(capsys.readouterr().out)
    assert "shard size 32 (targets.shard_size auto: ceil(2006 images / 64) kept within [16, 256])" in outputs[0]
    assert "generated: 2000 images of 2000 in 63 shards" in outputs[0]
    plan = [line for line in outputs[0].splitlines() if line.startswith("fingerprint")]
    assert plan and plan[0] in outputs[1]


def test_dry_run_says_what_the_start_cap_will_be(tmp_path, tiny_data, tiny_generator, capsys):
    """Issue 23: auto is measured on the generated split; without one there is no cap; a fixed protocol has none."""
    cases = [({"generated": {"count": 4, "seed": 0}}, {"budget": 300}, "start cap: auto: measured on the generated split"),
             ({}, {"budget": 300}, "start cap: auto, but there is no generated split to measure it on: none"),
             ({}, {"budget": 300, "start_cap": 3}, "start cap: 3 starts per image that is not recovered"),
             ({}, {"iterations": 5}, "start cap: none (a fixed number of starts)")]
    for targets, recovery, expected in cases:
        raw = tiny_config(tiny_generator, targets={"val": [str(tiny_data / "val" / "*.png")], **targets}, recovery=recovery)
        config = str(write_yaml(tmp_path / "audit.yaml", raw))
        assert main(["--config", config, "--dry-run", "--out", str(tmp_path / "o")]) == 0
        assert expected in capsys.readouterr().out
    raw = tiny_config(tiny_generator, targets={"val": [str(tiny_data / "val" / "*.png")]}, recovery={"start_cap": "often"})
    assert main(["--config", str(write_yaml(tmp_path / "bad.yaml", raw)), "--dry-run"]) == 2
    assert "recovery.start_cap: must be 'auto', an int >= 1 or null, got 'often'" in capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_2(tmp_path, tiny_data, capsys):
    assert main(["--config", _config(tmp_path, tiny_data, loss="l1"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == "error: recovery.loss: 'l1' is not one of mse, mae, features\n"
    assert main(["--config", _config(tmp_path, tiny_data), "--set", "recovery.iterations=x", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: recovery.iterations: expected an integer")
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "error: config: cannot read" in capsys.readouterr().err


def test_memaudit_command_dispatches(tmp_path, tiny_data, tiny_generator, capsys):
    assert cli(["audit", "--config", _config(tmp_path, tiny_data, tiny_generator), "--dry-run"]) == 0
    assert "2 shards" in capsys.readouterr().out
    assert cli(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert cli([]) == 2


def test_python_m_jobs_audit_runs_the_same_code(tmp_path, tiny_data, tiny_generator):
    done = subprocess.run([sys.executable, "-m", "jobs.audit", "--config", _config(tmp_path, tiny_data, tiny_generator),
                           "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 shards, 6 images" in done.stdout


def test_main_puts_back_the_callers_sigterm_handler(tmp_path, tiny_data, tiny_generator):
    """memaudit handles SIGTERM as Ctrl-C while it runs; a notebook or test process that called main() gets its own
    handler back afterwards."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert main(["--config", _config(tmp_path, tiny_data, tiny_generator), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
