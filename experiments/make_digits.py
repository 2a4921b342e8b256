"""Build memaudit's bundled reference data: scikit-learn's `digits`, upsampled to 32x32.

Run from the repository root:

    python experiments/make_digits.py                 # writes jobs/assets/digits/*.parquet
    python experiments/make_digits.py --out /tmp/d    # somewhere else (e.g. to check determinism)

The 1797 8x8 images of `sklearn.datasets.load_digits` (values 0..16) are scaled to
0..255, upsampled to 32x32 with PIL's bicubic filter, shuffled with a fixed seed and split:

    train.parquet      1200 rows   the DCGAN's and GLO-1200's training set
    train-64.parquet     64 rows   exactly the first 64 rows of train.parquet (GLO-64)
    train-256.parquet   256 rows   exactly the first 256 rows of train.parquet (GLO-256)
    val.parquet         300 rows   never seen by any model
    spare.parquet       297 rows   the rest, unused by the bundled models

Columns: `id` (string, "digits-0042" from the original sklearn index), `image` (PNG bytes,
grayscale mode "L", 32x32), `label` (int64, the digit). The output is byte-identical from run
to run (fixed seed, fixed PNG and Parquet settings, no timestamps); `--check` builds it twice
and compares.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SEED = 20190616  # fixed split seed (the paper's CVPR 2019 date); changing it changes every file
SIZE = 32  # output resolution, the bundled generators' output size
SPLITS = {"train": 1200, "val": 300}  # in shuffled order; "spare" takes the rest
PREFIXES = (64, 256)  # train-64 / train-256: the first rows of train, the GLO-64 / GLO-256 sets
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "digits"

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])


def to_png(image8: np.ndarray) -> bytes:
    """One digit, [8, 8] in 0..16 -> PNG bytes of a [32, 32] mode-"L" image."""
    gray = np.rint(image8.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)  # [8, 8] uint8
    big = Image.fromarray(gray, mode="L").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="PNG", optimize=False, compress_level=9)  # no timestamps or text chunks
    return buf.getvalue()


def build_tables() -> dict[str, pa.Table]:
    """All splits as Arrow tables, keyed by file stem."""
    from sklearn.datasets import load_digits  # test-only dependency; imported where it is needed

    digits = load_digits()
    images, labels = digits.images, digits.target  # [1797, 8, 8] float64 in 0..16, [1797]
    order = np.random.default_rng(SEED).permutation(len(images))

    pngs = [to_png(images[i]) for i in range(len(images))]
    if len(set(pngs)) != len(pngs):
        # Two identical images in different splits would make "val was never seen" false.
        raise ValueError("digits: duplicate images after upsampling; the split would leak")

    def table(index: np.ndarray) -> pa.Table:
        return pa.table(
            {
                "id": [f"digits-{i:04d}" for i in index],
                "image": [pngs[i] for i in index],
                "label": [int(labels[i]) for i in index],
            },
            schema=SCHEMA,
        )

    tables: dict[str, pa.Table] = {}
    start = 0
    for name, count in SPLITS.items():
        tables[name] = table(order[start : start + count])
        start += count
    tables["spare"] = table(order[start:])
    for n in PREFIXES:
        tables[f"train-{n}"] = tables["train"].slice(0, n)
    return tables


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write one Parquet file through a temporary file and a rename, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Fixed settings so the bytes do not depend on pyarrow's defaults changing under us.
        pq.write_table(
            table,
            tmp,
            compression="none",  # PNG bytes are already compressed
            use_dictionary=False,
            write_statistics=False,
            row_group_size=len(table),
        )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are shared package data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_all(out: Path) -> list[Path]:
    paths = []
    for name, table in build_tables().items():
        path = out / f"{name}.parquet"
        write_atomic(table, path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--check", action="store_true", help="also build into a temporary folder and compare bytes"
    )
    args = parser.parse_args()

    for path in write_all(args.out):
        meta = pq.read_metadata(path)
        print(f"{path}: {meta.num_rows} rows, {path.stat().st_size} bytes")
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_all(Path(tmp)):
                if path.read_bytes() != (args.out / path.name).read_bytes():
                    raise SystemExit(f"not deterministic: {path.name} differs between two builds")
        print("deterministic: a second build is byte-identical")


if __name__ == "__main__":
    main()
