"""Shared by the issue-13 training scripts: a marked section of jobs/assets/models/MODEL_CARD.md, replaced in place."""

from __future__ import annotations

import os
from pathlib import Path

CARD = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "models" / "MODEL_CARD.md"


def update_section(begin: str, end: str, section: str) -> None:
    """Replace the text between the markers begin and end (inclusive) with section, or append it."""
    text = CARD.read_text() if CARD.exists() else ""
    body = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body + "\n"
    tmp = CARD.with_name(".MODEL_CARD.md.tmp")
    tmp.write_text(text)
    os.replace(tmp, CARD)
