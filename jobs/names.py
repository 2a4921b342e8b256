"""Names from the config that become folder names, log text and HTML: split names, run.model, run.tags.

    check_split_name("val", seen=("train",))    # raises ConfigError naming the split
    check_run_text(model, tags)                 # run.model and run.tags

A split becomes the folder `split=<name>` and part of every shard id; run.model the history's folder
`model=<name>`. Each must be plain text that fits one folder name (NAME_MAX bytes) and that no
case-insensitive filesystem (macOS, Windows) folds onto another; a control character would also forge a log
line. Checked at config time, so a bad name fails `--dry-run`, not the write after the whole audit.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping
from urllib.parse import quote

from .errors import ConfigError

NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, APFS)
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: '$' in a match() would pass "val\n"
SPLIT_MAX = NAME_MAX - 22  # split=<name> plus room for suffixes beside it


def check_split_name(name: object, seen: Iterable[str]) -> str:
    """The split's dotted field (`targets.<name>`) for messages; raises ConfigError for a bad name."""
    if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
        raise ConfigError(f"targets: split {name!r}: a split name must be letters, digits, '_', '-' or '.' "
                          "(it is used in paths)")
    if len(name) > SPLIT_MAX:
        raise ConfigError(f"targets: split {name[:40]!r}...: a split name must be at most {SPLIT_MAX} characters "
                          f"(it becomes the folder split=<name>), got {len(name)}")
    twin = next((other for other in seen if other.lower() == name.lower()), None)
    if twin is not None:
        raise ConfigError(f"targets.{name}: differs from split {twin!r} only in case; their folders split=<name> "
                          "would be one on a case-insensitive filesystem: rename one")
    return f"targets.{name}"


def check_run_text(model: str | None, tags: Mapping) -> None:
    """run.model and run.tags: printable text; run.model no longer than the history's folder `model=<name>` holds."""
    for key, value in tags.items():
        for text in (str(key), str(value)):
            if not text.isprintable():
                raise ConfigError(f"run.tags: {text!r} holds a control character (newline, tab, ...); use plain text")
    if model is None:
        return
    if not model.isprintable():
        raise ConfigError(f"run.model: {model!r} holds a control character (newline, tab, ...); use plain text")
    if not model.strip():
        raise ConfigError("run.model: empty; give the model's name or leave run.model unset")
    folder = f"model={quote(model, safe='')}"  # as stats.history.runs.append names it
    if len(folder.encode()) > NAME_MAX:
        raise ConfigError(f"run.model: {len(model)} characters ({len(folder.encode())} bytes as the history's folder "
                          f"model=<name>); a folder name holds at most {NAME_MAX} bytes: shorten it "
                          "(put details in run.tags)")
