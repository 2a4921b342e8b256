"""A finished run's output written by hand (results parts, the stats tables, run.json), for the history,
compare and exit-code tests that need outputs without running the job."""

import json
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import stats
from stats.reduction import verdict_dict
from tests._tables import table_of


def write_output(url: str, results: pa.Table, *, finished: str, run: dict | None = None,
                 storage_options: dict | None = None, verdict: bool = True, stats_config: dict | None = None) -> str:
    """What a finished job leaves behind: results parts, the stats tables and run.json (config.stats: stats_config)."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    for split in sorted(set(results.column("split").to_pylist())):
        part = results.filter(pc.equal(results.column("split"), split))
        fs.makedirs(posixpath.join(root, f"results/split={split}"), exist_ok=True)
        with fs.open(posixpath.join(root, f"results/split={split}/part-0.parquet"), "wb") as f:
            pq.write_table(part, f)
    reduction = stats.reduce(results, settings=stats.StatsSettings.from_mapping(stats_config or {}))
    stats.write_outputs(url, reduction, "<html></html>", storage_options=storage_options)
    info = {"status": "done", "fingerprint": f"plan-{finished}", "config_fingerprint": "cfg", "finished": finished,
            "config": {"generator": {"torchscript": "s3://models/glo-64.pt"}, **({"run": run} if run else {}),
                       **({"stats": stats_config} if stats_config else {})},
            "versions": {"memaudit": "0.1.0"}}
    if verdict:
        info["verdict"] = verdict_dict(reduction.verdict)
    fs.pipe_file(posixpath.join(root, "run.json"), json.dumps(info).encode())
    return url


def errors(shift: float, seed: int, n: int = 40) -> pa.Table:
    rng = np.random.default_rng(seed)
    return table_of(train=rng.lognormal(-4 - shift, 0.5, n), val=rng.lognormal(-4, 0.5, n),
                    generated=rng.lognormal(-9, 0.3, 8))
