"""Every HTML page embedstore writes (the report, each chart) is put together here, with one escaping
helper per context, so that no stored string — report text, label, dataset, run or model name, prompt —
runs as script in a shared page; and the shareable form of paths, so that no machine path leaves in one."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

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


def page(title: str, body: str, scripts: list[str], style: str = "") -> str:
    """A self-contained page: `body` (HTML the caller escaped), the Vega bundle inlined, then `scripts`."""
    import vl_convert

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_text(title)}</title>"
            f"<style>{style}</style></head><body>{body}"
            f"<script>{vl_convert.javascript_bundle()}</script><script>{''.join(scripts)}</script></body></html>")


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
