"""Headless Chromium for the report tests and benchmarks/report_size.py: the launch, what a page is checked
for, and synthetic audits of any size.

The browser is the system's Chromium (Debian's `chromium` package) driven by Playwright's driver through
executable_path; Playwright's own browser download is never used. Every launch gets a fresh profile and the
flags that keep Chromium from calling home, and every request a page makes is recorded: a self-contained
report makes none.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1280  # the narrowest laptop screen a report must fit without scrolling sideways

# What a person relies on, measured in the page: horizontal overflow, where the error figure starts,
# whether every image decoded. Run once folded (as the page opens) and once with every section open.
MEASURE = """async () => {
  const doc = document.documentElement;
  const figure = document.querySelector('#distributions img');
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(i => i.decode().then(() => i.naturalWidth > 0, () => false)));
  return {
    overflow: doc.scrollWidth - doc.clientWidth,
    figure_top: figure ? figure.getBoundingClientRect().top + window.scrollY : null,
    images: images.length,
    broken: images.filter((i, k) => !decoded[k]).map(i => i.alt),
    height: doc.scrollHeight,
    folded: document.querySelectorAll('details.fold:not([open])').length,
  };
}"""
OPEN_ALL = "() => document.querySelectorAll('details').forEach(d => { d.open = true; })"


def chromium_missing() -> str | None:
    """Why the browser checks cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """One Chromium with a fresh profile; yields its context (open pages with .new_page())."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="memaudit-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                                                       viewport={"width": WIDTH, "height": 900})
        try:
            yield context
        finally:
            context.close()


def inspect(context: Any, path: Path, screenshots: Path | None = None) -> dict[str, Any]:
    """Open a page; its measurements folded and unfolded, its console errors and the requests it made."""
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("data:", "file:")) else None)
    page.goto(path.resolve().as_uri(), wait_until="load")
    if screenshots is not None:
        _screens(page, screenshots)
    folded = page.evaluate(MEASURE)
    page.evaluate(OPEN_ALL)
    opened = page.evaluate(MEASURE)
    page.close()
    return {"folded": folded, "open": opened, "errors": errors, "requests": requests}


def _screens(page: Any, prefix: Path, step: int = 900, most: int = 4) -> None:
    height = page.evaluate("document.documentElement.scrollHeight")
    for i in range(min(most, -(-height // step))):
        page.evaluate(f"window.scrollTo(0, {i * step})")
        page.screenshot(path=f"{prefix}-{i}.png")
    page.evaluate("window.scrollTo(0, 0)")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_audit(rows: int, *, seed: int = 0, copied: float = 0.05, top: int = 20) -> tuple[pa.Table, pa.Table]:
    """Results (45% train, 45% val, 10% generated) where `copied` of the training images are recovered almost
    exactly, and samples.parquet as the job writes it (best/median/worst per split, top-<n> of train)."""
    rng = np.random.default_rng(seed)
    n = {"train": int(rows * 0.45), "val": int(rows * 0.45)}
    n["generated"] = rows - n["train"] - n["val"]
    errors = {"train": rng.lognormal(np.log(1e-2), 0.6, n["train"]), "val": rng.lognormal(np.log(1e-2), 0.6, n["val"]),
              "generated": rng.lognormal(np.log(1e-4), 0.5, n["generated"])}
    k = int(n["train"] * copied)
    errors["train"][:k] = rng.lognormal(np.log(1e-5), 0.3, k)
    ids = {s: np.char.add(f"{s}-", np.arange(n[s]).astype(str)) for s in n}
    results = pa.table({"image_id": pa.array(np.concatenate([ids[s] for s in n]).tolist(), pa.string()),
                        "split": pa.array(sum(([s] * n[s] for s in n), []), pa.string()),
                        "error": np.concatenate([errors[s] for s in n])})
    samples = []
    for split in n:
        order = np.argsort(errors[split], kind="stable")
        picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
        if split == "train":
            picks += [(f"top-{i + 1}", order[i]) for i in range(min(top, len(order)))]
        for rank, i in picks:
            target = rng.integers(0, 256, (32, 32, 3))
            noise = rng.integers(-40, 41, (32, 32, 3)) * min(1.0, float(errors[split][i]) * 50)
            samples.append({"image_id": str(ids[split][i]), "split": split, "rank": rank,
                            "error": float(errors[split][i]), "target": png(target),
                            "recovery": png(np.clip(target + noise, 0, 255))})
    return results, pa.Table.from_pylist(samples)
