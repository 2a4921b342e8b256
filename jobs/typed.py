"""YAML values -> typed, frozen dataclasses, with the dotted field name in every error.

    obj = build(ResourcesConfig, {"actors": 2}, "resources")      # ConfigError("resources.actors: ...")

The annotations of the target dataclass are the schema: unknown keys are refused (listing the valid
ones), scalars are checked (no bool for int, no string for a number), lists become tuples, nested
mappings become dataclasses, unions are tried in order. A class's own `__post_init__` checks run as
they are; its `_check(at)` method, when it has one, runs after construction with the dotted prefix.
recovery's and stats' own errors already name their field and are re-raised as ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterable, Mapping

from recovery.errors import RecoveryError

from .errors import ConfigError
from .limits import bound


def fields(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass's constructor fields by name."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def reject_unknown(raw: Mapping, known: Iterable[str], at: str) -> None:
    known = tuple(known)
    for key in raw:
        if key not in known:
            name = f"{at}.{key}" if at else str(key)
            raise ConfigError(f"{name}: unknown field (valid: {', '.join(known)})")


def mapping(value: Any, at: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{at}: expected a mapping, got {shown(value)}")
    return value


def shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def convert(tp: Any, value: Any, at: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (lists -> tuples, mappings -> dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(typing.get_args(tp), value, at)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, at)
    if tp is Any:
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, at)
    if tp is dict or origin is dict:
        return dict(mapping(value, at))
    if tp in (tuple, list) or origin in (tuple, list):
        return _sequence(tp, origin or tp, value, at)
    return value  # an annotation we do not check (the class's own __post_init__ still does)


def _union(options: tuple, value: Any, at: str) -> Any:
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{at}: required, got null")
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return convert(option, value, at)
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0] if len(errors) == 1 else ConfigError(f"{at}: {shown(value)} is not a valid value")


def _bool(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{at}: expected true or false, got {shown(value)}")
    return value


def _int(value: Any, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
            raise ConfigError(f"{at}: expected an integer, got {shown(value)}")
        value = int(value)
    return _bounded(value, at, integer=True)


def _float(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{at}: expected a number, got {shown(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{at}: expected a finite number, got {value}")
    return _bounded(float(value), at, integer=False)


def _bounded(value: int | float, at: str, *, integer: bool) -> Any:
    """Refuse a value above the field's documented upper bound (jobs.limits), naming both."""
    top = bound(at, integer=integer)
    if value > top:
        raise ConfigError(f"{at}: {value:g} is above the limit of {top:g} (README, Limits); "
                          "a value that large is almost certainly a typo")
    return value


def _str(value: Any, at: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{at}: expected a string, got {shown(value)}")
    return value


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def _sequence(tp: Any, kind: type, value: Any, at: str) -> tuple | list:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{at}: expected a list, got {shown(value)}")
    args = typing.get_args(tp)
    if kind is list:
        return [convert(args[0], v, f"{at}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{at}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{at}: expected a list of {len(args)} values, got {len(value)}")
    return tuple(convert(a, v, f"{at}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def build(cls: type, value: Any, at: str) -> Any:
    """A mapping -> an instance of the dataclass `cls`; errors name `at`.<field>."""
    value = mapping(value, at)
    known = fields(cls)
    reject_unknown(value, known, at)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in known.items():
        if name in value:
            kwargs[name] = convert(hints[name], value[name], f"{at}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{at}.{name}: required")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except RecoveryError as exc:  # recovery's checks already name the dotted field
        raise ConfigError(str(exc)) from None
    except ValueError as exc:  # stats.StatsError and friends: "field: reason" or "section.field: reason"
        message = str(exc)
        head = message.split(":", 1)[0]
        if head.split(".", 1)[0] == at.split(".", 1)[0]:
            raise ConfigError(message) from None
        raise ConfigError(f"{at}.{message}" if head in known else f"{at}: {message}") from None
    check = getattr(obj, "_check", None)
    if check is not None:
        check(at)
    return obj


def plain(obj: Any) -> Any:
    """Dataclasses, tuples and dicts -> JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
