"""The report pages in a real browser (headless Chromium): what a person relies on when they open one.

At 1280 px no page scrolls sideways, folded or with every section open; the report's error figure
starts on the first screen; every image decodes; there is no console error and no request leaves
the file. Pages: a demo-shaped report (the bundled digits as targets), the report of a synthetic
10^5-image audit, a history page and a compare page. One browser for the module.

Skipped, with the reason, only where Chromium or Playwright is missing and CI is not set; under
CI a missing browser fails.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stats import reduce, render_report
from stats.detect.detectors import BIRTHDAY_SCHEMA, DETECTORS_SCHEMA
from stats.detect.copying import CELLS_SCHEMA
from stats.history.runs import history_row
from stats.report.companions import PAIRS_SCHEMA, CompanionFiles
from stats.report.history import render_history
from stats.history.compare import compare_runs, render_comparison
from stats.report.sections import MAX_LISTED
from tests._browser import MEASURE, browser, chromium_missing, inspect, png, synthetic_audit
from tests._outputs import errors, write_output

ASSETS = Path(__file__).resolve().parents[1] / "jobs" / "assets"
FIRST_SCREEN = 1000  # px: the error figure must start above this
RUN_INFO = {"fingerprint": "f" * 64, "generator_sha256": "a" * 64, "finished": "2026-12-01T10:00:00+00:00",
            "versions": {"memaudit": "0.1.0"}, "config": {"run": {"model": "glo-64"},
                                                          "generator": {"torchscript": "models/glo-64.pt"}}}


@pytest.fixture(scope="module")
def chromium():
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI needs the browser check: {missing}")
        pytest.skip(missing)
    with browser() as context:
        yield context


def digits(path: Path, n: int) -> list[np.ndarray]:
    table = pq.read_table(path, columns=["image"]).slice(0, n)
    return [np.asarray(Image.open(io.BytesIO(b))) for b in table.column("image").to_pylist()]


def demo_report(tmp: Path) -> Path:
    """The demo's shape: 64 train digits recovered almost exactly, 300 val digits not, 64 generated."""
    rng = np.random.default_rng(0)
    train, val = digits(ASSETS / "digits" / "train-64.parquet", 64), digits(ASSETS / "digits" / "val.parquet", 300)
    table = {"train": rng.lognormal(np.log(1e-4), 0.2, 64), "val": rng.lognormal(np.log(2e-2), 0.5, 300),
             "generated": rng.lognormal(np.log(8e-5), 0.2, 64)}
    results = pa.table({"image_id": [f"digits-{s}-{i:04d}" for s in table for i in range(len(table[s]))],
                        "split": [s for s in table for _ in table[s]], "error": np.concatenate(list(table.values()))})
    order = np.argsort(table["train"])
    rows = []
    for rank, i in [*((f"top-{k + 1}", order[k]) for k in range(20)), ("best", order[0]), ("median", order[32]),
                    ("worst", order[-1])]:
        noise = rng.integers(-3, 4, train[i].shape)
        rows.append({"image_id": f"digits-train-{i:04d}", "split": "train", "rank": rank, "error": table["train"][i],
                     "target": png(train[i]), "recovery": png(np.clip(train[i] + noise, 0, 255))})
    for rank, i in (("best", 0), ("median", 150), ("worst", 299)):
        blur = np.clip(val[i].astype(float) * 0.6 + 40, 0, 255)
        rows.append({"image_id": f"digits-val-{i:04d}", "split": "val", "rank": rank, "error": table["val"][i],
                     "target": png(val[i]), "recovery": png(blur)})
    path = tmp / "demo.html"
    path.write_text(render_report(reduce(results), results=results, samples=pa.Table.from_pylist(rows),
                                  run_info=RUN_INFO, companions=companions(train, rng),
                                  discriminator=discriminator(table, rng)))
    return path


def companions(train: list[np.ndarray], rng: np.random.Generator) -> CompanionFiles:
    """The detectors' files: 12 closest generated/train pairs, 60 C_T cells (more than the report lists)."""
    detectors = pa.Table.from_pylist([
        {"detector": "neighbours", "statistic_name": "nearer than any val", "statistic": 60.0, "threshold": 0.01,
         "p_value": 1e-30, "fired": True, "count": 60, "reason": "60 of 64 generated images are nearer " * 6},
        {"detector": "birthday", "statistic_name": "duplicates", "statistic": 0.0, "threshold": 0.01, "p_value": 1.0,
         "fired": False, "count": 0, "reason": "no near-duplicate in 2 batches"}], schema=DETECTORS_SCHEMA)
    pairs = pa.Table.from_pylist([
        {"kind": "neighbours", "query_id": f"generated-{i}", "query_split": "generated", "other_id": f"digits-{i:04d}",
         "other_split": "train", "distance": 0.01 * i, "query_png": png(train[i]), "other_png": png(train[i])}
        for i in range(12)], schema=PAIRS_SCHEMA)
    cells = pa.Table.from_pylist([
        {"cell": i, "n_train": 10, "n_val": 5, "n_generated": 8, "val_mass": 1 / 60, "z_u": float(rng.normal()),
         "kept": True} for i in range(60)], schema=CELLS_SCHEMA)
    birthday = pa.Table.from_pylist([{"batch": b, "id_a": "generated-1", "id_b": "generated-2", "distance": 3.0,
                                      "duplicate": False} for b in range(2)], schema=BIRTHDAY_SCHEMA)
    return CompanionFiles(detectors, cells, birthday, pairs)


