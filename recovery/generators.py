"""Load a generator G(z) from any fsspec URL, freeze it, and check it once before any search runs.

Every loader returns a plain nn.Module mapping [B, *latent.shape] to [B, C, H, W]; the checks that
follow are the same for all of them, so a bad generator is refused before GPU time is spent.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import logging
from typing import Callable

import fsspec
import torch
from torch import nn

from .errors import RecoveryError, own_message
from .loaded import LoadedGenerator, default_device
from .memory_format import apply_memory_format
from .models import BUILTINS
from .settings import GeneratorSpec, LatentSpec
from .style import StyleForward, StyleParts, is_style_based, load_pickle, measure, w_average

log = logging.getLogger("memaudit.recovery")
NARROW_RANGE = 0.02  # of the declared output range: below it, output_range is probably wrong (a warning)


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
    if spec.pickle:  # GeneratorSpec refused it without trust_checkpoint
        data = _read_bytes(spec.pickle, "generator.pickle", storage_options)
        return load_pickle(data, spec.pickle, spec.pickle_key, "generator.pickle"), f"{spec.pickle_key} from {spec.pickle}"
    if isinstance(spec.torchscript, dict):
        parts = {k: _load_scripted(_read_bytes(u, f"generator.torchscript.{k}", storage_options), u, f"generator.torchscript.{k}")
                 for k, u in spec.torchscript.items()}
        return StyleParts(parts["mapping"], parts["synthesis"]), "torchscript mapping + synthesis"
    if spec.torchscript:
        return _load_scripted(_read_bytes(spec.torchscript, "generator.torchscript", storage_options), spec.torchscript, "generator.torchscript"), spec.torchscript
    if spec.builtin:
        if spec.builtin not in BUILTINS:
            raise RecoveryError(f"generator.builtin: {spec.builtin!r} is not one of {', '.join(sorted(BUILTINS))}")
        factory, name = BUILTINS[spec.builtin], f"builtin {spec.builtin}"
    else:
        factory, name = _import_factory(spec.factory), f"factory {spec.factory}"
    try:
        module = factory(**spec.kwargs)
    except TypeError as e:
        raise RecoveryError(f"generator.kwargs: {name} rejected its kwargs: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's constructor failed: its error, named, not a traceback
        field = "generator.factory" if spec.factory else "generator.builtin"
        raise RecoveryError(f"{field}: {name} raised {type(e).__name__}: {own_message(e)} when built with "
                            f"generator.kwargs {dict(spec.kwargs)}") from None
    if isinstance(module, tuple) and len(module) == 2 and all(isinstance(m, nn.Module) for m in module):
        module = StyleParts(*module)  # a factory returning (mapping, synthesis)
    if not isinstance(module, nn.Module):
        raise RecoveryError(f"generator.factory: {name} returned a {type(module).__name__}, not a torch.nn.Module")
    if spec.checkpoint:
        state = _load_checkpoint(spec, storage_options)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RecoveryError(f"generator.checkpoint: {spec.checkpoint} does not fit {name}: {' '.join(str(e).split())[:400]}") from None
    return module, name


def _import_factory(path: str, field: str = "generator.factory"):
    """`package.module:callable` -> the callable (`field`: the config field that names it, for errors). Any failure of the user's module (a missing package, a syntax
    error, an exception at import time) is a RecoveryError naming the factory and the cause, not a traceback."""
    mod_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except SyntaxError as e:
        raise RecoveryError(f"{field}: cannot import {path!r}: SyntaxError in {e.filename}, line {e.lineno}: "
                            f"{e.msg}") from None
    except Exception as e:  # noqa: BLE001 - ImportError, or whatever the module's own top level raised
        raise RecoveryError(f"{field}: cannot import {path!r}: {type(e).__name__}: {own_message(e)}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RecoveryError(f"{field}: {path!r}: module {mod_name!r} has no attribute {attr!r}") from None


def _freeze(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device)
    try:
        module.eval()
    except NotImplementedError:
        pass  # a torch.export program keeps the mode it was exported in; the batch check below catches train mode
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _warn_narrow(x: torch.Tensor, lo: float, hi: float, name: str) -> None:
    """Warn when G's samples use under NARROW_RANGE of the declared output range: [0, 1] images declared as
    [0, 255] run to the end with errors 10^4 times too small to mean anything, so say it at load."""
    span = (x.max() - x.min()).item()
    if span < NARROW_RANGE * (hi - lo):
        log.warning("generator (%s): its samples span [%.3g, %.3g], %.1f%% of the declared generator.output_range "
                    "[%g, %g]; is output_range right?", name, x.min().item(), x.max().item(), 100 * span / (hi - lo), lo, hi)


def _check(g: LoadedGenerator, name: str) -> tuple[int, int, int]:
    """One small forward pass: shape, finiteness, range, and batch independence (eval-mode batch norm)."""
    spec = g.spec
    z, labels = _probe_inputs(g)
    try:
        with torch.no_grad():
            x = g(z, labels)
            x1 = g(z[:1], labels[:1] if labels is not None else None)
    except RecoveryError:
        raise
    except Exception as e:  # noqa: BLE001 - a generator that cannot take its own latent is refused here
        if g.num_classes and _unconditional_runs(g, z):
            raise RecoveryError(
                f"generator.classes: {name} takes no class input: G(z) runs on latents {list(z.shape)}, but G(z, c) "
                f"with the {g.num_classes} classes of generator.classes fails ({own_message(e)}); remove "
                "generator.classes for an unconditional generator") from None
        hint = "generator.latent.shape" + ("" if g.num_classes else "; a conditional G(z, c) needs generator.classes")
        raise RecoveryError(
            f"generator ({name}): forward pass on a latent batch of shape {list(z.shape)} failed: "
            f"{own_message(e)} (if the latent is the wrong shape, check {hint})"
        ) from None
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise RecoveryError(f"generator ({name}): output dtype is {x.dtype}; a generator must return floating-point "
                            "images in generator.output_range")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RecoveryError(f"generator ({name}): output for latents {list(z.shape)} is {shape}; expected [3, C, H, W]")
    if x.shape[1] not in (1, 3):
        raise RecoveryError(f"generator ({name}): output has {x.shape[1]} channels; only 1 (gray) and 3 (RGB) are supported")
    if not torch.isfinite(x).all():
        raise RecoveryError(f"generator ({name}): output is not finite (NaN or inf) for latents drawn from the {g.latent.prior} prior")
    lo, hi = spec.output_range
    slack = 0.05 * (hi - lo)
    if x.min() < lo - slack or x.max() > hi + slack:
        raise RecoveryError(
            f"generator ({name}): output spans [{x.min().item():.3g}, {x.max().item():.3g}], outside the declared "
            f"generator.output_range [{lo:g}, {hi:g}]"
        )
    _warn_narrow(x, lo, hi, name)
    if not torch.allclose(x[:1], x1, rtol=1e-3, atol=1e-4 * (hi - lo)):
        raise RecoveryError(
            f"generator ({name}): an image's output depends on the rest of its batch (batch norm in training mode?); "
            "recovery needs each image independent of its neighbours"
        )
    return tuple(int(s) for s in x.shape[1:])  # type: ignore[return-value]


def _unconditional_runs(g: LoadedGenerator, z: torch.Tensor) -> bool:
    """Whether G runs on latents alone: then generator.classes, not the latent, is what broke G(z, c)."""
    try:
        with torch.no_grad():
            g.module(z)
    except Exception:  # noqa: BLE001 - G(z) fails too: the latent (or G) is at fault, not the classes
        return False
    return True


def _style(module: nn.Module, spec: GeneratorSpec, name: str, device: torch.device) -> LoadedGenerator:
    """A style-based generator as a latent -> image module over the searched space, with its w_avg start."""
    space = spec.space or "w"
    if spec.noise == "optimize" and space == "z":
        raise RecoveryError("generator.noise: 'optimize' is for the W and W+ spaces (space: w or w_plus)")
    probe = LoadedGenerator(module, spec, (0, 0, 0), device)
    shape = measure(module, spec.latent.shape[0] if spec.latent else None, probe.num_classes, probe.encode, device, name)
    if spec.latent is not None and tuple(spec.latent.shape) != (shape.z_dim,):
        raise RecoveryError(f"generator.latent.shape: {list(spec.latent.shape)}, but the mapping takes z [{shape.z_dim}]")
    from_pickle = bool(spec.pickle)
    if spec.noise == "optimize" and not shape.noise_shapes:
        raise RecoveryError(f"generator.noise: 'optimize', but the synthesis of {name} has no layer with a noise_const buffer")
    forward = StyleForward(module, shape, space=space, noise=spec.noise, fp32_flag=from_pickle and _takes(module.synthesis, "force_fp32"))
    if spec.noise == "optimize" and not all(isinstance(layer, nn.Module) and not isinstance(layer, torch.jit.ScriptModule)
                                            for layer in forward.noise_layers):
        raise RecoveryError("generator.noise: 'optimize' needs the Python modules (factory or pickle), not TorchScript")
    noise_dim = sum(h * w for h, w in shape.noise_shapes) if forward.noise_layers else 0
    if space == "z":
        latent, anchor = LatentSpec((shape.z_dim,), "normal"), None
    else:
        dims = (forward.style_dim + noise_dim,) if noise_dim else ((shape.w_dim,) if space == "w" else (shape.num_ws, shape.w_dim))
        latent = LatentSpec(dims, "mapped")
        w_avg = w_average(forward, spec.w_avg_samples, device, probe.num_classes, probe.encode)  # [w_dim]
        anchor = w_avg if space == "w" else w_avg.repeat(shape.num_ws)
    g = LoadedGenerator(forward, spec, (0, 0, 0), device, latent, None)
    if anchor is not None:
        g.anchor = torch.cat([anchor, g._noise_start(1)[0]])
    g.output_shape = _check(g, f"{name}, {space} space")
    _choose_layout(g, f"{name}, {space} space", style=True)
    return g


def _takes(module: nn.Module, name: str) -> bool:
    """Whether module.forward accepts the keyword `name` (by name or through **kwargs)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def load_generator(spec: GeneratorSpec, *, device: str | torch.device | None = None, storage_options: dict | None = None) -> LoadedGenerator:
    """Build, freeze and check the generator a spec names; every problem is a RecoveryError naming it."""
    device = torch.device(device) if device is not None else default_device()
    if spec.diffusers:  # a diffusion model: its own loader and check (recovery/diffusion.py)
        from .diffusion import load_diffusion

        return load_diffusion(spec, device=device, storage_options=storage_options)
    module, name = _build(spec, storage_options)
    return _finish(_freeze(module, device), spec, name, device)


