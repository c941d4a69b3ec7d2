"""Documentation stays self-contained: no references to documents outside the repository, no dead relative links."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEARCHED = ("structured_hf", "scripts", "configs", "tests", "docs", "model_cards")
# Internal planning documents that are not part of the repository: nothing may cite them.
OUTSIDE = re.compile("RESEARCH" + r"\s*§|" + "RESEARCH" + r"\.md|" + "DESIGN" + r"\.md")


def _text_files() -> list[Path]:
    files = [REPO / "README.md"]
    for top in SEARCHED:
        files += [p for p in (REPO / top).rglob("*") if p.suffix in {".py", ".md", ".yaml", ".yml", ".txt", ".jinja"}]
    return [p for p in files if "__pycache__" not in p.parts]


def test_no_references_to_documents_outside_the_repository():
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in _text_files()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, hits


def test_the_pattern_finds_a_reference():
    assert OUTSIDE.search("see " + "RESEARCH" + " §7") and not OUTSIDE.search("see docs/m2-control.md")


def test_relative_links_in_readme_and_docs_resolve():
    dead = []
    for page in [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "model_cards").rglob("*.md")),
    ]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#", 1)[0]).exists():
                dead.append(f"{page.relative_to(REPO)} -> {target}")
    assert not dead, dead
