"""`python -m jobs.audit`: the job entry point (the same code as `memaudit audit`).

    python -m jobs.audit --config audit.yaml                      # no Ray address: starts a local Ray instance
    ray job submit --working-dir . -- python -m jobs.audit --config audit.yaml
    python -m jobs.audit --config audit.yaml --set recovery.iterations=20 --out s3://bucket/audits/x/
    python -m jobs.audit --config audit.yaml --dry-run            # validate, list sources, print the plan; no Ray

    python -m jobs.audit --config audit.yaml --fail-on memorization   # exit 3 when the verdict is memorization

Exit codes (stats.exit_codes): 0 done (or stopped by --max-shards), 1 the job ran but shards failed, the inputs
overlap, too many images were rejected, the store stayed unreachable beyond job.storage_retries, or the
output.history append failed, 2 a user error (printed as one line `error: ...`), 3 memorization and 4
inconclusive (only with --fail-on), 130 interrupted (resumable). A checkpoint sweep (a glob in
generator.torchscript / checkpoint / pickle: jobs.sweep) exits with the worst code over its checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .config import DEFAULT_OUTPUT, load_config

from .errors import ConfigError
from .redact import install_log_redaction, redact_text
from stats.exit_codes import BAD_INPUT, ERROR, INTERRUPTED, OK

log = logging.getLogger("memaudit")


def parser(prog: str = "python -m jobs.audit") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Audit an image generator for training-set memorization "
                                "by latent recovery (Webster et al., CVPR 2019), as a Ray job.")
    p.add_argument("--config", help="the audit YAML; default: the bundled demo (jobs/assets/demo.yaml)")
    p.add_argument("--out", help=f"output URL (overrides `output:`; default ./{DEFAULT_OUTPUT})")
    p.add_argument("--overwrite", action="store_true", help="replace an output that holds another audit")
    p.add_argument("--address", help="Ray address to connect to (default: $RAY_ADDRESS, else start a local instance)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set recovery.iterations=20 (repeatable; values are YAML)")
    p.add_argument("--actors", type=int, help="shorthand for --set resources.actors=N")
    p.add_argument("--max-shards", type=int, metavar="N", help="run at most N of the shards not yet done, then stop")
    p.add_argument("--dry-run", action="store_true", help="validate the config, load and check the generator on the CPU, list the sources and print the plan")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--fail-on", choices=("memorization", "inconclusive"),  # stats.exit_codes.FAIL_ON
                   help="exit 3 when the verdict is memorization; with 'inconclusive', also 4 when it is inconclusive "
                   "(default: the verdict leaves the exit code at 0)")
    return p


def main(argv: list[str] | None = None, *, prog: str = "python -m jobs.audit") -> int:
    args = parser(prog).parse_args(argv)
    _logging(args.quiet)
    from recovery import RecoveryError
    from stats import StatsError

    overrides = list(args.overrides) + ([f"resources.actors={args.actors}"] if args.actors is not None else [])
    started_ray = False
    before = signal.getsignal(signal.SIGTERM)  # put back when main returns: a notebook or test process lives on
    _stop_on_sigterm()
    try:
        if args.max_shards is not None and args.max_shards < 0:
            raise ConfigError(f"--max-shards: must be >= 0, got {args.max_shards}")
        config = load_config(args.config, overrides=overrides, out=args.out)
        from stats import storage
        from .plan import make_plan

        storage.configure(config.job.storage_retries, config.job.storage_retry_seconds)
        from .sweep import check_checkpoints, checkpoint_config, checkpoints, describe, run_sweep
        from .tracking import check_history, exit_code, record_or_fail

        found = checkpoints(config)  # a glob of checkpoints in the generator: one audit each (jobs.sweep)
        plan = make_plan(checkpoint_config(config, *found[0]) if found else config)  # lists sources, checks ids
        from .preflight import load_generator_cpu

        # G on this CPU with one small forward pass: a wrong latent shape is an error here, not on the cluster
        generator = check_checkpoints(config, found) if found else load_generator_cpu(config)  # a sweep: every one
        if args.dry_run:
            if found:
                print(f"{describe(found)}; the first one's plan:")
            print(plan.describe())
            from .encoders import resolve_start

            print(f"search start: {resolve_start(config, plan.total_images)[1]}")
            from .start_cap import describe_cap

            print(f"start cap: {describe_cap(config, plan)}")
            print(f"output: {redact_text(config.output)}")
            return OK
        _check_output(config.output, config.storage.endpoint_url)  # a cheap write probe, before Ray starts
        from .lease import check_free

        check_free(config.output, config.storage.endpoint_url)  # another run's live output: refused before Ray starts
        check_history(config)
        started_ray, address = _connect(args.address)
        _stop_on_sigterm()  # ray.init replaced the handler with its own, which exits 1 without shutting Ray down
        from .driver import run_audit

        if found:
            return run_sweep(config, found, plan=plan, fail_on=args.fail_on, overwrite=args.overwrite,
                             max_shards=args.max_shards, local=started_ray, address=address)
        outcome = run_audit(config, plan=plan, overwrite=args.overwrite, max_shards=args.max_shards,
                            local=started_ray, address=address, generator=generator)
        return record_or_fail(config, outcome, exit_code(outcome, args.fail_on))
    except (ConfigError, RecoveryError, StatsError) as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr, flush=True)
        return BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
        print("interrupted: finished shards are kept; run the same command again to resume", file=sys.stderr, flush=True)
        return INTERRUPTED
    except Exception as exc:
        from .errors import JobError
        from stats.storage import StorageError

        if isinstance(exc, (JobError, StorageError)):
            print(f"error: {redact_text(str(exc))}", file=sys.stderr, flush=True)
            return ERROR
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


class Terminated(KeyboardInterrupt):
    """SIGTERM, how schedulers (Slurm, Kubernetes, systemd, `ray job stop`) stop a job: handled as Ctrl-C is."""


def _stop_on_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread, so the run stops as on Ctrl-C: its lease released, Ray shut
    down in `finally` (Ray's own handler exits at once, and its C++ core then dumps a crash report), exit 130.
    A second SIGTERM while that cleanup runs is ignored; SIGKILL still ends the process (jobs.watchdog)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, stop)


def _check_output(out: str, endpoint_url: str | None) -> None:
    """Raise ConfigError (one line, naming the URL) when nothing can be written under the output."""
    from stats import storage

    try:
        storage.check_writable(out, endpoint_url)
    except Exception as exc:  # noqa: BLE001 - any failure here means the output is unusable
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(f"output: cannot write to {out} ({reason}); check the URL, that the bucket or directory "
                          "exists and that credentials allow writing there") from None


def _connect(address: str | None) -> tuple[bool, str | None]:
    """Connect to Ray: an existing connection, --address, $RAY_ADDRESS, or a new local instance sized to the
    machine (bound to 127.0.0.1, its auth mode set: jobs.raylink.local_env). Ray's error channel (a lost
    node's raylet dumps) goes to the DEBUG log, not the job's output (raylink.quiet_ray_errors).
    Returns (whether this process started Ray, the address used)."""
    from . import raylink

    imported = sys.modules.get("ray")
    if imported is not None and imported.is_initialized():
        raylink.quiet_ray_errors()
        return False, address
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raylink.local_env()  # before Ray starts (and before `import ray` when nothing imported it yet)
    import ray

    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
        raylink.quiet_ray_errors()
        return False, address
    log.info("no Ray address given: starting a local Ray instance with %d CPUs", os.cpu_count() or 1)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1")
    raylink.quiet_ray_errors()
    _fate_share()
    return True, None


def _fate_share() -> None:
    """If this driver is killed (SIGKILL), the local Ray it started goes with it (jobs.watchdog)."""
    from . import watchdog

    watchdog.start()


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a test's capture, a redirected job log)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _logging(quiet: bool) -> None:
    """Plain timestamped lines on stdout: what a terminal and `ray job logs` both show well."""
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    if any(isinstance(h, _Stdout) for h in log.handlers):
        return
    handler = _Stdout(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s memaudit %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.propagate = False
    install_log_redaction(log)  # URLs in log lines lose their userinfo and query strings


if __name__ == "__main__":
    sys.exit(main())
