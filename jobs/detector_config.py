"""The config of the companion detectors: `detectors: [...]` and the `features:` section.

Kept apart from jobs.detectors (the driver's pass) so that jobs.config can import it without importing
the plan and the actors' code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stats.detect.companions import REGISTRY

from .errors import ConfigError



@dataclass(frozen=True)
class FeaturesConfig:
    """The feature space and the kNN of the companion detectors.

    space: pixel | net. net: a TorchScript network URL mapping [N, C, H, W] in the generator's output range
    to [N, D] (the user's own Inception, SSCD or DINOv2 export; nothing is downloaded). crop: side of a
    center crop taken first. metric: l2 | l1 | cosine. k: nearest train images kept per query.
    train_block: train images per kNN task (one part each). query_block: queries per distance tile.
    batch_size: images per forward pass of the network.
    """

    space: str = "pixel"
    net: str | None = None
    crop: int | None = None
    metric: str = "l2"
    k: int = 5
    train_block: int = 65536
    query_block: int = 4096
    batch_size: int = 256

    def spec(self):
        from recovery.features import FeatureSpec

        return FeatureSpec(space=self.space, net=self.net, crop=self.crop, batch_size=self.batch_size)

    @property
    def name(self) -> str:
        return self.spec().name

    def _check(self, at: str) -> None:
        from recovery.errors import RecoveryError
        from recovery.neighbours import METRICS

        try:
            self.spec()
        except RecoveryError as exc:
            raise ConfigError(str(exc).replace("features.", f"{at}.", 1)) from None
        if self.metric not in METRICS:
            raise ConfigError(f"{at}.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        for name in ("k", "train_block", "query_block"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{at}.{name}: must be >= 1, got {getattr(self, name)}")


def check_detectors(value: Any, at: str = "detectors") -> tuple[str, ...]:
    """The `detectors` list, checked: known names (recovery, the audit itself, and stats.detect.companions.REGISTRY's),
    each once."""
    known = ("recovery", *REGISTRY)
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{at}: expected a list of detectors ({', '.join(known)}), got {value!r}")
    for i, name in enumerate(value):
        if name not in known:
            raise ConfigError(f"{at}[{i}]: {name!r} is not one of {', '.join(known)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{at}: lists a detector twice: {list(value)}")
    return tuple(value)
