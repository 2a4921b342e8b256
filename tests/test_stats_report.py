"""The HTML report: valid, self-contained, escaped, with every section it should have."""

from __future__ import annotations

import base64
import html
import io
import json
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from stats import measure_start_cap, StatsError, reduce, render_report
from stats.report.curves import budget_curves, convergence_curves, iterations, padded_traces
from stats.report.sections import spending_rows
from stats.inputs import group_results

EVIL = "<script>alert(1)</script>"


class Page(HTMLParser):
    """Collects what the tests look at, and checks that every opened tag is closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.script_sources: list[str] = []
        self.text: list[str] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "script":
            self.scripts += 1
            if attrs.get("src"):
                self.script_sources.append(attrs["src"])
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    assert page.stack == []
    return page


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_results(with_traces: bool = True) -> pa.Table:
    rng = np.random.default_rng(0)
    columns: dict[str, list] = {"image_id": [], "split": [], "error": [], "converged": [], "trace": []}
    for split, centre, n in (("train", -4.0, 40), ("val", -3.0, 40), ("generated", -9.0, 20)):
        errors = rng.lognormal(centre, 0.5, n)
        columns["image_id"] += [f"{split}-{i}" for i in range(n)]
        columns["split"] += [split] * n
        columns["error"] += errors.tolist()
        columns["converged"] += [True] * n
        # Traces of different lengths, decreasing to the final error.
        columns["trace"] += [list(e * np.linspace(10, 1, 5 + i % 7)) for i, e in enumerate(errors)]
    columns["image_id"][0] = EVIL
    if not with_traces:
        del columns["trace"]
    return pa.table(columns, schema=None).cast(
        pa.schema(
            [("image_id", pa.string()), ("split", pa.string()), ("error", pa.float64()), ("converged", pa.bool_())]
            + ([("trace", pa.list_(pa.float32()))] if with_traces else [])
        )
    )


def make_samples() -> pa.Table:
    rng = np.random.default_rng(1)
    rows = []
    for split in ("train", "val"):
        for rank in ("worst", "best", "median"):
            target = rng.integers(0, 256, (8, 8, 3))
            recovery = np.clip(target + rng.integers(-9, 10, (8, 8, 3)), 0, 255)
            rows.append(
                {
                    "image_id": EVIL if rank == "best" else f"{split}-{rank}",
                    "split": split,
                    "rank": rank,
                    "error": 0.01,
                    "target": png(target),
                    "recovery": png(recovery),
                }
            )
    rows.append({"image_id": "broken", "split": "val", "rank": "best", "error": 0.5, "target": b"not a png", "recovery": rows[0]["recovery"]})
    return pa.Table.from_pylist(rows)


def test_report_is_valid_self_contained_html_with_the_verdict():
    results = make_results()
    rejects = pa.table(
        {
            "image_id": [EVIL, "x"],
            "split": ["train", "val"],
            "source": ["s3://b/<i>.png", "s3://b/x.png"],
            "row": pa.array([3, None], pa.int64()),
            "stage": ["decode", "decode"],
            "reason": [f"cannot identify {EVIL}", "truncated"],
        }
    )
    run_info = {"config": {"stats": {"alpha": 0.01, "note": EVIL}, "run": {"model": EVIL}}, "fingerprint": "abc"}
    reduction = reduce(results, rejects)
    document = render_report(reduction, results=results, rejects=rejects, samples=make_samples(), run_info=run_info)
    page = parse(document)
    text = "".join(page.text)

    assert reduction.verdict.sentence in text
    assert text.index(reduction.verdict.sentence) < text.index("Statistics")  # verdict first
    # First screen: verdict, the figure, the most memorized images, the reasons; the rest folded below.
    assert page.sections == ["verdict", "distributions", "most-memorized", "reasons", "statistics", "rules", "memorized",
                             "convergence", "samples", "rejects", "provenance"]
    assert document.index('id="distributions"') < document.index("<img") < document.index('id="statistics"')
    assert document.count('<details class="fold">') >= 7  # every section after the reasons can be folded
    assert page.scripts == 1 and page.script_sources == []  # one inline script: sorting and filtering, no fetch
    assert EVIL not in document and "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    # The header says what was audited; the model name comes from run.json and is escaped there too.
    assert f"<dt>model</dt><dd>{html.escape(EVIL)}</dd>" in document and "<dt>data snapshot</dt>" in document
    assert EVIL in text  # shown to the reader as text
    assert "http" not in "".join(page.images)  # nothing fetched from elsewhere
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    # 2 distributions + 1 convergence + 6 complete samples x 3 + the broken one's recovery
    assert len(page.images) == 3 + 6 * 3 + 1
    assert "target image cannot be decoded" in text
    assert '"fingerprint": "abc"' in text and "Keys of config.stats that are not stats settings: note" in text


def test_report_without_traces_samples_rejects_or_run_info():
    results = make_results(with_traces=False)
    page = parse(render_report(reduce(results), results=results))
    assert page.sections == ["verdict", "distributions", "most-memorized", "reasons", "statistics", "rules", "memorized",
                             "provenance"]
    assert len(page.images) == 2
    text = "".join(page.text)
    assert "No rendered images of these" in text


def test_difference_image_is_the_absolute_difference():
    from stats.report.samples import prepare

    target = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    recovery = np.array([[10, 90], [255, 0]], dtype=np.uint8)
    item = prepare({"image_id": "a", "split": "train", "rank": "best", "error": 0.1, "target": png(target), "recovery": png(recovery)})
    difference = np.asarray(Image.open(io.BytesIO(item.difference)))
    assert difference.tolist() == [[10, 10], [55, 255]]
    assert item.problem is None


def test_bad_samples_table_is_a_stats_error():
    results = make_results(with_traces=False)
    samples = make_samples().set_column(2, "rank", pa.array(["top"] * 7))
    with pytest.raises(StatsError, match="rank.*'top'"):
        render_report(reduce(results), results=results, samples=samples)


def test_padded_traces_carry_the_last_value_forward():
    traces = pa.array([[3.0, 2.0, 1.0], [5.0], [], None, [4.0, 3.5]], pa.list_(pa.float32()))
    assert padded_traces(traces).tolist() == [[3.0, 2.0, 1.0], [5.0, 5.0, 5.0], [4.0, 3.5, 3.5]]


def test_convergence_curves_are_quartiles_per_iteration():
    results = make_results()
    groups = group_results(results)
    curves = convergence_curves(results, groups.rows, cap=1000, seed=0)
    assert list(curves) == ["train", "val", "generated"]
    traces = results.filter(pc.equal(results.column("split"), "val")).column("trace").to_pylist()
    longest = max(len(t) for t in traces)
    matrix = np.array([t + [t[-1]] * (longest - len(t)) for t in traces], dtype=np.float64)
    assert curves["val"].median == pytest.approx(np.median(matrix, axis=0))
    assert curves["val"].q25 == pytest.approx(np.quantile(matrix, 0.25, axis=0))
    capped = convergence_curves(results, groups.rows, cap=10, seed=0)
    assert capped["val"].images == 10 and capped["val"].total == 40


def test_report_metadata_records_settings_and_verdict():
    results = make_results(with_traces=False)
    reduction = reduce(results)
    meta = json.loads(reduction.summary.schema.metadata[b"memaudit.stats"])
    assert meta["verdict"]["label"] == reduction.verdict.label
    assert meta["settings"]["alpha"] == 0.01


def test_split_names_are_escaped_everywhere():
    evil_split = '<img src=x onerror="alert(1)">'
    results = pa.table(
        {
            "image_id": [f"i{i}" for i in range(6)],
            "split": ["train", "train", "val", "val", evil_split, evil_split],
            "error": [0.1, 0.2, 0.3, 0.4, 0.01, 0.02],
        }
    )
    document = render_report(reduce(results), results=results)
    page = parse(document)
    assert evil_split not in document
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert evil_split in "".join(page.text)


def copies_results(n: int = 60, copies: int = 4) -> pa.Table:
    """Train and val alike, plus a few train images recovered almost exactly."""
    rng = np.random.default_rng(7)
    train, val = rng.lognormal(np.log(1e-2), 0.7, n), rng.lognormal(np.log(1e-2), 0.7, n)
    train[:copies] = [1e-5, 2e-5, 4e-5, 8e-5][:copies]
    return pa.table({"image_id": [f"train-{i}" for i in range(n)] + [f"val-{i}" for i in range(n)],
                     "split": ["train"] * n + ["val"] * n, "error": np.concatenate([train, val])})


def top_samples(ids: list[str]) -> pa.Table:
    rng = np.random.default_rng(2)
    rows = []
    for i, image_id in enumerate(ids, start=1):
        target = rng.integers(0, 256, (8, 8))
        rows.append({"image_id": image_id, "split": "train", "rank": f"top-{i}", "error": 1e-5,
                     "target": png(target), "recovery": png(target)})
    return pa.Table.from_pylist(rows)


def test_most_memorized_section_shows_the_flagged_images_with_p_and_q():
    results = copies_results()
    reduction = reduce(results)
    flagged = [r["image_id"] for r in reduction.ranking.to_pylist() if r["flagged"]]
    assert flagged[:4] == ["train-0", "train-1", "train-2", "train-3"]
    page = parse(render_report(reduction, results=results, samples=top_samples(flagged)))
    text = "".join(page.text)
    assert "Most memorized training images" in text
    assert f"{len(flagged)} of 60 train images are flagged at q" in text
    assert "For scale: the smallest val error is" in text
    assert "#1 err 1e-05" in text and "train-0" in text
    # 2 distributions + target and recovery of each flagged image, in the first screen's grid
    assert len(page.images) == 2 + 2 * len(flagged)
    assert reduction.verdict.sentence.startswith(f"Memorization: {len(flagged)} training images are reproduced far")
    assert "top-1" not in text  # drawn under "Most memorized", not with best/median/worst


def test_search_section_from_the_engine_columns():
    results = copies_results()
    n = results.num_rows
    rng = np.random.default_rng(3)
    spent = rng.integers(50, 5000, n)
    reached = pa.array([int(s * 0.5) if i % 3 else None for i, s in enumerate(spent)], pa.int64())
    results = (results.append_column("evaluations", pa.array(spent, pa.int64()))
               .append_column("evaluations_to_exact", reached)
               .append_column("latent_norm", pa.array(rng.normal(1.0, 0.1, n))))
    reduction = reduce(results)
    row = reduction.summary.to_pylist()[0]
    assert row["exact_rate"] == pytest.approx(np.mean([i % 3 != 0 for i in range(60)]))
    assert row["evaluations_median"] == pytest.approx(np.median(spent[:60]))
    assert 0.7 < row["latent_norm_q05"] < row["latent_norm_median"] < row["latent_norm_q95"] < 1.3
    curves = budget_curves(results, group_results(results).rows)
    assert curves["train"].share[-1] == pytest.approx(row["exact_rate"])
    assert np.all(np.diff(curves["train"].budgets) >= 0)
    page = parse(render_report(reduction, results=results))
    assert "search" in page.sections and len(page.images) == 3
    assert "Success against" not in "".join(page.text)  # the figure's title is inside the PNG
    assert "share of each split recovered exactly" in "".join(page.text).lower()
    assert "Start cap" not in "".join(page.text)  # no run.json, no cap to show
    spent = {r[0]: r for r in spending_rows(results, group_results(results).rows)}  # where the budget went
    assert spent["train"][1] == 60 and sum(float(r[-1].rstrip("%")) for r in spent.values()) == pytest.approx(100, abs=0.5)
    assert "where the budget went" in "".join(page.text).lower()
    cap = measure_start_cap(pa.table({"mse": [1e-4] * 64, "restarts": [1] * 64}), exact_level=1e-3).to_dict()
    text = "".join(parse(render_report(reduction, results=results, run_info={"search": {"start_cap": cap}})).text)
    assert "stopped after 3 starts" in text and "64 of 64 generated images recovered" in text


def test_convergence_starts_at_iteration_zero():
    results = make_results()
    curve = convergence_curves(results, group_results(results).rows, cap=1000, seed=0)["train"]
    steps = iterations(curve)
    assert steps[0] == 0 and len(steps) == len(curve.median)  # trace[0] is the start point


def test_header_names_the_audit_and_its_data_snapshot_as_the_history_does(tmp_path):
    from stats.history.runs import history_row
    from stats.snapshot import data_snapshot, split_digests
    from tests._outputs import errors, write_output

    results = errors(1.0, 3)
    out = write_output(str(tmp_path / "out"), results, finished="2026-03-01T00:00:00+00:00", run={"model": "ffhq"})
    snapshot = history_row(out).column("data_snapshot")[0].as_py()
    assert data_snapshot(split_digests(results)) == snapshot
    reordered = results.take(np.arange(results.num_rows)[::-1])
    assert data_snapshot(split_digests(reordered)) == snapshot  # which images, not their order
    document = render_report(reduce(results), results=results,
                             run_info={"config": {"run": {"model": "ffhq"}}, "finished": "2026-03-01T00:00:00+00:00",
                                       "generator_sha256": "ab" * 32})
    assert f"<dt>data snapshot</dt><dd>{snapshot[:12]}</dd>" in document
    assert "<dt>model</dt><dd>ffhq</dd>" in document and "<dt>generator sha256</dt><dd>abababababab</dd>" in document


def test_a_large_audit_report_lists_a_bounded_number_of_rows_and_says_where_the_rest_are():
    from stats.report.sections import MAX_LISTED
    from tests._browser import synthetic_audit

    results, samples = synthetic_audit(20_000, seed=4)
    reduction = reduce(results)
    flagged = int(pc.sum(reduction.ranking.column("flagged")).as_py())
    document = render_report(reduction, results=results, samples=samples)
    page = parse(document)
    assert flagged > MAX_LISTED and len(document) < 1_000_000
    listed = document[document.index('id="flagged-0"'):]
    assert listed[:listed.index("</table>")].count("<tr>") == MAX_LISTED + 1  # the header row and MAX_LISTED images
    assert f"{flagged - MAX_LISTED} more flagged images are not listed here" in "".join(page.text)
    assert len(page.images) == 2 + 20 * 2 + 9 * 3  # figures, the top 20 memorized, best/median/worst of 3 splits


def test_compare_out_writes_a_compare_page_in_the_reports_look(tmp_path, capsys):
    from stats.history.cli import compare_main
    from tests._outputs import errors, write_output

    a = write_output(str(tmp_path / "a"), errors(0.0, 1), finished="2026-01-01T00:00:00+00:00", run={"model": "m"})
    b = write_output(str(tmp_path / "b"), errors(1.5, 2), finished="2026-02-01T00:00:00+00:00", run={"model": "m"})
    assert compare_main([a, b, "--out", str(tmp_path / "cmp")]) == 0
    document = (tmp_path / "cmp" / "compare.html").read_text()
    page = parse(document)
    assert page.sections == ["change", "side-by-side", "tests", "newly-flagged"] and page.script_sources == []
    assert f"<dt>A</dt><dd>{a}</dd>" in document and "<dt>B model</dt><dd>m</dd>" in document
    assert len(page.images) == 1 and "training images flagged in B and not in A" in "".join(page.text)
