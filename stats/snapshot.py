"""The data snapshot of a run: which images it was given, as digests of each split's sorted, distinct image ids.

One definition for the report's header and the run history's row, so the two always agree. Results and
rejects both count: the snapshot is the images the run was given, not the ones it could audit.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

ID_CHUNK = 65536  # ids hashed per update: bounded memory for 10^6 ids


def split_digests(results: pa.Table, rejects: pa.Table | None = None) -> dict[str, str]:
    """split -> sha256 of its sorted distinct image ids, each followed by a newline."""
    tables = [results.select(["image_id", "split"])]
    if rejects is not None and {"image_id", "split"} <= set(rejects.column_names):
        tables.append(rejects.select(["image_id", "split"]))
    schema = pa.schema([("image_id", pa.string()), ("split", pa.string())])
    ids = pa.concat_tables([t.cast(schema) for t in tables])
    out = {}
    for split in sorted(set(pc.unique(ids.column("split")).to_pylist())):
        chosen = pc.unique(ids.filter(pc.equal(ids.column("split"), split)).column("image_id"))
        ordered = chosen.take(pc.array_sort_indices(chosen)).to_pylist()
        digest = hashlib.sha256()
        for start in range(0, len(ordered), ID_CHUNK):
            digest.update("".join(f"{i}\n" for i in ordered[start:start + ID_CHUNK]).encode())
        out[split] = digest.hexdigest()
    return out


def data_snapshot(digests: dict[str, str]) -> str:
    """One digest over the splits' digests (the history's and the report header's `data_snapshot`)."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