def discriminator(errors: dict[str, np.ndarray], rng: np.random.Generator) -> pa.Table:
    shift = {"train": 2.0, "val": 0.0, "generated": -1.0}
    return pa.Table.from_pylist([{"image_id": f"digits-{s}-{i:04d}", "split": s, "score": float(rng.normal(shift[s])),
                                  "classified_real": True} for s in errors for i in range(len(errors[s]))])


def assert_readable(found: dict, *, figure: bool = True) -> None:
    for state in ("folded", "open"):
        measured = found[state]
        assert measured["overflow"] <= 0, f"{state}: {measured['overflow']} px of horizontal scroll at 1280 px"
        assert measured["broken"] == [], f"{state}: images that do not decode: {measured['broken'][:5]}"
        if figure:
            assert measured["figure_top"] is not None and measured["figure_top"] < FIRST_SCREEN, measured
    assert found["errors"] == [] and found["requests"] == []


def test_demo_report_shows_the_figure_first_and_fits_the_screen(chromium, tmp_path):
    found = inspect(chromium, demo_report(tmp_path))
    assert_readable(found)
    # 2 figures + 20 memorized pairs (target, recovery) + 6 recoveries x 3 (target, recovery, |difference|)
    # + 12 closest generated/train pairs + the discriminator's score histograms
    assert found["open"]["images"] == 2 + 20 * 2 + 6 * 3 + 12 * 2 + 1
    assert found["folded"]["folded"] >= 4  # statistics, rules, flagged images, samples, provenance wait below
    assert found["folded"]["height"] < found["open"]["height"]


def test_demo_report_prints_every_section_within_the_paper(chromium, tmp_path):
    path = demo_report(tmp_path)
    page = chromium.new_page()
    page.goto(path.resolve().as_uri())
    pdf = page.pdf(format="A4")  # what the browser's "print to PDF" makes; printing opens every folded section
    page.emulate_media(media="print")
    page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 px per inch
    printed = page.evaluate(MEASURE)
    page.close()
    assert pdf.startswith(b"%PDF") and printed["folded"] == 0 and printed["broken"] == []
    assert printed["overflow"] <= 0, f"{printed['overflow']} px wider than the page when printed"


def test_large_audit_report_stays_small_and_its_flagged_table_filters_and_sorts(chromium, tmp_path):
    results, samples = synthetic_audit(100_000, seed=1)
    reduction = reduce(results)
    flagged = int(np.sum(reduction.ranking.column("flagged").to_numpy(zero_copy_only=False)))
    path = tmp_path / "large.html"
    path.write_text(render_report(reduction, results=results, samples=samples, run_info=RUN_INFO))
    assert flagged > MAX_LISTED and path.stat().st_size < 10_000_000
    text = path.read_text()
    assert f"{flagged - MAX_LISTED} more flagged images are not listed here" in text and "ranking.parquet" in text
    assert_readable(inspect(chromium, path))

    page = chromium.new_page()
    page.goto(path.resolve().as_uri())
    page.evaluate("() => document.querySelector('#memorized details').open = true")
    rows = "#flagged-0 tbody tr"
    assert page.locator(rows).count() == MAX_LISTED
    page.fill("input.filter[data-table=flagged-0]", "train-1")
    visible = page.eval_on_selector_all(rows, "rs => rs.filter(r => !r.hidden).map(r => r.cells[1].textContent)")
    assert visible and all("train-1" in v for v in visible) and len(visible) < MAX_LISTED
    page.fill("input.filter[data-table=flagged-0]", "")
    page.click("#flagged-0 th:nth-child(3)")  # error, ascending
    page.click("#flagged-0 th:nth-child(3)")  # descending
    shown = page.eval_on_selector_all(rows, "rs => rs.map(r => parseFloat(r.cells[2].textContent))")
    assert shown == sorted(shown, reverse=True) and len(shown) == MAX_LISTED
    page.close()


def test_history_and_compare_pages_share_the_look_and_fit(chromium, tmp_path):
    a = write_output(str(tmp_path / "a"), errors(0.0, 1), finished="2026-01-01T00:00:00+00:00",
                     run={"model": "m", "tags": {"checkpoint": "step-1000"}})
    b = write_output(str(tmp_path / "b"), errors(1.5, 2), finished="2026-02-01T00:00:00+00:00",
                     run={"model": "m", "tags": {"checkpoint": "step-2000"}})
    history = tmp_path / "history.html"
    history.write_text(render_history(pa.concat_tables([history_row(a), history_row(b)])))
    compare = tmp_path / "compare.html"
    compare.write_text(render_comparison(compare_runs(a, b), a, b))
    for path in (history, compare):
        text = path.read_text()
        assert '<header class="audit">' in text and "<dt>memaudit</dt>" in text
        assert_readable(inspect(chromium, path), figure=False)
