"""Every "method.md §N.M" and "baselines.md §N" reference in the repository resolves to a numbered heading of
docs/method.md / docs/baselines.md.

Pure text: no torch import, runs in milliseconds. Keeps docstrings and docs from pointing at sections that do not
exist (or that were renumbered).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "method.md"
BASELINES = ROOT / "docs" / "baselines.md"
SCANNED = ("wilson_ray", "benchmarks", "tests", "search_spaces", "docs", "scripts")
SCANNED_FILES = ("README.md", "BENCHMARKS.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml"}
NUM = r"\d+(?:\.\d+)*"
# "method.md §3.5", "method.md §3.1–§3.7", "method.md §2.2/§2.3", "method.md §3.5, §3.7 step 1"
# (the file name is split so that this test does not cite itself)
CITES = r"\.md\s+(§" + NUM + r"(?:\s*(?:[–/,-]|and)\s*§" + NUM + r")*)"
REF = re.compile("method" + CITES)
BASELINES_REF = re.compile("baselines" + CITES)
HEADING = re.compile(r"^#{2,4}\s+(" + NUM + r")\.?\s+\S", re.MULTILINE)


def _scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def cited_sections(ref: re.Pattern = REF) -> dict[str, list[str]]:
    """Section number -> ["path:line", ...] of every reference (matching ``ref``) to it."""
    cited: dict[str, list[str]] = {}
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in ref.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            for number in re.findall("§(" + NUM + ")", match.group(1)):
                cited.setdefault(number, []).append(f"{path.relative_to(ROOT)}:{line}")
    return cited


def doc_sections(doc: Path = DOC) -> set[str]:
    """Numbers of the headings of a doc ("## 3.2 Title" -> "3.2")."""
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def test_every_cited_section_is_a_heading():
    cited = cited_sections()
    headings = doc_sections()
    missing = {n: where for n, where in cited.items() if n not in headings}
    assert not missing, f"docs/method.md has no heading for: {missing}"


def test_references_are_found_and_the_code_cites_the_core_sections():
    # The scan itself must work: the code cites these sections today (a broken regex would find nothing and pass).
    cited = cited_sections()
    for number in ("1.1", "1.3", "2.5", "3.2", "3.5", "3.9", "3.10", "4", "5"):
        assert number in cited, f"expected a 'method.md §{number}' reference in the code, found none"


def test_headings_are_unique_and_in_order():
    text = DOC.read_text(encoding="utf-8")
    numbers = HEADING.findall(text)
    assert len(numbers) == len(set(numbers)), f"duplicate section numbers in docs/method.md: {numbers}"
    keys = [tuple(int(p) for p in n.split(".")) for n in numbers]
    assert keys == sorted(keys), f"docs/method.md sections are out of order: {numbers}"


def test_every_cited_baselines_section_is_a_heading():
    cited = cited_sections(BASELINES_REF)
    headings = doc_sections(BASELINES)
    missing = {n: where for n, where in cited.items() if n not in headings}
    assert not missing, f"docs/baselines.md has no heading for: {missing}"
    # the package's method files cite it (a broken pattern would find nothing and pass)
    for number in ("0", "1", "2", "3", "4", "5", "6", "8"):
        assert any(w.startswith("wilson_ray/") for w in cited.get(number, [])), (
            f"no 'baselines.md §{number}' in the code"
        )
