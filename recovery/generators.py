"""Load a generator G(z) from any fsspec URL, freeze it, and check it once before any search runs.

Every loader returns a plain nn.Module mapping [B, *latent.shape] to [B, C, H, W]; the checks that
follow are the same for all of them, so a bad generator is refused before GPU time is spent.
"""

from __future__ import annotations

import copy
import importlib
import io
from dataclasses import dataclass
from typing import Callable

import fsspec
import torch
from torch import nn

from .errors import RecoveryError
from .models import BUILTINS
from .priors import sample_prior
from .settings import GeneratorSpec, LatentSpec


def default_device() -> torch.device:
    """CUDA when present (GPU clusters), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedGenerator:
    """A frozen generator in eval mode on one device, with its latent spec and measured output shape."""

    module: nn.Module
    spec: GeneratorSpec
    output_shape: tuple[int, int, int]  # (C, H, W)
    device: torch.device

    @property
    def latent(self) -> LatentSpec:
        return self.spec.latent

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        # z: [B, *latent.shape] -> [B, C, H, W] in spec.output_range
        return self.module(z)


def _read_bytes(url: str, what: str, storage_options: dict | None) -> bytes:
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise RecoveryError(f"{what}: file not found: {url}") from None
    except Exception as e:  # noqa: BLE001 - any store error becomes one clear message naming the URL
        raise RecoveryError(f"{what}: cannot read {url}: {type(e).__name__}: {e}") from None


def _load_scripted(data: bytes, url: str, what: str) -> nn.Module:
    """TorchScript archive, or a torch.export program (.pt2); both run without the defining source."""
    errors = []
    loaders: list[tuple[str, Callable[[], nn.Module]]] = [
        ("torch.jit.load", lambda: torch.jit.load(io.BytesIO(data), map_location="cpu")),
        ("torch.export.load", lambda: torch.export.load(io.BytesIO(data)).module()),
    ]
    if url.endswith(".pt2"):
        loaders.reverse()
    for name, load in loaders:
        try:
            return load()
        except Exception as e:  # noqa: BLE001 - try the other format, then report both
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise RecoveryError(f"{what}: {url} is neither a TorchScript file nor a torch.export program ({'; '.join(errors)})")


def _load_checkpoint(spec: GeneratorSpec, storage_options: dict | None) -> dict:
    data = _read_bytes(spec.checkpoint, "generator.checkpoint", storage_options)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=not spec.trust_checkpoint)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not spec.trust_checkpoint and ("weights_only" in str(e) or "Unpickl" in type(e).__name__ or "pickle" in str(e).lower()):
            raise RecoveryError(
                f"generator.checkpoint: {spec.checkpoint} cannot be loaded with torch.load(weights_only=True): {msg}. "
                "If you trust this file, set generator.trust_checkpoint: true (this executes pickled code from it)."
            ) from None
        raise RecoveryError(f"generator.checkpoint: cannot load {spec.checkpoint}: {msg}") from None
    if spec.checkpoint_key:
        if not isinstance(state, dict) or spec.checkpoint_key not in state:
            keys = sorted(map(str, state)) if isinstance(state, dict) else []
            raise RecoveryError(
                f"generator.checkpoint_key: {spec.checkpoint_key!r} not in {spec.checkpoint}"
                + (f"; it has {', '.join(keys[:20])}" if keys else "")
            )
        state = state[spec.checkpoint_key]
    if isinstance(state, nn.Module):  # a whole pickled module (only reachable with trust_checkpoint)
        state = state.state_dict()
    if not isinstance(state, dict):
        raise RecoveryError(f"generator.checkpoint: {spec.checkpoint} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _build(spec: GeneratorSpec, storage_options: dict | None) -> tuple[nn.Module, str]:
    if spec.torchscript:
        return _load_scripted(_read_bytes(spec.torchscript, "generator.torchscript", storage_options), spec.torchscript, "generator.torchscript"), spec.torchscript
    if spec.builtin:
        if spec.builtin not in BUILTINS:
            raise RecoveryError(f"generator.builtin: {spec.builtin!r} is not one of {', '.join(sorted(BUILTINS))}")
        factory, name = BUILTINS[spec.builtin], f"builtin {spec.builtin}"
    else:
        mod_name, _, attr = spec.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise RecoveryError(f"generator.factory: cannot import {spec.factory!r}: {e}") from None
        name = f"factory {spec.factory}"
    try:
        module = factory(**spec.kwargs)
    except TypeError as e:
        raise RecoveryError(f"generator.kwargs: {name} rejected its kwargs: {e}") from None
    if not isinstance(module, nn.Module):
        raise RecoveryError(f"generator.factory: {name} returned a {type(module).__name__}, not a torch.nn.Module")
    if spec.checkpoint:
        state = _load_checkpoint(spec, storage_options)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RecoveryError(f"generator.checkpoint: {spec.checkpoint} does not fit {name}: {' '.join(str(e).split())[:400]}") from None
    return module, name


def _freeze(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device)
    try:
        module.eval()
    except NotImplementedError:
        pass  # a torch.export program keeps the mode it was exported in; the batch check below catches train mode
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _check(module: nn.Module, spec: GeneratorSpec, name: str, device: torch.device) -> tuple[int, int, int]:
    """One small forward pass: shape, finiteness, range, and batch independence (eval-mode batch norm)."""
    z = sample_prior(spec.latent, 3, torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            x = module(z)
            x1 = module(z[:1])
    except Exception as e:  # noqa: BLE001 - a generator that cannot take its own latent is refused here
        raise RecoveryError(
            f"generator ({name}): forward pass on a latent batch of shape {list(z.shape)} failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (check generator.latent.shape)"
        ) from None
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RecoveryError(f"generator ({name}): output for latents {list(z.shape)} is {shape}; expected [3, C, H, W]")
    if x.shape[1] not in (1, 3):
        raise RecoveryError(f"generator ({name}): output has {x.shape[1]} channels; only 1 (gray) and 3 (RGB) are supported")
    if not torch.isfinite(x).all():
        raise RecoveryError(f"generator ({name}): output is not finite (NaN or inf) for latents drawn from the {spec.latent.prior} prior")
    lo, hi = spec.output_range
    slack = 0.05 * (hi - lo)
    if x.min() < lo - slack or x.max() > hi + slack:
        raise RecoveryError(
            f"generator ({name}): output spans [{x.min().item():.3g}, {x.max().item():.3g}], outside the declared "
            f"generator.output_range [{lo:g}, {hi:g}]"
        )
    if not torch.allclose(x[:1], x1, rtol=1e-3, atol=1e-4 * (hi - lo)):
        raise RecoveryError(
            f"generator ({name}): an image's output depends on the rest of its batch (batch norm in training mode?); "
            "recovery needs each image independent of its neighbours"
        )
    return tuple(int(s) for s in x.shape[1:])  # type: ignore[return-value]


def load_generator(spec: GeneratorSpec, *, device: str | torch.device | None = None, storage_options: dict | None = None) -> LoadedGenerator:
    """Build, freeze and check the generator a spec names; every problem is a RecoveryError naming it."""
    device = torch.device(device) if device is not None else default_device()
    module, name = _build(spec, storage_options)
    module = _freeze(module, device)
    return LoadedGenerator(module, spec, _check(module, spec, name, device), device)


def wrap_generator(
    module: nn.Module,
    *,
    latent: LatentSpec,
    output_range: tuple[float, float] = (-1.0, 1.0),
    device: str | torch.device | None = None,
) -> LoadedGenerator:
    """A generator already in memory (Python API); copied, so the caller's model is never changed."""
    device = torch.device(device) if device is not None else default_device()
    spec = GeneratorSpec(latent=latent, factory=f"{type(module).__module__}:{type(module).__name__}", output_range=output_range)
    module = _freeze(copy.deepcopy(module), device)
    return LoadedGenerator(module, spec, _check(module, spec, type(module).__name__, device), device)


def load_feature_net(url: str, *, device: str | torch.device | None = None, storage_options: dict | None = None) -> nn.Module:
    """A TorchScript feature network for loss: features; frozen and in eval mode like the generator."""
    device = torch.device(device) if device is not None else default_device()
    module = _load_scripted(_read_bytes(url, "recovery.feature_net", storage_options), url, "recovery.feature_net")
    return _freeze(module, device)
