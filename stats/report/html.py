"""HTML helpers of the report: escaping, tables, embedded PNGs. Every string from the data goes through escape()."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

from stats.text import number


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def cell(value: object) -> str:
    return escape(number(value) if isinstance(value, (int, float)) or value is None else value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], text_columns: Iterable[int] = (), *,
          table_id: str | None = None, searchable: bool = False, tall: bool = False) -> str:
    """A table in its own horizontally scrolling box, so a wide one never widens the page.

    Columns in text_columns (and the first) are left-aligned text, the others numbers. With
    table_id and searchable, a filter box above it and click-to-sort headers (the page's script).
    """
    text = set(text_columns) | {0}
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="text">{cell(v)}</td>' if i in text else f"<td>{cell(v)}</td>" for i, v in enumerate(row)
        ) + "</tr>\n"
        for row in rows
    )
    ident = f' id="{escape(table_id)}"' if table_id else ""
    klass = ' class="sortable"' if searchable else ""
    search = (f'<input type="search" class="filter" data-table="{escape(table_id)}" '
              'placeholder="filter rows (id, value ...)" aria-label="filter rows">' if searchable and table_id else "")
    box = "scroll tall" if tall else "scroll"
    return f'{search}<div class="{box}"><table{ident}{klass}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table></div>'


def img(png: bytes, alt: str, css: str | None = None) -> str:
    """An <img> with the PNG inline as a data URI, so the report stands alone."""
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{escape(css)}"' if css else ""
    return f'<img{klass} alt="{escape(alt)}" src="data:image/png;base64,{data}">'
