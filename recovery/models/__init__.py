"""Built-in generator architectures, keyed by the config's `generator.builtin` choices."""

from .dcgan import BUILTINS, DCGAN

__all__ = ["BUILTINS", "DCGAN"]
