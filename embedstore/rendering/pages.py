"""Every HTML page embedstore writes (the report, each chart) is put together here, with one escaping
helper per context, so that no stored string — report text, label, dataset, run or model name, prompt —
runs as script in a shared page; and the shareable form of paths, so that no machine path leaves in one.
Tables are built here too: escaped cells, sortable by a click on a header, optionally collapsed."""

from __future__ import annotations

import html
import json
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

#: Characters that could end or bend a <script> element (`</script>`, `<!--`), or a JS string
#: (U+2028/2029 in older engines), written as JSON escapes: the JSON value is unchanged.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})


def html_text(value: object) -> str:
    """`value` as HTML text or a quoted attribute value: `& < > " '` as entities."""
    return html.escape(str(value), quote=True)


def script_json(value: Any) -> str:
    """`value` as a JSON literal that is safe inside a `<script>` element: `<`, `>`, `&`, U+2028 and
    U+2029 as `\\uXXXX` escapes (they can occur only inside JSON strings, so the value is unchanged)."""
    return json.dumps(value, ensure_ascii=False).translate(_SCRIPT_ESCAPES)


def vega_embed(element_id: str, spec: dict[str, Any]) -> str:
    """The script statement that draws `spec` into the element `element_id` (SVG, no action menu)."""
    return (f"vegaEmbed({script_json('#' + element_id)}, {script_json(spec)}, "
            "{actions: false, renderer: 'svg'}).catch(console.error);")


#: Sorts a `table.sortable` by the column whose header is clicked (or focused and Enter/Space pressed):
#: ascending first, descending on the next click; the header's `aria-sort` says which. Cells are compared
#: by their leading number (`0.213 [0.180, 0.240]` by 0.213) where both have one, else as text; cells
#: without a number (`—`) stay last. Inline and self-contained: no network, no library.
SORT_SCRIPT = """
(function () {
  function key(text) {
    var m = /^\\s*[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i.exec(text);
    return m ? parseFloat(m[0]) : null;
  }
  function sort(table, header, column) {
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].textContent, y = b.cells[column].textContent;
      var p = key(x), q = key(y);
      if (p === null && q !== null) { return 1; }
      if (q === null && p !== null) { return -1; }
      var order = (p !== null && q !== null) ? p - q : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.tabIndex = 0;
      header.title = 'sort by this column';
      header.addEventListener('click', function () { sort(table, header, column); });
      header.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sort(table, header, column); }
      });
    });
  });
})();
"""

#: What sortable tables and collapsed sections look like.
TABLE_STYLE = """
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
details{margin:6px 0}details>summary{cursor:pointer}
"""


def table_html(frame: pl.DataFrame, sortable: bool = True, links: Collection[str] = ()) -> str:
    """`frame` as an HTML table, every header and cell escaped; `sortable` tables sort by a clicked
    header once SORT_SCRIPT is on the page; cells of the `links` columns (relative paths) become links."""
    def cell(column: str, value: object) -> str:
        if column in links and value:
            return f"<a href='{html_text(value)}'>{html_text(value)}</a>"
        return html_text(value)

    head = "".join(f"<th>{html_text(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(c, v)}</td>" for c, v in zip(frame.columns, row, strict=True))
                   + "</tr>" for row in frame.iter_rows())
    kind = " class='sortable'" if sortable else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def collapsed(title: str, content: str) -> str:
    """`content` (HTML the caller escaped) in a closed `<details>` element titled `title` (escaped here)."""
    return f"<details><summary>{html_text(title)}</summary>{content}</details>"


def page(title: str, body: str, scripts: list[str], style: str = "") -> str:
    """A self-contained page: `body` (HTML the caller escaped), the Vega bundle inlined, then `scripts`."""
    import vl_convert

    bundle = vl_convert.javascript_bundle()  # type: ignore[call-arg]  # the stub marks the optional snippet required
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_text(title)}</title>"
            f"<style>{style}</style></head><body>{body}"
            f"<script>{bundle}</script><script>{''.join(scripts)}</script></body></html>")


def chart_page(title: str, spec: dict[str, Any]) -> str:
    """One chart on its own page (what `embedstore chart` writes as KIND.html)."""
    return page(title, "<div id='chart'></div>", [vega_embed("chart", spec)])


def shareable_path(value: str | Path, root: Path) -> str:
    """A path as a shared page may show it: relative to `root` (the store) when inside it, else its
    last component only — never a home folder or any other absolute path."""
    path = Path(value).expanduser()
    if path.is_absolute():
        for base in (root, root.resolve()):
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
    return path.name


def shareable_model(model_id: str, root: Path) -> str:
    """A model id as a shared page may show it: a `local-dir:` folder as its shareable path."""
    prefix = "local-dir:"
    if model_id.startswith(prefix):
        return prefix + shareable_path(model_id.removeprefix(prefix), root)
    return model_id


def scrub(text: str, root: Path) -> str:
    """A free-text message (an error, a stored parameter) with the store's path as `<store>` and the
    home folder as `~`."""
    for base in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        text = text.replace(base, "<store>")
    home = str(Path.home())
    return text.replace(home + "/", "~/") if home != "/" else text
