"""Target images into the generator's space, and recoveries back out as PNG.

The rule (documented in the README): decode with Pillow; palette, CMYK and the like become RGB;
alpha is dropped (as torchvision's `convert("RGB")`, which most training pipelines used); 16-bit
images keep their precision; RGB targets for a 1-channel generator become luma (ITU-R 601-2, Pillow's
"L"), gray targets for a 3-channel generator are replicated. Then the shorter side is resized
(bicubic, antialiased) and the image center-cropped to the audit shape, and [0, 1] is mapped
linearly onto the generator's output range. An image smaller than the audit shape is refused
unless `upscale` is set: upsampling invents detail the generator could never have memorized.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ImageError

Image.MAX_IMAGE_PIXELS = 1 << 28  # refuse decompression bombs, keep large photos


MAX_DECODED_BYTES = 500_000_000  # width x height x channels x bytes per sample, read from the header
# A 16-bit PNG's rawmode (what Pillow unpacks into 8 bits, keeping the high bytes) -> the rawmode
# that keeps the low bytes instead: decoding twice gives all 16 bits at C speed.
_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def _decode(data: bytes) -> np.ndarray:
    """Bytes -> HxWxC float32 array in [0, 1] (C = 1 or 3)."""
    if not data:
        raise ImageError("empty image bytes")
    img = _open(data)
    _check_decoded_size(img)
    wide = _png16(data, img)
    if wide is not None:
        return wide
    _load(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return (np.clip(arr, 0, top) / top).astype(np.float32)[..., None]
    if img.mode == "F":
        raise ImageError("floating-point image (mode F): its value range is unknown; store images as 8- or 16-bit")
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _open(data: bytes) -> Image.Image:
    """The image's header only (Pillow decodes lazily); a decoder failure is an ImageError with its reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reject with its reason
        raise ImageError(f"not a decodable image: {type(e).__name__}: {e}") from None


def _load(img: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reject with its reason
        kind = "truncated or corrupt image" if isinstance(e, OSError) and "truncated" in str(e).lower() else "not a decodable image"
        raise ImageError(f"{kind}: {type(e).__name__}: {e}") from None
    return img


def _rawmode(img: Image.Image) -> str:
    """How the file stores its pixels, as Pillow names it ('RGB;16B': RGB, 16 bits big-endian); '' if unknown."""
    tile = img.tile[0] if getattr(img, "tile", None) and len(img.tile) == 1 else None
    args = tile[3] if tile is not None else None
    return args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else ""


def _check_decoded_size(img: Image.Image) -> None:
    """Refuse, from the header alone, an image whose decoded samples would exceed MAX_DECODED_BYTES.

    The pixel limit alone lets a 16000 x 16000 16-bit RGB image through (1.5 GB decoded, several
    GB while it is converted): one such image can take an actor's memory, so its size is
    counted before any decoding, in bytes, not pixels.
    """
    width, height = img.size
    wide = ";16" in _rawmode(img) or img.mode.startswith("I;16")
    bits = 16 if wide else 32 if img.mode in ("I", "F") else 8
    channels = 2 if _rawmode(img).startswith("LA;16") else len(img.getbands())
    need = width * height * channels * bits // 8
    if need > MAX_DECODED_BYTES:
        raise ImageError(
            f"image is {width}x{height} with {channels} channels of {bits} bits: {need / 1e9:.2f} GB decoded, above the "
            f"limit of {MAX_DECODED_BYTES / 1e9:.2f} GB; downscale it before the audit"
        )


def _png16(data: bytes, img: Image.Image) -> np.ndarray | None:
    """A 16-bit color or gray+alpha PNG at its full precision as HxWxC float32 in [0, 1]; None for other images.

    Pillow unpacks 16-bit RGB(A) into 8-bit "RGB"/"RGBA", keeping the high bytes. Its PNG
    decoder undoes the row filters before unpacking, so the same file decoded again with the
    little-endian rawmode yields the low bytes, and high * 256 + low is the stored value.
    Gray+alpha (4 bytes a pixel) is unpacked as 8-bit RGBA: R and G are the gray's two bytes.
    """
    rawmode = _rawmode(img) if img.format == "PNG" else ""
    if rawmode == "LA;16B":
        img.tile = [img.tile[0]._replace(args="RGBA")]
        px = np.asarray(_load(img), dtype=np.uint16)  # [H, W, 4]: gray high, gray low, alpha high, alpha low
        return (px[..., :1] << 8 | px[..., 1:2]).astype(np.float32) / np.float32(65535)
    if rawmode not in _LOW_BYTES:
        return None
    high = np.asarray(_load(img), dtype=np.uint16)[..., :3]  # [H, W, 3]
    again = _open(data)
    again.tile = [again.tile[0]._replace(args=_LOW_BYTES[rawmode])]
    low = np.asarray(_load(again), dtype=np.uint16)[..., :3]
    return (high << 8 | low).astype(np.float32) / np.float32(65535)  # alpha dropped, as for 8-bit images


def _from_array(arr: np.ndarray) -> np.ndarray:
    """A raw uint8/uint16 array, HxW or HxWxC (C in 1, 3, 4), -> HxWxC float32 in [0, 1]."""
    arr = np.asarray(arr)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"array image has dtype {arr.dtype}; expected uint8 or uint16")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"array image has shape {list(arr.shape)}; expected [H, W] or [H, W, C] with C in 1, 3, 4")
    top = 255.0 if arr.dtype == np.uint8 else 65535.0
    return arr[..., :3].astype(np.float32) / top  # alpha dropped, as for decoded images


def _channels(x: np.ndarray, c: int) -> np.ndarray:
    if x.shape[2] == c:
        return x
    if c == 3:
        return np.repeat(x, 3, axis=2)
    return (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]  # Pillow's "L" weights


def to_target(
    data: bytes | np.ndarray,
    *,
    shape: tuple[int, int, int],
    output_range: tuple[float, float] = (-1.0, 1.0),
    upscale: bool = False,
) -> torch.Tensor:
    """One image (encoded bytes or a uint8/uint16 array) -> [C, H, W] float32 in output_range; ImageError if it cannot be."""
    c, h, w = shape
    x = _from_array(data) if isinstance(data, np.ndarray) else _decode(bytes(data))
    x = _channels(x, c)
    ih, iw = x.shape[:2]
    if (ih < h or iw < w) and not upscale:
        raise ImageError(f"image is {iw}x{ih}, smaller than the audit resolution {w}x{h} (set targets.upscale: true to allow upsampling)")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]  # [1, C, ih, iw] in [0, 1]
    if (ih, iw) != (h, w):
        scale = max(h / ih, w / iw)  # the shorter side (relative to the target aspect) lands on the audit size
        rh, rw = max(h, math.ceil(ih * scale - 1e-6)), max(w, math.ceil(iw * scale - 1e-6))
        if (rh, rw) != (ih, iw):
            t = F.interpolate(t, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        top, left = (rh - h) // 2, (rw - w) // 2
        t = t[:, :, top : top + h, left : left + w]
    lo, hi = output_range
    return (t[0] * (hi - lo) + lo).contiguous()


def to_png(image: torch.Tensor, *, output_range: tuple[float, float] = (-1.0, 1.0)) -> bytes:
    """[C, H, W] in output_range -> 8-bit PNG bytes (for samples and the report)."""
    lo, hi = output_range
    x = ((image.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    arr = x.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()
