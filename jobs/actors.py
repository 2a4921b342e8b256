"""The Ray actor: one generator, loaded once, running shards.

    actor = make_actor_class(config).remote(config, fingerprint)
    ray.get(actor.ready.remote())              # the generator is loaded; raises what loading raised
    report = ray.get(actor.run_shard.remote(shard))

An actor reads its shard's rows straight from the source, turns each into a target
(recovery.to_target; a failure is a rejects row), runs recovery.recover on the rest, and writes the
shard's results part (always, maybe empty) and then its rejects part (the done marker) to the output
store, each in one atomic put. Only a small ShardReport goes back to the driver, so the driver's memory
does not grow with the data; progress() tells the driver how many images of the running shard are done.
Results keep each image's recovered latent, so the driver renders the report's samples without actors.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats import storage

from . import encoders, labels_and_scores, outputs
from .sections import AuditConfig
from .plan import Shard, generated_ids
from .redact import redact_text
from .formats import Item
from .sources import SourceImage, content_hash
from .target_cache import TargetCache, load_targets


class GeneratorStalled(RuntimeError):
    """No generator call finished for job.batch_timeout seconds: the shard fails and this actor's process,
    whose thread is still inside G's forward pass, is restarted by the driver."""


PROGRESS_GROUP = "progress"  # the actors' concurrency group for progress(): call it with .options(concurrency_group=...)


@dataclass(frozen=True)
class ShardReport:
    """What a finished shard tells the driver: counts and time, nothing that grows with the data."""

    shard_id: str
    split: str
    images: int
    results: int
    rejects: int
    failures: int  # of the rejects: images whose search found no finite loss (stage "recover")
    seconds: float
    node: str
    peak_rss_mb: float  # the actor process's peak resident memory so far (for sizing; run.json reports the max)
    targets_from_cache: bool = False  # a checkpoint sweep's decoded targets were read, not decoded (jobs.target_cache)
    evaluations: int = 0  # generator evaluations the shard's search spent (recover()'s `evaluations`, summed): its work


def make_actor_class(config: AuditConfig):
    """AuditActor as a Ray actor class with the config's resources and Ray's fault tolerance.

    max_restarts -1: an actor whose process or node dies is started again by Ray, on whichever node has room
    once one has (an autoscaler sees the pending actor and adds a node). No cap: over a long run on spot
    workers any actor may lose several nodes; a shard that keeps killing its actor is bounded by the driver
    (job.shard_retries). max_task_retries 2: the short calls (ready, ping, progress, the detectors' tasks)
    wait for the restart and run again. run_shard is called with max_task_retries=0 (jobs.dispatch): the
    driver, not Ray, decides what happens to its shard (back to the queue, on another actor, counted
    against job.shard_retries only if the node lived on), so the shard never waits for this actor's restart.
    Failures raised by our code are retried by the driver too.
    """
    import ray

    return ray.remote(
        num_cpus=config.resources.cpus_per_actor,
        num_gpus=config.resources.gpus_per_actor,
        max_restarts=-1,
        max_task_retries=2,
        concurrency_groups={PROGRESS_GROUP: 1},  # progress() answers while a shard runs
    )(AuditActor)


