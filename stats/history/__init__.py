"""Runs over time: the history dataset each finished run appends a row to (runs.py), `memaudit history` and
`memaudit compare` (cli.py), and the comparison of two runs (compare.py)."""
