"""The one look shared by report.html, history.html, sweep.html and compare.html.

One stylesheet, one header saying what was audited (model, generator sha256, data snapshot,
date, memaudit version), collapsible sections under a table of contents, and a few lines of
inline JavaScript for sorting and filtering tables. Nothing is fetched: no external script,
font or stylesheet, so a page opens the same offline, from S3 or attached to an email, and
prints to PDF from the browser with every section open.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any


from stats.history.runs import generator_url, model_stem
from stats.report.html import escape

STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 0 1.2em 2em; max-width: 78em; color: #222;
       line-height: 1.4; overflow-wrap: anywhere; }
header.audit { border-bottom: 2px solid #444; padding: 0.6em 0 0.4em; margin-bottom: 0.8em; }
header.audit h1 { font-size: 1.3em; margin: 0 0 0.2em; }
header.audit dl { display: flex; flex-wrap: wrap; gap: 0.1em 1.4em; margin: 0; font-size: 0.82em; color: #444; }
header.audit dt { font-weight: 600; } header.audit dt::after { content: ":"; }
header.audit dd { margin: 0 0 0 0.3em; font-family: ui-monospace, monospace; }
header.audit div { display: flex; }
h2 { font-size: 1.15em; margin: 1em 0 0.4em; } h3 { font-size: 1em; margin: 0.9em 0 0.3em; }
.verdict { padding: 0.6em 1em; border-radius: 6px; font-size: 1.05em; margin: 0.4em 0; }
.memorization { background: #fde2e1; border: 1px solid #d33; }
.no-evidence { background: #e3f4e1; border: 1px solid #3a3; }
.inconclusive { background: #fff4d6; border: 1px solid #c90; }
.confounds { padding: 0.2em 1em; border-left: 4px solid #c90; background: #fff8e6; }
.figures { display: flex; flex-wrap: wrap; gap: 0.6em; align-items: flex-start; }
.figures img { max-width: calc(50% - 0.3em); height: auto; }
.figures.history img { max-width: calc(33.3% - 0.4em); }
img { max-width: 100%; height: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(7.4em, 1fr)); gap: 0.5em; }
.tile { border: 1px solid #ddd; border-radius: 4px; padding: 0.25em; font-size: 0.75em; text-align: center; }
.tile .pair { display: flex; gap: 2px; justify-content: center; }
.tile img { width: 50%; max-width: 64px; image-rendering: pixelated; }
.grid.wide { grid-template-columns: repeat(auto-fill, minmax(13em, 1fr)); }
.tile.wide img { width: 33%; max-width: 80px; }
.tile .id { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: #555; }
.reasons { font-size: 0.9em; margin: 0.3em 0; padding-left: 1.3em; }
.note { color: #555; font-size: 0.88em; }
nav.toc { margin: 1em 0 0.5em; padding: 0.4em 0.8em; background: #f4f4f4; border-radius: 4px; font-size: 0.9em; }
nav.toc a { margin-right: 1em; white-space: nowrap; }
details.fold { border-top: 1px solid #ddd; }
details.fold > summary { cursor: pointer; list-style-position: outside; margin-left: 1em; padding: 0.5em 0; }
details.fold > summary h2 { display: inline; font-size: 1.1em; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll.tall { max-height: 32em; overflow-y: auto; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; overflow-wrap: normal; }
th { background: #f4f4f4; position: sticky; top: 0; }
th:first-child, td:first-child, td.text { text-align: left; }
td:not(.text) { white-space: nowrap; }
table.sortable th { cursor: pointer; } table.sortable th[data-dir=asc]::after { content: " \\25B2"; }
table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
input.filter { margin: 0.3em 0; padding: 0.2em 0.4em; width: 20em; max-width: 100%; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; max-height: 40em; }
.problem, .warning { color: #a00; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav.toc, input.filter { display: none; }
  .scroll, .scroll.tall, pre { overflow: visible; max-height: none; }
  pre { white-space: pre-wrap; }
  th { position: static; }
  table { font-size: 7.5pt; } th, td, td:not(.text) { white-space: normal; padding: 0.1em 0.25em; }
  img, .tile, figure, tr { break-inside: avoid; }
  details.fold > summary { list-style: none; margin-left: 0; }
}
"""

