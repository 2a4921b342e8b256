"""What a huge 16-bit PNG costs a target decode, and what the 16-bit path costs a normal one.

    python benchmarks/decode_bound.py            # the refusal of a 16000 x 16000 16-bit RGB PNG, and 16-bit decodes
    python benchmarks/decode_bound.py --old      # also Pillow's full decode of that image, as before the bound (~6 GB)

Each measurement runs in a child process, so its peak resident memory (ru_maxrss) is its own. The big image
is all zeros (it compresses to a few MB), so building it takes seconds; decoding it still costs the full
width x height x channels x 2 bytes, which is what the bound in recovery/images.py reads from the header.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png16(width: int, height: int, rows) -> bytes:
    """A 16-bit RGB PNG from an iterator of rows (each [width, 3] uint16), compressed as it goes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(1)
    parts = [z.compress(b"\x00" + row.astype(">u2").tobytes()) for row in rows]
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


CHILD = r"""
import resource, sys, time
sys.path.insert(0, {root!r})
import io
import numpy as np
from PIL import Image
from recovery import ImageError, to_target
data = open({path!r}, "rb").read()
t = time.perf_counter()
if {old}:
    Image.MAX_IMAGE_PIXELS = 1 << 28
    img = Image.open(io.BytesIO(data)); img.load()
    x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    outcome = f"decoded {{x.shape}}"
else:
    try:
        outcome = f"target {{tuple(to_target(data, shape=(3, 64, 64)).shape)}}"
    except ImageError as e:
        outcome = f"refused: {{e}}"
seconds = time.perf_counter() - t
print(f"{{seconds:.3f}} s, peak RSS {{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}} GB: {{outcome}}")
"""


def measure(path: str, old: bool = False) -> str:
    code = CHILD.format(root=ROOT, path=path, old=old)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", action="store_true", help="also decode the big image fully, as before the bound")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.png")
        zero = np.zeros((16000, 3), np.uint16)
        with open(big, "wb") as f:
            f.write(png16(16000, 16000, (zero for _ in range(16000))))
        print(f"16000 x 16000 RGB 16-bit PNG ({os.path.getsize(big) / 1e6:.1f} MB file):")
        print(f"  now:    {measure(big)}")
        if args.old:
            print(f"  before: {measure(big, old=True)}")
        rng = np.random.default_rng(0)
        for side in (1024, 4096):
            path = os.path.join(tmp, f"{side}.png")
            noise = rng.integers(0, 65536, (side, side, 3), dtype=np.uint16)
            with open(path, "wb") as f:
                f.write(png16(side, side, iter(noise)))
            print(f"{side} x {side} RGB 16-bit PNG to a 3x64x64 target, at 16 bits: {measure(path)}")


if __name__ == "__main__":
    main()
