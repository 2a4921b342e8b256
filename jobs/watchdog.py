"""Fate-sharing for a local Ray instance: when the driver that started it dies, its Ray processes go too.

    python jobs/watchdog.py <driver pid>      # started by jobs.audit right after it starts a local Ray

A driver that exits normally or on Ctrl-C shuts its local Ray down itself. A driver killed with SIGKILL
cannot, and Ray's dashboard and runtime-env agents (children of the raylet, renamed `ray::...`, re-parented
to init when the raylet dies with the driver) were left behind as orphans. This small process,
in its own session, walks /proc once a second and remembers every descendant of the driver (pid and start
time, so a reused pid is never touched). Once the driver is gone it ends those that still run: SIGTERM,
then SIGKILL after a grace period. After a normal exit they are already gone and it simply exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_SECONDS = 1.0
GRACE_SECONDS = 5.0


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process from /proc/<pid>/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of `root` (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None and info[0] != "Z":
                children.setdefault(info[1], []).append(int(entry))
                started[int(entry)] = info[2]
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found and pid in started:
            found[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return found


def _still_ours(pid: int, start: str) -> bool:
    info = _stat(pid)
    return info is not None and info[0] != "Z" and info[2] == start


def end(processes: dict[int, str]) -> None:
    """SIGTERM the remembered processes that still run, then SIGKILL those left after GRACE_SECONDS."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p, s in processes.items() if _still_ours(p, s)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + (GRACE_SECONDS if sig == signal.SIGTERM else 0)
        while time.monotonic() < deadline and any(_still_ours(p, processes[p]) for p in left):
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    driver = int(argv[0])
    me = os.getpid()
    first = _stat(driver)
    seen: dict[int, str] = {}
    while first is not None and _still_ours(driver, first[2]):
        seen.update((p, s) for p, s in descendants(driver).items() if p != me)
        time.sleep(POLL_SECONDS)
    end(seen)
    return 0


def start() -> None:
    """Start the watchdog for this process (Linux only: it reads /proc; elsewhere a no-op)."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return
    import subprocess

    # Run as a plain script (not `-m jobs.watchdog`): importing the jobs package would load torch for nothing.
    subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
