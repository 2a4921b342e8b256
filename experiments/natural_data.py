"""Fixed 64x64 RGB patches of scikit-image's bundled colour photos: the natural-image test subjects' data.

Used by experiments/train_natural.py (which also writes the audit targets); run on its own to
write only the targets and print what they hold:

    python experiments/natural_data.py                 # writes jobs/assets/natural/{train,val}.parquet
    python experiments/natural_data.py --out /tmp/n    # somewhere else (e.g. to check determinism)

Why patches of a few photos: trained generators have realistic (hard) latent landscapes, and a
64x64 GAN must train in minutes on 2 CPU cores, so the distribution has to be narrow but real.

Every photo ships inside the scikit-image wheel (nothing is downloaded). Each is resized with
Lanczos so its shorter side is 192 px (a 64x64 patch is a third of it: an eye, a cup, a wheel),
then split along its width into two disjoint regions: the left part trains the generators, the
right-most VAL_WIDTH columns are held out, with a GAP of unused columns between, so no held-out
patch shares a single pixel with a training patch. Crop positions are drawn with a fixed seed,
without repeats.

    training set   TRAIN_PER_PHOTO patches per photo (6 photos, 2040 patches) from the train regions
    train.parquet  200 of them, a seeded subsample (patches the generators were trained on)
    val.parquet    200 patches from the held-out regions (never trained on)

Columns: `id` (string, "natural-<photo>-t<top>-l<left>"), `image` (PNG bytes, mode "RGB",
64x64), `photo` (string), `top`, `left` (int64, the patch corner in the resized photo). The
bytes are identical from run to run (fixed seed, fixed PNG and Parquet settings).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.make_digits import write_atomic  # noqa: E402  same fixed Parquet settings as the digits

SEED = 20190617
PATCH = 64
SHORT_SIDE = 192  # every photo is resized so its shorter side is this many pixels
VAL_WIDTH = 80  # right-most columns of each resized photo, held out
GAP = 8  # unused columns between the train and the val region
TRAIN_PER_PHOTO = 340  # 6 photos -> 2040 training patches
N_TARGETS = 200  # rows of train.parquet and val.parquet each
DEFAULT_OUT = ROOT / "jobs" / "assets" / "natural"
# Colour photos bundled in the scikit-image wheel (chelsea == cat, so only one of them).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "immunohistochemistry")
SCHEMA = pa.schema(
    [("id", pa.string()), ("image", pa.binary()), ("photo", pa.string()), ("top", pa.int64()), ("left", pa.int64())]
)


@dataclass(frozen=True)
class Patch:
    """One 64x64 crop of a resized photo: where it comes from and its pixels ([64, 64, 3] uint8)."""

    photo: str
    top: int
    left: int
    pixels: np.ndarray

    @property
    def id(self) -> str:
        return f"natural-{self.photo}-t{self.top:03d}-l{self.left:03d}"


def load_photo(name: str) -> np.ndarray:
    """A bundled photo, resized so its shorter side is SHORT_SIDE: [H, W, 3] uint8."""
    import skimage.data  # test/experiment dependency only; these files ship in the wheel

    raw = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    img = Image.fromarray(np.ascontiguousarray(raw[..., :3]), mode="RGB")
    scale = SHORT_SIDE / min(img.size)
    size = (round(img.width * scale), round(img.height * scale))
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def regions(width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Column ranges [start, stop) of the train and val regions of a resized photo of this width."""
    val_start = width - VAL_WIDTH
    return (0, val_start - GAP), (val_start, width)


def crops(photo: str, image: np.ndarray, columns: tuple[int, int], n: int, rng: np.random.Generator) -> list[Patch]:
    """n distinct random 64x64 crops lying wholly inside the given column range."""
    rows = image.shape[0] - PATCH + 1
    cols = columns[1] - columns[0] - PATCH + 1
    flat = rng.choice(rows * cols, size=n, replace=False)  # distinct positions
    out = []
    for k in sorted(flat.tolist()):
        top, left = divmod(k, cols)
        left += columns[0]
        out.append(Patch(photo, top, left, image[top : top + PATCH, left : left + PATCH].copy()))
    return out


def build() -> tuple[list[Patch], list[Patch], list[Patch]]:
    """(training set, train targets, val targets), all deterministic."""
    rng = np.random.default_rng(SEED)
    train: list[Patch] = []
    val_pool: list[Patch] = []
    val_per_photo = -(-N_TARGETS // len(PHOTOS))  # ceil: enough to take N_TARGETS from
    for name in PHOTOS:
        image = load_photo(name)
        train_cols, val_cols = regions(image.shape[1])
        train += crops(name, image, train_cols, TRAIN_PER_PHOTO, rng)
        val_pool += crops(name, image, val_cols, val_per_photo, rng)
    train_targets = [train[i] for i in sorted(rng.choice(len(train), N_TARGETS, replace=False).tolist())]
    val = [val_pool[i] for i in sorted(rng.choice(len(val_pool), N_TARGETS, replace=False).tolist())]
    return train, train_targets, val


def as_tensor(patches: list[Patch]):
    """[N, 3, 64, 64] float32 in [-1, 1], the generators' output convention."""
    import torch

    x = torch.from_numpy(np.stack([p.pixels for p in patches])).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def to_table(patches: list[Patch]) -> pa.Table:
    return pa.table(
        {
            "id": [p.id for p in patches],
            "image": [to_png(p.pixels) for p in patches],
            "photo": [p.photo for p in patches],
            "top": [p.top for p in patches],
            "left": [p.left for p in patches],
        },
        schema=SCHEMA,
    )


def write_targets(train_targets: list[Patch], val: list[Patch], out: Path = DEFAULT_OUT) -> list[Path]:
    paths = []
    for name, patches in (("train", train_targets), ("val", val)):
        path = out / f"{name}.parquet"
        write_atomic(to_table(patches), path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    train, train_targets, val = build()
    print(f"training set: {len(train)} patches from {len(PHOTOS)} photos")
    for path in write_targets(train_targets, val, args.out):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
