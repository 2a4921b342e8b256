"""The discriminator check's model side: load D like G and score images, one score per image.

Brock et al. (BigGAN) saw that a GAN's discriminator ends up calling its training images real and held-out
images fake; "GAN Discriminators Don't Generalize?" made it a test. A D that separates train from val has
memorized its training set, which is evidence about the generator trained against it. The statistics
(per split mean score and fraction classified real, KS and AUC of train against val) are in stats/.

D comes as a TorchScript file, a factory + checkpoint, or network `D` of a StyleGAN2-ADA / StyleGAN3 pickle
(only with trust_checkpoint). Calls: a pickle's D(img, c) (c: one-hot [B, c_dim], None when c_dim = 0), any
other conditional D(img, c) with the generator's class encoding, an unconditional one D(img). Its output must
be one score per image ([B] or [B, 1]), a logit unless `threshold` says otherwise: an image is classified
real when its score is above the threshold (0 for logits, 0.5 for a D ending in a sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RecoveryError, own_message
from .generators import _freeze, _import_factory, _load_checkpoint, _load_scripted, _read_bytes
from .settings import ClassesSpec, GeneratorSpec
from .style import load_pickle


@dataclass(frozen=True)
class DiscriminatorSpec:
    """Where D comes from (exactly one of torchscript, factory, pickle) and how its scores read."""

    torchscript: str | None = None
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    pickle: str | None = None
    pickle_key: str = "D"
    trust_checkpoint: bool = False
    conditional: bool = False  # D(img, c); a pickle's D says so itself (c_dim)
    threshold: float = 0.0  # classified real when score > threshold

    def __post_init__(self) -> None:
        given = [k for k in ("torchscript", "factory", "pickle") if getattr(self, k)]
        if len(given) != 1:
            raise RecoveryError("discriminator: give exactly one of torchscript, factory, pickle"
                                + (f" (got {', '.join(given)})" if given else " (got none)"))
        if self.pickle and not self.trust_checkpoint:
            raise RecoveryError(f"discriminator.pickle: {self.pickle} is a Python pickle, and loading it runs code from it; "
                                "set discriminator.trust_checkpoint: true if you trust the file")
        if self.factory and ":" not in self.factory:
            raise RecoveryError(f"discriminator.factory: expected 'package.module:callable', got {self.factory!r}")
        if self.torchscript and (self.checkpoint or self.kwargs):
            raise RecoveryError("discriminator: a torchscript discriminator takes no checkpoint or kwargs")


@dataclass
class LoadedDiscriminator:
    """A frozen D on one device; score() gives one float per image."""

    module: nn.Module
    spec: DiscriminatorSpec
    input_shape: tuple[int, int, int]  # (C, H, W): the generator's output shape
    classes: ClassesSpec | None
    device: torch.device
    takes_c: bool  # D(img, c) rather than D(img)
    per_image: bool = False  # scores depend on the batch (minibatch std): each image is scored alone

    def _call(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.takes_c:
            return self.module(x)
        if labels is None:
            if self.classes is not None:
                raise RecoveryError("discriminator: a conditional D needs a class per image (targets' label_column)")
            return self.module(x, None)
        k = len(self.classes.names)
        c = labels.long() if self.classes.encoding == "index" else F.one_hot(labels.long(), k).float()
        return self.module(x, c.to(x.device))

    @torch.no_grad()
    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None, *, batch_size: int = 64) -> torch.Tensor:
        """images [N, C, H, W] float32 in the generator's output range, labels [N] int64 -> scores [N] float64 (CPU)."""
        step = 1 if self.per_image else max(1, batch_size)
        out = []
        for j in range(0, len(images), step):
            lab = labels[j : j + step] if labels is not None else None
            out.append(self._call(images[j : j + step].to(self.device), lab).reshape(-1).double().cpu())
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def _build(spec: DiscriminatorSpec, storage_options: dict | None) -> tuple[nn.Module, str]:
    if spec.pickle:
        data = _read_bytes(spec.pickle, "discriminator.pickle", storage_options)
        return load_pickle(data, spec.pickle, spec.pickle_key, "discriminator.pickle"), f"{spec.pickle_key} from {spec.pickle}"
    if spec.torchscript:
        data = _read_bytes(spec.torchscript, "discriminator.torchscript", storage_options)
        return _load_scripted(data, spec.torchscript, "discriminator.torchscript"), spec.torchscript
    factory = _import_factory(spec.factory, "discriminator.factory")
    try:
        module = factory(**spec.kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor failed: its error, named, not a traceback
        raise RecoveryError(f"discriminator.factory: cannot build {spec.factory!r}: {type(e).__name__}: {own_message(e)}") from None
    if spec.checkpoint:
        gspec = GeneratorSpec(factory=spec.factory, checkpoint=spec.checkpoint, checkpoint_key=spec.checkpoint_key,
                              trust_checkpoint=spec.trust_checkpoint)
        try:
            module.load_state_dict(_load_checkpoint(gspec, storage_options), strict=True)
        except RuntimeError as e:
            raise RecoveryError(f"discriminator.checkpoint: {spec.checkpoint} does not fit {spec.factory}: {' '.join(str(e).split())[:300]}") from None
    return module, f"factory {spec.factory}"


def load_discriminator(spec: DiscriminatorSpec, *, input_shape: tuple[int, int, int], classes: ClassesSpec | None = None,
                       device: str | torch.device = "cpu", storage_options: dict | None = None) -> LoadedDiscriminator:
    """Build, freeze and check D: a probe batch of 3 images must give 3 finite scores (one per image)."""
    device = torch.device(device)
    module, name = _build(spec, storage_options)
    module = _freeze(module, device)
    c_dim = getattr(module, "c_dim", None)
    takes_c = bool(spec.pickle) or spec.conditional
    if (spec.conditional or (isinstance(c_dim, int) and c_dim > 0)) and classes is None:
        raise RecoveryError(f"discriminator ({name}) is conditional; it needs generator.classes for its labels")
    if spec.pickle and isinstance(c_dim, int) and c_dim == 0:
        classes = None
    d = LoadedDiscriminator(module, spec, tuple(input_shape), classes if takes_c else None, device, takes_c)
    x = torch.linspace(-1, 1, 3 * int(torch.tensor(input_shape).prod())).reshape(3, *input_shape)
    labels = torch.arange(3) % len(classes.names) if d.classes is not None else None
    try:
        with torch.no_grad():
            s = d._call(x.to(device), labels)
            s1 = d._call(x[:1].to(device), labels[:1] if labels is not None else None)
    except RecoveryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RecoveryError(f"discriminator ({name}): scoring images of shape {[3, *input_shape]} failed: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(s, torch.Tensor) or s.numel() != 3 or (s.dim() == 2 and s.shape[1] != 1) or s.dim() > 2:
        shape = list(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise RecoveryError(f"discriminator ({name}): output for 3 images is {shape}; it must be one score per image ([3] or [3, 1])")
    if not torch.isfinite(s).all():
        raise RecoveryError(f"discriminator ({name}): scores are not finite")
    d.per_image = not torch.allclose(s.reshape(-1)[:1], s1.reshape(-1), rtol=1e-4, atol=1e-5)
    return d
