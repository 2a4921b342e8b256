"""Style-based generators: mapping + synthesis, searched in Z, W (one w for every layer) or W+ (one w per layer).

The interface is StyleGAN2-ADA's / StyleGAN3's (NVlabs `training/networks*.py`), which the project's own
recovery.models.style.StyleGenerator follows too:

    mapping(z [B, z_dim], c [B, c_dim] | None) -> ws [B, num_ws, w_dim]   (truncation left at its default, psi = 1: off)
    mapping.w_avg [w_dim] (optional buffer)
    synthesis(ws [B, num_ws, w_dim], noise_mode="const" | "none", [force_fp32=True]) -> [B, C, H, W]
    noisy layers: a `noise_const` buffer [H, W] and a `noise_strength`; the layer adds noise_const * noise_strength

StyleForward turns that into the plain latent -> image module the search needs. Its latent is the search
space's point, flattened per image: z [z_dim], w [w_dim], w_plus [num_ws, w_dim], and with noise: optimize the
image's own noise maps appended ([sum of H*W]). Per-image noise is fed by swapping each layer's `noise_const`
for a [B, 1, H, W] tensor during one forward (broadcast in `noise_const * noise_strength`), so no noise state
is ever shared between the images of a batch, and the module is unchanged afterwards.
"""

from __future__ import annotations

import contextlib
import pickle
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RecoveryError

STYLEGAN_HELP = (
    "a StyleGAN2-ADA / StyleGAN3 network pickle needs the `torch_utils` and `dnnlib` packages of the repository "
    "that wrote it on the Python path (e.g. PYTHONPATH=/path/to/stylegan2-ada-pytorch, or stylegan3)"
)


def is_style_based(module: object) -> bool:
    """A module with `mapping` and `synthesis` submodules, as StyleGAN2-ADA's Generator."""
    return isinstance(getattr(module, "mapping", None), nn.Module) and isinstance(getattr(module, "synthesis", None), nn.Module)


class StyleParts(nn.Module):
    """mapping and synthesis in one container (a factory returning the pair, or two TorchScript files)."""

    def __init__(self, mapping: nn.Module, synthesis: nn.Module) -> None:
        super().__init__()
        self.mapping, self.synthesis = mapping, synthesis


