"""The generator's memory format: channels-last convolutions on the CPU, where they are faster.

oneDNN runs convolutions in NHWC without the layout conversions that NCHW weights cost it. Measured
(forward + backward, 2 CPU threads, torch 2.13, `python benchmarks/memory_format.py`): the trained
upsample+conv generator ~1.5x, the DCGAN-tutorial one ~1.07x, the 32x32 digit models ~1.2x; but the
style-based digit generator's modulated (grouped) convolutions 0.84x, so "auto" leaves style-based
generators as they are. On CUDA the gain needs tensor cores and mixed precision,
and fp32 NHWC kernels can be slower, so "auto" keeps CUDA as it is.

A generator may not survive the switch: a `.view` on an activation that is no longer contiguous raises,
and a layer written for NCHW strides could compute something else. So the channels-last copy is run once
(forward and backward) on the load check's latents and kept only when it gives the same images; "auto"
otherwise keeps the plain layout (logged), an explicit "channels_last" is an error naming the reason.
The choice is a fixed rule, never a timing, so the same config on the same device gives the same table.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from .errors import RecoveryError, own_message

log = logging.getLogger("memaudit.recovery")


def wants_channels_last(choice: str, device: torch.device, module: nn.Module) -> bool:
    """Whether to try channels-last: asked for, or "auto" on a CPU for a module with 4-D (conv) weights."""
    if choice == "contiguous":
        return False
    has_conv = any(p.dim() == 4 for p in module.parameters())
    if choice == "channels_last":
        return has_conv
    return device.type == "cpu" and has_conv


def apply_memory_format(module: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *,
                        choice: str, device: torch.device, scale: float, name: str) -> bool:
    """Turn module (in place) channels-last when `choice` asks for it and it computes the same images; whether it did.

    run(z) -> images [B, C, H, W] through module; z [B, *latent] are the load check's latents; scale is the
    output range's width (the tolerance is relative to it).
    """
    if not wants_channels_last(choice, device, module):
        return False
    with torch.no_grad():
        reference = run(z)  # [B, C, H, W], plain layout
    reason = _same_images(module, run, z, reference, scale)
    if reason is None:
        log.info("generator (%s): convolutions run channels-last (generator.memory_format: %s)", name, choice)
        return True
    module.to(memory_format=torch.contiguous_format)
    if choice == "channels_last":
        raise RecoveryError(f"generator.memory_format: channels_last does not work for {name} ({reason}); "
                            "set it to auto or contiguous")
    log.info("generator (%s): kept the plain memory format (channels-last %s)", name, reason)
    return False


def _same_images(module: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                 reference: torch.Tensor, scale: float) -> str | None:
    """Turn module channels-last; None when it then gives `reference` and takes a backward pass, else why not."""
    probe = z.detach().clone().requires_grad_(True)
    try:
        module.to(memory_format=torch.channels_last)
        x = run(probe)  # [B, C, H, W]
        x.float().square().sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means: keep the layout the module was written for
        return f"failed: {own_message(e)}"
    if not torch.allclose(x.detach().float(), reference.float(), rtol=1e-3, atol=1e-4 * scale):
        err = (x.detach().float() - reference.float()).abs().max().item()
        return f"gives other images (max difference {err:.3g})"
    return None
