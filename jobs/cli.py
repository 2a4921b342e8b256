"""The `memaudit` command.

    memaudit audit [--config audit.yaml] [--out URL] [...]   # the same as `python -m jobs.audit ...`
    memaudit report OUT                                       # rebuild tables and report.html from an output
"""

from __future__ import annotations

import sys

USAGE = """usage: memaudit {audit,report} ...

  audit   run (or resume) an audit: memaudit audit --config audit.yaml   (no --config: the bundled demo)
  report  rebuild summary, tests, histograms and report.html of an output: memaudit report OUT

`memaudit audit --help` and `memaudit report --help` list the options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "audit":
        from .audit import main as audit_main

        return audit_main(rest, prog="memaudit audit")
    if command == "report":
        from stats.cli import main as report_main

        return report_main(rest)
    print(f"error: unknown command {command!r} (valid: audit, report)\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
