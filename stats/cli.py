"""`memaudit report OUT [--storage-endpoint URL]`: rebuild the tables and report of a run.

    python -m stats.cli OUT            # the same, without the memaudit entry point

main() takes the arguments after the word `report`. It prints the verdict, a compact
summary and the report's URL; a StatsError becomes one line `error: ...` on stderr and
exit code 2. With --fail-on, the verdict sets the exit code as for `memaudit audit`
(stats.exit_codes: 3 memorization, 4 inconclusive), so CI can gate on an existing output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stats.errors import StatsError
from stats.exit_codes import BAD_INPUT, FAIL_ON, verdict_exit_code
from stats.report.render import report_from_output
from stats.text import format_summary

ENDPOINT_PROTOCOLS = ("s3://", "s3a://")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memaudit report",
        description="Rebuild summary/tests/histograms.parquet and report.html from OUT/results alone.",
    )
    parser.add_argument("out", metavar="OUT", help="the run's output URL (local path, s3://, memory://, ...)")
    parser.add_argument(
        "--storage-endpoint",
        metavar="URL",
        help="endpoint of an S3-compatible store (credentials come from the standard AWS chain)",
    )
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        help="exit 3 on memorization (and, with 'inconclusive', 4 on an inconclusive verdict); default: exit 0",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return int(exc.code or 0)
    try:
        storage_options = None
        if args.storage_endpoint:
            if not args.out.startswith(ENDPOINT_PROTOCOLS):
                raise StatsError(f"--storage-endpoint applies to s3:// outputs only, not {args.out!r}")
            storage_options = {"endpoint_url": args.storage_endpoint}
        reduction = report_from_output(args.out, storage_options=storage_options)
    except StatsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    print(format_summary(reduction))
    print(f"\nreport: {args.out.rstrip('/')}/report.html")
    return verdict_exit_code(reduction.verdict.label, args.fail_on)


if __name__ == "__main__":
    sys.exit(main())