# Sort a table by a clicked header (numbers numerically, text alphabetically), filter a table's rows by a
# search box, open a folded section when its link is followed, and open every section before printing.
SCRIPT = """
(function () {
  function key(row, i) { var t = row.cells[i].textContent.trim(), f = parseFloat(t); return isNaN(f) ? t : f; }
  document.querySelectorAll('table.sortable th').forEach(function (th) {
    th.addEventListener('click', function () {
      var body = th.closest('table').tBodies[0], i = th.cellIndex, dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
      th.parentNode.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a, i), y = key(b, i);
        var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return dir === 'asc' ? c : -c;
      }).forEach(function (r) { body.appendChild(r); });
    });
  });
  document.querySelectorAll('input.filter').forEach(function (box) {
    box.addEventListener('input', function () {
      var q = box.value.toLowerCase(), table = document.getElementById(box.dataset.table);
      Array.from(table.tBodies[0].rows).forEach(function (r) {
        r.hidden = q !== '' && r.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  });
  function reveal() {
    var target = location.hash && document.getElementById(location.hash.slice(1));
    var fold = target && target.querySelector('details');
    if (fold) { fold.open = true; }
  }
  window.addEventListener('hashchange', reveal); reveal();
  window.addEventListener('beforeprint', function () {
    document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  });
})();
"""

_SECTION = re.compile(r'^<section id="([^"]+)"><h2>(.*?)</h2>', re.S)


def page(title: str, header: str, body: str) -> str:
    """A whole self-contained document: the shared stylesheet, the header, the body and the script."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{header}\n{body}\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def header(title: str, fields: Sequence[tuple[str, object]]) -> str:
    """The page's title and what was audited, one short line of label: value pairs."""
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in fields if v not in (None, ""))
    return f'<header class="audit"><h1>{escape(title)}</h1><dl>{items}</dl></header>'


def fold(section: str, *, open_: bool = False) -> str:
    """A section written as <section id><h2>title</h2>...</section>, folded under its title."""
    match = _SECTION.match(section)
    if not match or not section.endswith("</section>"):
        return section
    inner = section[match.end():-len("</section>")]
    flag = " open" if open_ else ""
    return (f'<section id="{match.group(1)}"><details class="fold"{flag}><summary><h2>{match.group(2)}</h2>'
            f"</summary>{inner}</details></section>")


def toc(sections: Iterable[str]) -> str:
    """Links to the folded sections, in page order."""
    links = [f'<a href="#{m.group(1)}">{m.group(2)}</a>' for m in (_SECTION.match(s) for s in sections) if m]
    return f'<nav class="toc"><strong>Sections:</strong> {" ".join(links)}</nav>' if links else ""


def version() -> str:
    try:
        return metadata.version("memaudit")
    except metadata.PackageNotFoundError:
        return "unknown"


def audit_fields(run_info: dict[str, Any] | None, snapshot: str | None) -> list[tuple[str, object]]:
    """Model, generator sha256, data snapshot, date and version of one audit, from run.json where it says."""
    info = run_info if isinstance(run_info, dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    generator = config.get("generator") if isinstance(config.get("generator"), dict) else {}
    model = run.get("model") or model_stem(generator_url(generator))  # named as the history names it
    versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    made = info.get("finished") or info.get("started")
    return [
        ("model", model or "not recorded"),
        ("generator sha256", short(info.get("generator_sha256")) or "not recorded"),
        ("plan", short(info.get("fingerprint"))),
        ("data snapshot", short(snapshot)),
        ("audited", made or "not recorded"),
        ("memaudit", versions.get("memaudit") or version()),
        ("page made", today()),
    ]


def short(digest: object) -> str | None:
    """A hash cut to 12 hex digits: enough to tell runs apart at a glance."""
    return str(digest)[:12] if digest else None


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
