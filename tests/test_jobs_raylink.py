"""jobs.raylink: Ray's error channel kept out of the job's output, one-line reasons for lost actors, and a local
Ray started by memaudit with its auth mode set (no token warning). Only the last test starts a Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from jobs import raylink


def test_rays_error_channel_goes_to_the_debug_log_and_the_rest_passes(monkeypatch, capsys):
    from ray._private import worker

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    raylink.quiet_ray_errors()
    raylink.quiet_ray_errors()  # idempotent: wrapped once
    dump = "Raylet is terminated. Termination is unexpected.\n    [state-dump] NodeManager: ..."
    worker.print_to_stdstream({"lines": [dump], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    actor_line = {"lines": ["a line an actor printed"], "pid": 4242, "is_err": True}
    worker.print_to_stdstream(actor_line, ignore_prefix=False)
    assert printed == [actor_line]
    assert "state-dump" not in capsys.readouterr().out


def test_a_lost_actor_is_one_line_without_rays_ids():
    import ray

    unavailable = ray.exceptions.ActorUnavailableError("The actor is temporarily unavailable: RpcError", None)
    assert raylink.reason(unavailable) == "ActorUnavailableError: the connection to it was lost"
    assert raylink.reason(ray.exceptions.ActorDiedError()) == "ActorDiedError: it died"


@pytest.mark.slow
def test_a_local_ray_started_by_memaudit_sets_its_auth_mode_so_ray_prints_no_token_warning(tmp_path):
    """With RAY_AUTH_MODE unset, Ray 2.60 turns token auth on for a new local instance and warns on every run;
    jobs.audit._connect sets the mode to that default explicitly (the token lands in this test's HOME)."""
    script = ("import os, ray\nfrom jobs.audit import _connect\nstarted, _ = _connect(None)\n"
              "print('mode', os.environ['RAY_AUTH_MODE'], started, ray.get(ray.remote(lambda: 7).remote()))\n"
              "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mode token True 7" in done.stdout
    assert "Token authentication" not in done.stdout + done.stderr
    assert (tmp_path / ".ray" / "auth_token").exists()