def load_pickle(data: bytes, url: str, key: str, what: str) -> nn.Module:
    """One network from a StyleGAN2-ADA / StyleGAN3 pickle ({'G', 'D', 'G_ema', ...}); the caller checked trust."""
    try:
        networks = pickle.loads(data)  # noqa: S301 - only reached with trust_checkpoint: true
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("torch_utils", "dnnlib"):
            raise RecoveryError(f"{what}: cannot unpickle {url}: No module named {e.name!r}; {STYLEGAN_HELP}") from None
        raise RecoveryError(f"{what}: cannot unpickle {url}: {e}; the pickle needs that module importable") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file becomes one message naming it
        raise RecoveryError(f"{what}: cannot unpickle {url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(networks, dict) or key not in networks:
        keys = sorted(map(str, networks)) if isinstance(networks, dict) else []
        raise RecoveryError(f"{what}_key: {key!r} is not in {url}" + (f"; it has {', '.join(keys)}" if keys else f" (a {type(networks).__name__})"))
    module = networks[key]
    if not isinstance(module, nn.Module):
        raise RecoveryError(f"{what}_key: {key!r} in {url} is a {type(module).__name__}, not a torch.nn.Module")
    return module


@dataclass(frozen=True)
class StyleShape:
    """What the search needs to know about a style-based generator, measured once at load."""

    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    noise_shapes: tuple[tuple[int, int], ...]  # (H, W) of each noisy layer, in module order


def _noise_layers(synthesis: nn.Module) -> list[nn.Module]:
    return [m for m in synthesis.modules() if "noise_const" in dict(m.named_buffers(recurse=False)) and hasattr(m, "noise_strength")]


class StyleForward(nn.Module):
    """latent [B, D] (the search space's point, flat) and c [B, c_dim] | None -> image [B, C, H, W]."""

    def __init__(self, parts: nn.Module, shape: StyleShape, *, space: str, noise: str, fp32_flag: bool) -> None:
        super().__init__()
        self.mapping, self.synthesis, self.shape = parts.mapping, parts.synthesis, shape
        self.space, self.noise, self.fp32_flag = space, noise, fp32_flag
        self.noise_layers = _noise_layers(parts.synthesis) if noise == "optimize" else []
        self.style_dim = {"z": shape.z_dim, "w": shape.w_dim, "w_plus": shape.num_ws * shape.w_dim}[space]

    def ws(self, latent: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """The search point -> ws [B, num_ws, w_dim]."""
        s, b = self.shape, latent.shape[0]
        head = latent[:, : self.style_dim]
        if self.space == "z":
            return self.mapping(head, c)
        if self.space == "w":
            return head.reshape(b, 1, s.w_dim).expand(b, s.num_ws, s.w_dim)
        return head.reshape(b, s.num_ws, s.w_dim)

    def render(self, ws: torch.Tensor) -> torch.Tensor:
        kwargs = {"force_fp32": True} if self.fp32_flag else {}
        return self.synthesis(ws, noise_mode="none" if self.noise == "zero" else "const", **kwargs)

    def forward(self, latent: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        latent = latent.reshape(latent.shape[0], -1)
        ws = self.ws(latent, c)
        if not self.noise_layers:
            return self.render(ws)
        maps, at = [], self.style_dim
        for h, w in self.shape.noise_shapes:
            maps.append(latent[:, at : at + h * w].reshape(-1, 1, h, w))  # [B, 1, H, W]: this image's own noise
            at += h * w
        with _swapped(self.noise_layers, maps):
            return self.render(ws)

    def penalty(self, latent: torch.Tensor) -> torch.Tensor:
        """The noise regularizer per image, [B]: StyleGAN2's multi-scale autocorrelation terms (Karras et al. 2020,
        projector) plus (mean)^2 + (mean square - 1)^2, which replace the projector's renormalization of the maps."""
        latent = latent.reshape(latent.shape[0], -1)
        total, at = latent.new_zeros(latent.shape[0]), self.style_dim
        for h, w in self.shape.noise_shapes:
            n = latent[:, at : at + h * w].reshape(-1, 1, h, w)
            at += h * w
            total = total + n.mean((1, 2, 3)).square() + (n.square().mean((1, 2, 3)) - 1).square()
            while True:
                total = total + (n * n.roll(1, 3)).mean((1, 2, 3)).square() + (n * n.roll(1, 2)).mean((1, 2, 3)).square()
                if n.shape[2] <= 8:
                    break
                n = F.avg_pool2d(n, 2)
        return total


@contextlib.contextmanager
def _swapped(layers: list[nn.Module], maps: list[torch.Tensor]):
    saved = [layer.noise_const for layer in layers]
    try:
        for layer, m in zip(layers, maps):
            layer.noise_const = m
        yield
    finally:
        for layer, t in zip(layers, saved):
            layer.noise_const = t


def _attr(module: nn.Module, name: str) -> int | None:
    value = getattr(module, name, None)
    return int(value) if isinstance(value, (int, torch.Tensor)) and not isinstance(value, bool) else None


def measure(parts: nn.Module, z_dim: int | None, classes: int, encode, device: torch.device, name: str) -> StyleShape:
    """z_dim, c_dim, w_dim, num_ws and the noise maps' sizes, from attributes where present and one mapping pass.
    encode: class indices [B] -> the c the mapping takes (the generator's classes encoding)."""
    mapping = parts.mapping
    z_dim = _attr(mapping, "z_dim") or _attr(parts, "z_dim") or z_dim
    if not z_dim:
        raise RecoveryError(f"generator ({name}): its mapping has no z_dim attribute; give generator.latent.shape [z_dim]")
    c_dim = _attr(mapping, "c_dim") or _attr(parts, "c_dim") or 0
    if c_dim and not classes:
        raise RecoveryError(f"generator ({name}): the mapping is conditional (c_dim = {c_dim}); "
                            "give generator.classes {names: [...], encoding: one_hot}")
    if classes and c_dim and c_dim != classes:
        raise RecoveryError(f"generator.classes.names: {classes} names, but the mapping's c_dim is {c_dim}")
    if classes and not c_dim and _attr(mapping, "c_dim") == 0:
        raise RecoveryError(f"generator.classes: given, but the generator ({name}) is unconditional (c_dim = 0)")
    c = encode(torch.zeros(2, dtype=torch.long, device=device)) if classes else None
    try:
        with torch.no_grad():
            ws = mapping(torch.zeros(2, z_dim, device=device), c)
    except Exception as e:  # noqa: BLE001
        raise RecoveryError(f"generator ({name}): mapping(z [2, {z_dim}], c) failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(ws, torch.Tensor) or ws.dim() not in (2, 3):
        raise RecoveryError(f"generator ({name}): mapping returned {getattr(ws, 'shape', type(ws).__name__)}; expected ws [B, num_ws, w_dim]")
    num_ws = ws.shape[1] if ws.dim() == 3 else (_attr(parts.synthesis, "num_ws") or _attr(parts, "num_ws"))
    if not num_ws:
        raise RecoveryError(f"generator ({name}): mapping returns [B, w_dim] and the synthesis has no num_ws attribute")
    noise = tuple(tuple(int(s) for s in layer.noise_const.shape[-2:]) for layer in _noise_layers(parts.synthesis))
    return StyleShape(int(z_dim), int(c_dim or classes), int(ws.shape[-1]), int(num_ws), noise)


@torch.no_grad()
def w_average(forward: StyleForward, samples: int, device: torch.device, classes: int, encode) -> torch.Tensor:
    """The start point in W: the mapping's w_avg buffer when it has a non-zero one, else the mean of `samples`
    mapped N(0, I) draws (seeded; classes drawn uniformly for a conditional generator). [w_dim] on the CPU."""
    buf = getattr(forward.mapping, "w_avg", None)
    if isinstance(buf, torch.Tensor) and buf.shape == (forward.shape.w_dim,) and bool(buf.abs().sum() > 0):
        return buf.detach().float().cpu()
    gen = torch.Generator().manual_seed(0)
    total = torch.zeros(forward.shape.w_dim, dtype=torch.float64)
    for start in range(0, samples, 1000):
        n = min(1000, samples - start)
        z = torch.randn(n, forward.shape.z_dim, generator=gen).to(device)
        c = encode(torch.randint(0, classes, (n,), generator=gen).to(device)) if classes else None
        ws = forward.mapping(z, c)
        total += (ws[:, 0] if ws.dim() == 3 else ws).double().sum(0).cpu()
    return (total / samples).float()