def _finish(module: nn.Module, spec: GeneratorSpec, name: str, device: torch.device) -> LoadedGenerator:
    if is_style_based(module):
        return _style(module, spec, name, device)
    if spec.space in ("w", "w_plus"):
        raise RecoveryError(f"generator.space: {spec.space!r} needs a style-based generator (a mapping network); "
                            f"{name} has no `mapping` and `synthesis`: use space: z")
    if spec.noise == "optimize":
        raise RecoveryError(f"generator.noise: 'optimize' needs a style-based generator with noise inputs; {name} is a plain G(z)")
    if spec.latent is None:
        raise RecoveryError(f"generator.latent: required for a plain G(z) ({name}): give its shape and prior")
    g = LoadedGenerator(module, spec, (0, 0, 0), device)
    g.output_shape = _check(g, name)
    _choose_layout(g, name)
    return g


def _choose_layout(g: LoadedGenerator, name: str, style: bool = False) -> None:
    """Channels-last convolutions where they are faster and give the same images (recovery/memory_format.py);
    "auto" leaves a style-based generator as it is (its modulated, grouped convolutions ran slower in it)."""
    z, labels = _probe_inputs(g)
    lo, hi = g.spec.output_range
    choice = "contiguous" if style and g.spec.memory_format == "auto" else g.spec.memory_format
    g.channels_last = apply_memory_format(g.module, lambda latents: g(latents, labels), z, choice=choice,
                                          device=g.device, scale=hi - lo, name=name)


