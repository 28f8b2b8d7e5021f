"""The README's Python examples run as written (one test per block, named by its line)."""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks() -> list[tuple[int, str]]:
    """(line of the block's first code line, code) for every ```python block of the README."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, flags=re.DOTALL)
    ]


BLOCKS = _python_blocks()


def test_readme_has_python_examples():
    assert BLOCKS, "README has no python example"


@pytest.mark.parametrize("line,block", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(line, block):
    # Blank lines in front keep the traceback's line numbers those of README.md.
    exec(compile("\n" * (line - 1) + block, "README.md", "exec"), {"__name__": "readme"})


def _layout_block() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"## Layout\n.*?```\n(.*?)```", text, flags=re.DOTALL)
    assert m, "README has no Layout section with a code block"
    return m.group(1)


def test_readme_layout_matches_the_tree():
    """Every path the Layout map names exists, and every module of simprune/ is on the map."""
    block = _layout_block()
    # An entry is a line's first field (up to two spaces); indented entries are inside the folder
    # entry above them; "a.py, b.py" names two.
    named: set[str] = set()
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= 20:  # blank, or a description's continuation line
            continue
        field = re.split(r" {2,}", line.strip())[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        base = parents[-1][1] if parents else ""
        for part in (p.strip() for p in field.split(",")):
            if part:
                named.add(base + part)
        if field.endswith("/"):
            parents.append((indent, base + field))
    for path in sorted(named):
        assert os.path.exists(os.path.join(ROOT, path)), f"README Layout names {path!r}: not found"
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "simprune")):
        rel = os.path.relpath(dirpath, ROOT).replace(os.sep, "/")
        if "__pycache__" in rel or rel.startswith("simprune/data"):
            continue
        for f in files:
            if not f.endswith(".py") or f == "__init__.py":
                continue
            path = f"{rel}/{f}"
            # Named itself, or inside a named subfolder whose description names the file.
            ok = path in named or (f"{rel}/" in named and rel != "simprune" and f in block)
            assert ok, f"{path} is not on the README Layout map"
