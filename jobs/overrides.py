"""The raw config mapping: the YAML file, `--set dotted.key=value` overrides and --out, with relative local
paths made absolute (YAML paths against the YAML's folder, command-line paths against the current one).

    raw, base_dir = read_raw("audit.yaml", overrides=["recovery.iterations=20"], out="runs/x", cwd=os.getcwd())

Only this module knows where paths sit in the raw mapping (PATH_KEYS and every target source's `uri`);
jobs.config then types and validates the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from stats.storage import resolve_local

PATH_KEYS = (("generator", "torchscript"), ("generator", "checkpoint"), ("recovery", "feature_net"), ("output",),
             ("generator", "pickle"), ("generator", "torchscript", "mapping"), ("generator", "torchscript", "synthesis"),
             ("discriminator", "torchscript"), ("discriminator", "checkpoint"), ("discriminator", "pickle"),
             ("features", "net"), ("generator", "diffusers"))
PATH_KEYS += (("output", "path"), ("output", "history"))  # output: {path, history}
TARGET_KEYS = ("generated", "limit", "limit_seed", "shard_size", "upscale")  # reserved under targets; every other key is a split


MAX_DEPTH = 64  # nesting levels of YAML collections: an audit config needs about 5; the composer recurses per level


class NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses what an audit config never needs and what would harm it:
    aliases (`*name`: nested aliases, "billion laughs", expand to more objects than memory holds while the
    file stays a few hundred bytes), a key given twice in one mapping (YAML keeps the last one, so a second
    `train:` would silently drop the first split's sources), and collections nested deeper than MAX_DEPTH
    (the composer recurses once per level: 100,000 `[` would end in RecursionError)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in an audit config "
                                 f"(line {event.start_mark.line + 1}); write the value out")
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise yaml.YAMLError(f"collections nested deeper than {MAX_DEPTH} levels (line {line}); "
                                 "an audit config needs only a few")
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a collection as a key: the base constructor refuses it (unhashable)
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.YAMLError(f"the key {key!r} appears twice in one mapping (line {seen[key]}, again on line {line}); "
                                     "YAML would silently keep only the last: merge them into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_raw(path: Path, *, overrides: list[str] | tuple[str, ...], out: str | None, cwd: str, default_output: str,
             sections: tuple[str, ...]) -> dict:
    """The YAML at `path` with its paths resolved, `overrides` and `out` applied; `output` defaults to
    `default_output` under `cwd`. Raises ConfigError for an unreadable file, bad YAML or a bad override."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # YAML is text: a binary file or another encoding
        raise ConfigError(f"config: {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader without anchors/aliases
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {' '.join(str(exc).split())}") from None  # one line
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections ({', '.join(sections)}), got {type(raw).__name__}")
    resolve_paths(raw, str(path.resolve().parent))
    for item in overrides:
        key, value = parse_override(item)
        patch: dict = {}
        set_dotted(patch, key, value)
        resolve_paths(patch, cwd)
        set_dotted(raw, key, get_dotted(patch, key))
    if out is not None:  # --out is the output's path; output.history stays
        if isinstance(raw.get("output"), dict):
            raw["output"]["path"] = resolve_local(out, cwd)
        else:
            raw["output"] = resolve_local(out, cwd)
    raw.setdefault("output", resolve_local(default_output, cwd))
    if isinstance(raw["output"], dict) and "path" not in raw["output"]:  # output: {history: URL} alone
        raw["output"]["path"] = resolve_local(default_output, cwd)
    return raw


def resolve_paths(raw: dict, base: str) -> None:
    """Make the relative local paths of a raw config (or of one override's patch) absolute against `base`."""
    for keys in PATH_KEYS:
        node = raw
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = resolve_local(node[keys[-1]], base)
    targets = raw.get("targets")
    if not isinstance(targets, dict):
        return
    for name, value in targets.items():
        if name in TARGET_KEYS:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str):
                items[i] = {"uri": item}
            if isinstance(items[i], dict) and "uri" in items[i]:
                items[i]["uri"] = resolve_local(items[i]["uri"], base)
        targets[name] = items if isinstance(value, list) else items[0]


def parse_override(item: str) -> tuple[str, Any]:
    """`dotted.key=value` -> (key, value parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. recovery.iterations=20")
    try:
        value = yaml.load(text, Loader=NoAliasLoader) if text.strip() else None  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse {text[:200]!r} as a YAML value: {' '.join(str(exc).split())}") from None
    return key, value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: is not a section, so {key} cannot be set")
        node = child
    node[parts[-1]] = value


def get_dotted(raw: dict, key: str) -> Any:
    for part in key.split("."):
        raw = raw[part]
    return raw
