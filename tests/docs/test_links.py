"""The repository stands on its own: every docs link and `docs/<PAGE>.md#anchor` citation resolves inside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# `docs/METHOD.md#image-score` in code and docs;
# `[text](METHOD.md#x)`, `[text](#x)`, `[text](../README.md)` in Markdown.
CITATION = re.compile(r"docs/([A-Z][A-Z_]*\.md)(?:#([a-z0-9-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s#]*)(?:#([a-z0-9-]+))?\)")
EXPLICIT_ANCHOR = re.compile(r'<a id="([a-z0-9-]+)"></a>')
HEADING = re.compile(r"^#+\s+(.+?)\s*$", re.MULTILINE)


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def text_files() -> list[Path]:
    suffixes = {".py", ".md", ".toml", ".yml", ".yaml", ".sh", ".cfg", ".txt"}
    return [p for p in tracked_files() if p.suffix in suffixes or p.name in ("Makefile", "Dockerfile")]


def anchors(markdown: Path) -> set[str]:
    text = markdown.read_text(encoding="utf-8")
    slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in HEADING.findall(text)}
    return set(EXPLICIT_ANCHOR.findall(text)) | slugs


def test_code_citations_of_docs_resolve() -> None:
    broken = []
    for path in text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for name, anchor in CITATION.findall(line):
                target = REPO / "docs" / name
                if not target.is_file() or (anchor and anchor not in anchors(target)):
                    broken.append(f"{path.relative_to(REPO)}:{number}: docs/{name}#{anchor}")
    assert broken == []


# The history pages are read as written (their paths are those of their day) but their links must still lead somewhere.
HISTORY = sorted((REPO / "docs" / "history").glob("*.md"))
LINKED_PAGES = [*sorted((REPO / "docs").glob("*.md")), *HISTORY, REPO / "README.md"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.name)
def test_markdown_links_resolve(page: Path) -> None:
    broken = []
    for target, anchor in MD_LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}#{anchor}: no such anchor")
    assert broken == []


def test_nothing_points_outside_the_repository() -> None:
    """No reference to documents or data beside the checkout (they do not travel with a clone)."""
    outside = re.compile(r"\.\./shared|shared/docs|ARCHITECTURE\.md|bridgenet-reference|/work/")
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in text_files()
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []


# Files the docs name that a run writes rather than the repository holds.
WRITTEN_BY_RUNS = {"benchmarks/results/gpu_check.json"}  # benchmarks/gpu_check.py, on a GPU machine only
REPO_PATH = re.compile(r"`((?:service|training|benchmarks|tests|docker|models|docs)/[\w./-]+?)/?`")


@pytest.mark.parametrize("page", [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"], ids=lambda p: p.name)
def test_files_the_docs_name_exist(page: Path) -> None:
    """A module or file moved or renamed must take the docs that name it along."""
    named = set(REPO_PATH.findall(page.read_text(encoding="utf-8"))) - WRITTEN_BY_RUNS
    assert sorted(p for p in named if not (REPO / p).exists()) == []
