"""The README and docs stay a user's documents: short, no work log, links that resolve,
notebooks that end by saying what they showed, no references to a document users lack."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RENDERED = sorted((ROOT / "docs" / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# A generated block: <!-- name:start --> ... <!-- name:end -->, written by a tool.
BLOCK = re.compile(r"<!--\s*([\w-]+):start\s*-->.*?<!--\s*\1:end\s*-->", re.S)
ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
# A commit-like token: 7 to 40 hex characters holding at least one digit and one letter
# (so neither plain numbers such as a DOI's nor words such as "decade" count).
COMMIT = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _outside_blocks(text: str) -> str:
    return BLOCK.sub("", text)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; at most 250"


def test_readme_keeps_its_generated_blocks():
    text = README.read_text()
    assert "<!-- results:start -->" in text and "<!-- results:end -->" in text


@pytest.mark.parametrize("pattern", [ISO_DATE, COMMIT], ids=["iso date", "commit hash"])
def test_readme_has_no_dates_or_commits_outside_generated_blocks(pattern):
    found = pattern.findall(_outside_blocks(README.read_text()))
    assert not found, f"README.md outside its generated blocks: {found}"


def test_readme_quotes_no_commit_hash_even_in_generated_blocks():
    found = COMMIT.findall(README.read_text())
    assert not found, f"README.md quotes commit hashes: {found}"


def test_generated_blocks_are_closed():
    for md in [README, *DOCS]:
        text = md.read_text()
        starts = re.findall(r"<!--\s*([\w-]+):start\s*-->", text)
        ends = re.findall(r"<!--\s*([\w-]+):end\s*-->", text)
        assert sorted(starts) == sorted(ends), f"{md.name}: unmatched generated-block markers"


@pytest.mark.parametrize("md", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    broken = []
    for target in LINK.findall(md.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (md.parent / path).exists():
            broken.append(target)
    assert not broken, f"{md.relative_to(ROOT)} links to missing files: {broken}"


@pytest.mark.parametrize("nb", [*NOTEBOOKS, *RENDERED], ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_ends_with_what_it_shows(nb):
    cells = json.loads(nb.read_text())["cells"]
    last = cells[-1]
    source = "".join(last["source"]) if isinstance(last["source"], list) else last["source"]
    assert last["cell_type"] == "markdown" and source.startswith("## What this shows"), (
        f"{nb.relative_to(ROOT)} does not end with a 'What this shows' markdown cell")


def test_every_notebook_has_a_rendered_copy():
    assert [p.name for p in NOTEBOOKS] == [p.name for p in RENDERED]


def test_no_reference_to_the_spec():
    """Users do not have the project's specification: the package, notebooks and tools
    point to the README or docs/ instead (``grep -rn SPEC`` finds nothing)."""
    hits = []
    for folder in ("bdunlearn", "notebooks", "tools"):
        for f in sorted((ROOT / folder).rglob("*")):
            if f.suffix in {".py", ".ipynb", ".sh", ".md"} and f.is_file():
                for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                    if "SPEC" in line:
                        hits.append(f"{f.relative_to(ROOT)}:{n}")
    assert not hits, f"references to SPEC: {hits}"
