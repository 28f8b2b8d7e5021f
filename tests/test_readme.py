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
