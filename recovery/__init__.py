"""Latent recovery on one device (DESIGN.md §1): load a generator, prepare targets, search the latent space.

Pure PyTorch, no Ray. The job (jobs/) fetches data and calls these; so can a notebook:

    g = load_generator(GeneratorSpec(builtin="dcgan", kwargs={...}, checkpoint="g.pt", latent=LatentSpec((100, 1, 1))))
    table = recover(g, targets, ids, settings=RecoverySettings(restarts=4))
"""

from .errors import ImageError, RecoveryError
from .generators import load_feature_net, load_generator, wrap_generator
from .loaded import LoadedGenerator, default_device
from .diffusion import is_diffusion
from .diffusion_stats import audit_diffusion
from .encoder import Encoder, train_encoder
from .images import to_png, to_target
from .objective import target_shape
from .recover import batch_size_for, generated_labels, recover, render, sample_generated
from .settings import ClassesSpec, GeneratorSpec, LatentSpec, OperatorSpec, RecoverySettings

__all__ = [
    "audit_diffusion",
    "is_diffusion",
    "ClassesSpec",
    "Encoder",
    "GeneratorSpec",
    "ImageError",
    "LatentSpec",
    "LoadedGenerator",
    "OperatorSpec",
    "RecoveryError",
    "RecoverySettings",
    "batch_size_for",
    "default_device",
    "generated_labels",
    "load_feature_net",
    "load_generator",
    "recover",
    "render",
    "sample_generated",
    "target_shape",
    "to_png",
    "to_target",
    "train_encoder",
    "wrap_generator",
]