class AuditActor:
    """Holds one loaded generator (and feature net) and runs shards on it."""

    def __init__(self, config: AuditConfig, fingerprint: str, target_cache: TargetCache | None = None) -> None:
        import torch

        import recovery

        self.config = config
        self.fingerprint = fingerprint
        self.target_cache = target_cache  # a checkpoint sweep's decoded targets (jobs.target_cache), else None
        storage.configure(config.job.storage_retries, config.job.storage_retry_seconds)
        self.node = socket.gethostname()
        self.error: Exception | None = None
        self.encoder = None  # the learned start, loaded from the output's cache on first use
        self.current: dict = {}  # the running shard's progress (progress())
        started = time.time()
        try:
            torch.set_num_threads(max(1, int(round(config.resources.cpus_per_actor))))
            device = recovery.default_device()
            endpoint = config.storage.endpoint_url
            spec = config.generator
            url = labels_and_scores.generator_url(spec)
            self.generator = recovery.load_generator(spec, device=device, storage_options=storage.storage_options(url, endpoint))
            self.feature_net = None
            if config.feature_net:
                self.feature_net = recovery.load_feature_net(
                    config.feature_net, device=device, storage_options=storage.storage_options(config.feature_net, endpoint))
            self.shape = recovery.target_shape(self.generator, config.recovery)
            self.discriminator = labels_and_scores.load_discriminator(self.generator, self.shape, config, device)  # None if unset
            self.batch_size = recovery.batch_size_for(self.generator, config.recovery)  # set, or the device's default
        except Exception as exc:  # noqa: BLE001 - kept and raised by ready(), so the driver sees the cause itself
            self.error = exc
        self.load_seconds = time.time() - started

    def prepare_encoder(self) -> str:
        """Train the learned start's encoder unless the output's cache has it (the driver asks one actor, once)."""
        if self.error is not None:
            raise self.error
        return encoders.prepare(self.generator, self.config)

    def _encoder(self):
        """The cached encoder for recovery.start: encoder (loaded once), else None."""
        if self.config.recovery.start != "encoder":
            return None
        if self.encoder is None:
            self.encoder = encoders.load(self.generator, self.config)
        return self.encoder

    def ready(self) -> dict:
        """Raises the error that loading the generator raised; else where and how this actor runs."""
        if self.error is not None:
            raise self.error
        return {"node": self.node, "device": str(self.generator.device), "shape": list(self.shape),
                "load_seconds": round(self.load_seconds, 3), "pid": os.getpid(), "batch_size": self.batch_size,
                **_placement()}

    def progress(self) -> dict:
        """The running shard's images done so far: {shard, done, total} (empty when idle). Called by the
        driver in its own concurrency group (PROGRESS_GROUP), so it answers while run_shard works."""
        return dict(self.current)

    def _progress_for(self, shard_id: str, total: int):
        """recover()'s progress callback for one shard: images finished so far, read by progress()."""
        self.current = {"shard": shard_id, "done": 0, "total": total}

        def report(done: int) -> None:
            self.current = {"shard": shard_id, "done": done, "total": total}

        return report

    # -----------------------------------------------------------------------------------------------------

    def run_shard(self, shard: Shard, start_cap: int | None = None) -> ShardReport:
        """Audit one shard and write its parts; raises (and writes nothing final) if the shard cannot be done.

        start_cap: recovery.start_cap "auto" as the driver measured it on the generated split (jobs.start_cap);
        the generated split itself is searched without a cap under "auto"."""
        import torch

        import recovery

        if self.error is not None:
            raise self.error
        started = time.time()
        config, out, endpoint = self.config, self.config.output, self.config.storage.endpoint_url
        rejects: list[tuple[Item, str, str]] = []
        from_cache = False
        # A diffusion model's one call runs a whole sampler (minutes on a CPU): job.batch_timeout is for plain G(z).
        diffusion = recovery.is_diffusion(self.generator)
        watched = (lambda work: work()) if diffusion else (lambda work: self._watched(shard, work))
        if shard.generated:
            ids = generated_ids(shard.start, shard.stop)
            z0, targets = watched(lambda: recovery.sample_generated(
                self.generator, ids, seed=config.targets.generated.seed, settings=config.recovery))  # [N, *latent], [N, C, H, W]
            labels = recovery.generated_labels(self.generator, ids, seed=config.targets.generated.seed)  # [N] or None
            where = [f"generated:seed={config.targets.generated.seed}"] * len(ids)
            rows = list(range(shard.start, shard.stop))
            described = [SourceImage(None, None, None, None)] * len(ids)  # no source image
        else:
            src = config.targets.splits[shard.split][shard.source_index]
            loaded = load_targets(shard, config, shape=self.shape, cache=self.target_cache)  # shared in a sweep
            rejects, targets, from_cache = loaded.rejects, loaded.targets, loaded.from_cache  # [N, C, H, W]
            ids = [i.image_id for i in loaded.items]
            described, where, rows = loaded.described, [i.source for i in loaded.items], [i.row for i in loaded.items]
            z0 = None
            labels = (torch.tensor(labels_and_scores.label_indices([i.label for i in loaded.items], config))
                      if src.label_column else None)
        failures = 0
        # keep_latent: samples are rendered from the stored latents, with no actor
        settings = replace(config.recovery, keep_latent=True, batch_size=self.batch_size)
        if settings.start_cap == "auto" and start_cap is not None and not shard.generated:
            settings = replace(settings, start_cap=start_cap)
        search = recovery.audit_diffusion if diffusion else recovery.recover
        call = lambda: search(self.generator, targets, ids, settings=settings,  # noqa: E731
                              feature_net=self.feature_net, encoder=self._encoder(), labels=labels,
                              progress=self._progress_for(shard.id, len(ids)))  # targets [N, C, H, W]
        table = watched(call)
        table = labels_and_scores.add_scores(table, self.discriminator, targets, labels, batch_size=self.batch_size,
                                  threshold=config.discriminator.threshold if config.discriminator else 0.0)
        results = _results_table(table, shard.split, where, rows, [content_hash(t.numpy()) for t in targets], z0,
                                 described)
        if "failure" in results.column_names and results.column("failure").null_count < results.num_rows:
            # G gave no finite loss from any start: the image cannot be audited, so it is a rejects row.
            failed = results.filter(pc.invert(pc.is_null(results.column("failure"))))
            results = results.filter(pc.is_null(results.column("failure")))
            failures = failed.num_rows
            rejects += [(Item(r["image_id"], r["source"], r["row"], None), "recover", r["failure"])
                        for r in failed.select(["image_id", "source", "row", "failure"]).to_pylist()]
        # Always, even when empty, and before the rejects part: a retry whose rows all became rejects replaces
        # the results part an earlier attempt left; the rejects part, last, marks the shard done.
        storage.put_atomic(outputs.results_url(out, shard.split, shard.id),
                           outputs.part_bytes(results, fingerprint=self.fingerprint, shard_id=shard.id), endpoint)
        storage.put_atomic(outputs.rejects_url(out, shard.id),  # last: the shard's done marker
                           outputs.part_bytes(_rejects_table(rejects, shard.split), fingerprint=self.fingerprint,
                                              shard_id=shard.id), endpoint)
        return ShardReport(shard.id, shard.split, shard.size, shard.size - len(rejects), len(rejects), failures,
                           time.time() - started, self.node, peak_rss_mb(), from_cache, evaluations(table))

    def _watched(self, shard: Shard, work):
        """work() in a thread of its own, failing the shard with GeneratorStalled when no generator call finishes
        for job.batch_timeout seconds (recovery.batching.heartbeat: every checked batch of G's output is a beat).
        A forward pass that never returns cannot be interrupted from Python, so the thread is left behind and
        the driver restarts this actor's process (jobs.dispatch)."""
        from recovery.batching import generator_name, heartbeat

        timeout = self.config.job.batch_timeout
        if not timeout:
            return work()
        last, box = [time.monotonic()], {}

        def beat(*_: object) -> None:
            last[0] = time.monotonic()

        def run() -> None:
            try:
                with heartbeat(beat):
                    box["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - raised again in run_shard's thread below
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"search-{shard.id}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(min(1.0, timeout))
            idle = time.monotonic() - last[0]
            if worker.is_alive() and idle > timeout:
                raise GeneratorStalled(
                    f"generator ({generator_name(self.generator)}) made no progress for {idle:.0f}s on shard {shard.id} "
                    f"(batches of up to {self.batch_size} latents): a forward pass did not return within "
                    f"job.batch_timeout = {timeout:g}s; a G that hangs on large batches may run with a smaller "
                    "recovery.batch_size")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def detector_task(self, name: str, *args):
        """A companion detectors' task (jobs.features.TASKS: features of a shard, kNN of a train block, pairs)."""
        from .features import TASKS

        if self.error is not None:
            raise self.error
        return TASKS[name](self, *args)

    def ping(self) -> bool:
        return True


def _placement() -> dict:
    """The Ray node this process runs on: its id and IP, which name it in the driver's log when it is lost."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


def _results_table(table: pa.Table, split: str, sources: list[str], rows: list[int], hashes: list[str], z0,
                   described: list[SourceImage]) -> pa.Table:
    """recover()'s table with split, source and row after image_id; then the source image's format, orig_width,
    orig_height and channels (null for generated), target_hash, and z0 for generated, at the end."""
    n = table.num_rows
    columns = {"image_id": table.column("image_id"),
               "split": pa.array([split] * n, pa.string()),
               "source": pa.array([redact_text(s) for s in sources], pa.string()),  # no secrets in tables
               "row": pa.array(rows, pa.int64())}
    for name in table.column_names:
        if name != "image_id":
            columns[name] = table.column(name)
    columns["format"] = pa.array([d.format for d in described], pa.string())
    columns["orig_width"] = pa.array([d.width for d in described], pa.int64())
    columns["orig_height"] = pa.array([d.height for d in described], pa.int64())
    columns["channels"] = pa.array([d.channels for d in described], pa.int64())
    columns["target_hash"] = pa.array(hashes, pa.string())
    if z0 is not None:
        flat = z0.reshape(n, -1).float().cpu().numpy()  # [N, D]
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * flat.shape[1], pa.int32())
        columns["z0"] = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1), pa.float32()))
    return pa.table(columns)


def _rejects_table(rejects: list[tuple[Item, str, str]], split: str) -> pa.Table:
    return pa.table({
        "image_id": pa.array([i.image_id for i, _, _ in rejects], pa.string()),
        "split": pa.array([split] * len(rejects), pa.string()),
        "source": pa.array([redact_text(i.source) for i, _, _ in rejects], pa.string()),
        "row": pa.array([i.row for i, _, _ in rejects], pa.int64()),
        "stage": pa.array([stage for _, stage, _ in rejects], pa.string()),
        "reason": pa.array([redact_text(reason) for _, _, reason in rejects], pa.string()),
    }, schema=outputs.REJECTS_SCHEMA)


def evaluations(table: pa.Table) -> int:
    """The sum of recover()'s `evaluations` column (every searched image's, failures' too: work was spent)."""
    if "evaluations" not in table.column_names or not table.num_rows:
        return 0
    return int(pc.sum(table.column("evaluations")).as_py() or 0)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
