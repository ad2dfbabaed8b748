"""The docs cannot drift: the command reference is the CLI's own help, every command and option
has help text, every relative link in README.md and docs/ resolves, and the README stays short."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: The README is the front door; the manual lives in docs/.
README_MAX_BYTES = 8192

#: `[text](target)` and `![alt](target)`, the target up to a space or the closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_cli", DOCS / "generate_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans, where links are links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_cli_reference_is_fresh() -> None:
    generator = _generator()
    cli_md = DOCS / "cli.md"
    assert cli_md.exists(), "docs/cli.md is missing: run .venv/bin/python docs/generate_cli.py"
    assert cli_md.read_text(encoding="utf-8") == generator.render(), (
        "docs/cli.md is stale (the CLI's help changed): run .venv/bin/python docs/generate_cli.py")


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _generator()
    monkeypatch.setenv("COLUMNS", "40")
    narrow = generator.render()
    monkeypatch.setenv("COLUMNS", "300")
    assert generator.render() == narrow
    assert "\x1b[" not in narrow and "╭" not in narrow, "the reference holds terminal markup"


def test_cli_reference_covers_every_command() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    generator = _generator()
    for ctx, _command in generator.walk(generator.root_command()):
        assert f"\n## {ctx.command_path}\n" in text, f"docs/cli.md has no section for `{ctx.command_path}`"
        assert f"Usage: {ctx.command_path} " in text


def test_every_command_and_option_has_help() -> None:
    missing = _generator().missing_help()
    assert not missing, "help text missing (add help= to the option or a docstring to the command):\n" + "\n".join(missing)


def test_missing_help_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _generator()
    root = generator.root_command()
    store_init = root.commands["store"].commands["init"]
    store_init.params[0].help = None
    store_init.help = None
    monkeypatch.setattr(generator, "root_command", lambda: root)
    missing = generator.missing_help()
    assert "embedstore store init: the command has no help text" in missing
    assert "embedstore store init: --store has no help text" in missing


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in _LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"broken links in {path.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\nSee [a](missing.md), [b](#top), [c](#nowhere) and `[d](code.md)`.\n", encoding="utf-8")
    targets = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    assert targets == ["missing.md", "#top", "#nowhere"]
    assert _anchors(page) == {"top"}


def test_slugs_follow_github() -> None:
    assert _slug("`embedstore data sample` — the synthetic IU-Xray benchmark") == (
        "embedstore-data-sample--the-synthetic-iu-xray-benchmark")
    assert _slug("One writer, many readers") == "one-writer-many-readers"


def test_readme_is_the_front_door() -> None:
    size = README.stat().st_size
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; keep it under {README_MAX_BYTES} and move detail to docs/"
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_docs_cite_only_the_repository() -> None:
    hits = [f"{path.relative_to(ROOT)}: {line.strip()}"
            for path in _markdown_files()
            for line in path.read_text(encoding="utf-8").splitlines()
            if re.search(r"DESIG[N]|\bissue [0-9]", line)]
    assert not hits, "docs cite documents outside the repository:\n" + "\n".join(hits)
