"""Benchmark: report.html's size and opening time as the audit grows, 10^3 to 10^6 result rows.

    python benchmarks/report_size.py                       # 1e3, 1e4, 1e5, 1e6 rows
    python benchmarks/report_size.py --rows 1000 100000 --keep /tmp/report-size

Synthetic audits (45% train, 45% val, 10% generated; 5% of the training images recovered almost
exactly, so the flagged set grows with the audit), with samples.parquet as the job writes it, go
through the real reduce and render_report. Per size: the wall time of reduce + render, the HTML
size, and in headless Chromium (the system's /usr/bin/chromium, as the browser test runs it) the
time to the load event and to a page whose images have all decoded, plus the checks the browser
test makes (sideways overflow at 1280 px, where the error figure starts, broken images, console
errors, requests). Targets: under 10 MB and under 3 s to open at 10^5 images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stats import reduce, render_report  # noqa: E402
from tests._browser import MEASURE, browser, chromium_missing, synthetic_audit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    parser.add_argument("--keep", metavar="DIR", help="write the reports here instead of a temp dir")
    args = parser.parse_args()
    missing = chromium_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    folder = Path(args.keep or tempfile.mkdtemp(prefix="report-size-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{'rows':>9} {'flagged':>8} {'reduce s':>9} {'render s':>9} {'HTML MB':>8} {'load s':>7} {'decoded s':>9} "
          f"{'images':>6} {'overflow':>8} {'figure px':>9} {'errors':>6} {'requests':>8}")
    with browser() as context:
        for rows in args.rows:
            results, samples = synthetic_audit(rows, seed=0)
            start = time.perf_counter()
            reduction = reduce(results)
            reduced = time.perf_counter()
            html = render_report(reduction, results=results, samples=samples)
            rendered = time.perf_counter()
            path = folder / f"report-{rows}.html"
            path.write_text(html)
            page = context.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("data:", "file:")) else None)
            opened = time.perf_counter()
            page.goto(path.resolve().as_uri(), wait_until="load")
            loaded = time.perf_counter()
            measured = page.evaluate(MEASURE)
            decoded = time.perf_counter()
            page.close()
            flagged = int(reduction.ranking.column("flagged").to_numpy(zero_copy_only=False).sum())
            print(f"{rows:>9} {flagged:>8} {reduced - start:>9.2f} {rendered - reduced:>9.2f} "
                  f"{path.stat().st_size / 1e6:>8.2f} {loaded - opened:>7.2f} {decoded - opened:>9.2f} "
                  f"{measured['images']:>6} {measured['overflow']:>8} {measured['figure_top']:>9.0f} {len(errors):>6} "
                  f"{len(requests):>8}", flush=True)
    print(f"reports: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