def _probe_inputs(g: LoadedGenerator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The load checks' seeded inputs: latents [3, *latent] on G's device and, for a conditional G, classes [3]."""
    z = g.draw(3, torch.Generator().manual_seed(0)).to(g.device)
    labels = torch.arange(3, device=g.device) % g.num_classes if g.num_classes else None
    return z, labels


def wrap_generator(
    module: nn.Module,
    *,
    latent: LatentSpec | None,
    output_range: tuple[float, float] = (-1.0, 1.0),
    device: str | torch.device | None = None,
    **style: object,
) -> LoadedGenerator:
    """A generator already in memory (Python API); copied, so the caller's model is never changed.
    style: GeneratorSpec's space, noise, noise_penalty, w_avg_samples and classes."""
    device = torch.device(device) if device is not None else default_device()
    spec = GeneratorSpec(latent=latent, factory=f"{type(module).__module__}:{type(module).__name__}", output_range=output_range, **style)
    return _finish(_freeze(copy.deepcopy(module), device), spec, type(module).__name__, device)


def load_feature_net(url: str, *, device: str | torch.device | None = None, storage_options: dict | None = None) -> nn.Module:
    """A TorchScript feature network for loss: features; frozen and in eval mode like the generator."""
    device = torch.device(device) if device is not None else default_device()
    module = _load_scripted(_read_bytes(url, "recovery.feature_net", storage_options), url, "recovery.feature_net")
    return _freeze(module, device)
