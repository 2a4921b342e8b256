"""How memaudit meets Ray: a local instance's environment, Ray's own messages kept out of the job's log, and
which nodes are alive.

    raylink.local_env()          # before ray.init(address="local"): loopback, and the auth mode set explicitly
    raylink.quiet_ray_errors()   # after ray.init: Ray's error channel goes to DEBUG, not the driver's stdout
    raylink.alive_nodes()        # {node id} of the cluster's live nodes (GCS's view)

Ray pushes error messages from its own processes to every driver, and a background thread prints them on
the driver's stdout: a lost node brings "Raylet is terminated ... Last 20 lines of the Raylet logs" (its
state dumps) and "has been marked dead because the detector has missed too many heartbeats". They stay in
Ray's logs (raylet.out, gcs_server.out, `ray logs`); the driver logs memaudit's own line for the loss
instead (jobs.fleet). `ray.init(log_to_driver=False)` does not stop them (it only stops the workers'
output, which memaudit keeps: the actors' storage warnings come that way).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("memaudit")
ray_log = logging.getLogger("memaudit.ray")  # Ray's error channel, at DEBUG: shown only when asked for

AUTH_MODE = "RAY_AUTH_MODE"
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes 127.0.0.1 as this node's address


def local_env() -> None:
    """Set the environment of a local Ray instance that this process starts, before ray.init.

    RAY_AUTH_MODE: Ray 2.60 turns token authentication on for a new local instance whose mode is unset, and
    warns about it on every run. memaudit sets the mode explicitly to that same default, "token" (a token in
    ~/.ray/auth_token, made once by Ray), so the instance is as safe and the warning goes; a mode the user
    set is kept. If Ray's core was imported already it read the old value, so its config is read again (the
    driver would otherwise talk without a token to processes that want one).
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's processes take 127.0.0.1 as the node's address instead of
    probing the network for one; a local instance is one node.
    """
    os.environ.setdefault(LOOPBACK_ONLY, "0")
    if os.environ.get(AUTH_MODE) is not None:
        return
    os.environ[AUTH_MODE] = "token"
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


def quiet_ray_errors() -> None:
    """Route Ray's error channel (messages its raylets and GCS push to drivers) to the DEBUG log.

    The listener thread prints each message through ray._private.worker.print_to_stdstream with the pseudo
    pid "raylet"; that one function is wrapped (idempotent), everything else it prints (the actors' own
    output, the autoscaler's one-line events) passes unchanged. A Ray without that function is left alone.
    """
    try:
        from ray._private import worker
    except ImportError:  # pragma: no cover - another Ray layout: its messages stay as they are
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_memaudit_quiet", False):
        return
    worker.print_to_stdstream = _quiet(original)


def _quiet(original: Callable[..., Any]) -> Callable[..., Any]:
    def print_to_stdstream(data: dict, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and data.get("pid") == "raylet":
            for message in data.get("lines") or ():
                first = str(message).strip().splitlines()
                ray_log.debug("ray: %s", first[0] if first else "")
                ray_log.debug("%s", message)
            return None
        return original(data, *args, **kwargs)

    print_to_stdstream._memaudit_quiet = True  # type: ignore[attr-defined]
    return print_to_stdstream


def alive_nodes() -> set[str]:
    """The ids of the nodes the GCS holds alive (one GCS call). A node that died is in ray.nodes() with
    Alive false once the GCS's health checks gave up on it (seconds to a minute after it went)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def resources() -> str:
    """The cluster's CPUs and GPUs as one phrase, for messages about actors that cannot be placed."""
    import ray

    total = ray.cluster_resources()
    return ", ".join(f"{k} {total[k]:g}" for k in ("CPU", "GPU") if k in total) or "nothing"


def reason(exc: BaseException) -> str:
    """One line for a Ray error: the cause's type and message, without Ray's traceback banner; for an actor
    that died or cannot be reached, Ray's cause without the actor's id, pid and class."""
    import ray

    if isinstance(exc, ray.exceptions.ActorUnavailableError):
        return f"{type(exc).__name__}: the connection to it was lost"
    if isinstance(exc, ray.exceptions.ActorDiedError):
        lines = [line.strip() for line in str(getattr(exc, "error_msg", "") or "").splitlines()
                 if line.strip() and not line.startswith("\t") and line.strip() != exc.BASE_ERROR_MSG]
        return f"{type(exc).__name__}: {lines[0][:200] if lines else 'it died'}"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
