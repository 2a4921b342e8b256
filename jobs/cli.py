"""The `memaudit` command.

    memaudit audit [--config audit.yaml] [--out URL] [...]   # the same as `python -m jobs.audit ...`
    memaudit report OUT                                       # rebuild tables and report.html from an output
    memaudit history URL [--model M]                          # the runs recorded at output.history, trend page
    memaudit compare OUT_A OUT_B                              # two runs side by side, per-image changes
"""

from __future__ import annotations

import sys
from stats.exit_codes import BAD_INPUT, OK

USAGE = """usage: memaudit {audit,report,history,compare} ...

  audit    run (or resume) an audit: memaudit audit --config audit.yaml   (no --config: the bundled demo)
  report   rebuild summary, tests, histograms and report.html of an output: memaudit report OUT
  history  the runs recorded at an output.history URL, and a page of trend plots: memaudit history URL
  compare  two runs side by side, per-image error changes and tests: memaudit compare OUT_A OUT_B

`memaudit <command> --help` lists a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return OK if argv else BAD_INPUT
    command, rest = argv[0], argv[1:]
    if command == "audit":
        from .audit import main as audit_main

        return audit_main(rest, prog="memaudit audit")
    if command == "report":
        from stats.cli import main as report_main

        return report_main(rest)
    if command in ("history", "compare"):
        from stats.history.cli import compare_main, history_main

        return (history_main if command == "history" else compare_main)(rest)
    print(f"error: unknown command {command!r} (valid: audit, report, history, compare)\n\n{USAGE}", file=sys.stderr)
    return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
