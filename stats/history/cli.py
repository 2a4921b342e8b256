"""`memaudit history URL [--model M]` and `memaudit compare OUT_A OUT_B`.

    memaudit history s3://bucket/audits/history/ --model ffhq-stylegan2   # table; history-<model>.html beside it
    memaudit compare s3://bucket/audits/ckpt-020000/ s3://bucket/audits/ckpt-025000/

Each main() takes the arguments after its command word. A StatsError is printed as one line
`error: ...` on stderr with exit code 2, as `memaudit report` does.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import warnings
from collections.abc import Callable, Sequence
from urllib.parse import quote

from stats import storage
from stats import io as stats_io
from stats.errors import StatsError
from stats.exit_codes import BAD_INPUT, OK

ENDPOINT_PROTOCOLS = ("s3://", "s3a://")


def history_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memaudit history", description="The runs recorded at a history URL "
                                "(output.history): a table here, and an HTML page of trend plots.")
    p.add_argument("url", metavar="URL", help="the history URL (output.history of the audits)")
    p.add_argument("--model", help="only this model's runs (run.model)")
    p.add_argument("--html", metavar="URL", help="where to write the page (default: URL/history.html, "
                   "or URL/history-<model>.html with --model)")
    _endpoint(p)
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memaudit compare", description="Two audits side by side: per-image error "
                                "changes for the images in both, and tests between their errors.")
    p.add_argument("out_a", metavar="OUT_A", help="the earlier run's output URL")
    p.add_argument("out_b", metavar="OUT_B", help="the later run's output URL")
    p.add_argument("--out", metavar="URL", help="also write compare-images.parquet and compare-tests.parquet here")
    p.add_argument("--top", type=int, default=10, help="newly flagged train images to list (default 10)")
    _endpoint(p)
    return p


def history_main(argv: Sequence[str] | None = None) -> int:
    from stats.history.runs import read_history
    from stats.report.history import format_history, render_history

    def run(args: argparse.Namespace, options: dict | None) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = read_history(args.url, model=args.model, storage_options=options)
        for warning in caught:  # a skipped run file: named on stderr, the other runs still shown
            print(f"warning: {warning.message}", file=sys.stderr)
        print(format_history(history))
        name = f"history-{quote(args.model, safe='')}.html" if args.model else "history.html"
        page = args.html or posixpath.join(args.url.rstrip("/"), name)
        fs, path = stats_io.open_output(page, options)
        try:
            storage.write_atomic(fs, path, render_history(history).encode("utf-8"))
        except OSError as exc:  # a read-only history: the table is printed; say where else the page can go
            raise StatsError(f"cannot write the history page {page} ({exc}); choose another place with --html") from None
        print(f"\nhistory page: {page}")

    return _main(history_parser(), argv, run, lambda a: [a.url] + ([a.html] if a.html else []))


def compare_main(argv: Sequence[str] | None = None) -> int:
    from stats.history.compare import compare_runs, format_comparison, read_run_json, render_comparison

    def run(args: argparse.Namespace, options: dict | None) -> None:
        comparison = compare_runs(args.out_a, args.out_b, storage_options=options)
        print(format_comparison(comparison, args.out_a, args.out_b, top=args.top))
        if args.out:
            fs, root = stats_io.open_output(args.out, options)
            storage.write_atomic(fs, posixpath.join(root, "compare-images.parquet"),
                                  storage.parquet_bytes(comparison.images))
            storage.write_atomic(fs, posixpath.join(root, "compare-tests.parquet"),
                                  storage.parquet_bytes(comparison.tests))
            page = render_comparison(comparison, args.out_a, args.out_b, info_a=read_run_json(args.out_a, options),
                                     info_b=read_run_json(args.out_b, options))
            storage.write_atomic(fs, posixpath.join(root, "compare.html"), page.encode("utf-8"))
            print(f"\nwritten: {args.out.rstrip('/')}/compare-images.parquet, compare-tests.parquet, compare.html")

    return _main(compare_parser(), argv, run, lambda a: [a.out_a, a.out_b] + ([a.out] if a.out else []))


def _endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-endpoint", metavar="URL",
                   help="endpoint of an S3-compatible store (credentials come from the standard AWS chain)")


def _main(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
          run: Callable[[argparse.Namespace, dict | None], None],
          urls: Callable[[argparse.Namespace], list[str]]) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return int(exc.code or 0)
    try:
        options = None
        if args.storage_endpoint:
            local = [u for u in urls(args) if not u.startswith(ENDPOINT_PROTOCOLS)]
            if local:
                raise StatsError(f"--storage-endpoint applies to s3:// URLs only, not {local[0]!r}")
            options = {"endpoint_url": args.storage_endpoint}
        run(args, options)
    except StatsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    return OK


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    mains = {"history": history_main, "compare": compare_main}
    if command not in mains:
        print("usage: python -m stats.history.cli {history,compare} ...", file=sys.stderr)
        sys.exit(BAD_INPUT)
    sys.exit(mains[command](sys.argv[2:]))
