"""Every dotted ``simprune.`` name in the README, docs/, the package's .md files and docstrings
resolves.

A name such as ``simprune.hierarchy.linkage_rounds`` resolves when its longest importable module
prefix (``simprune.hierarchy``) imports and the rest (``linkage_rounds``) is found by getattr.
Renamed modules and functions leave stale names in prose that no other test reads; this one does.
"""

from __future__ import annotations

import ast
import glob
import importlib
import importlib.util
import os
import pkgutil
import re
from collections import defaultdict

import pytest

import simprune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A dotted name, not part of a path or of a longer word: ``csrc/include/simprune/x.h``,
# ``python -m simprune``, ``'simprune[plot]'`` and ``simprune::op`` are not Python paths.
NAME = re.compile(r"(?<![\w./\\-])simprune(?:\.[A-Za-z_]\w*)+")
# File names that start like a dotted name (``simprune.log``) are not Python paths either.
FILE_SUFFIXES = {"json", "md", "txt", "log", "png", "pt", "py", "h", "cu", "cpp", "so", "egg"}


def _names_in(text: str, where: str, first_line: int, found: dict[str, list[str]]) -> None:
    for m in NAME.finditer(text):
        name = m.group(0)
        if name.rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue
        line = first_line + text.count("\n", 0, m.start())
        found[name].append(f"{where}:{line}")


def _docstrings(path: str) -> list[tuple[int, str]]:
    """(line of the docstring's first line, raw docstring) for the module and every def/class."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.append((body[0].lineno, body[0].value.value))
    return out


def _module_files() -> list[tuple[str, str]]:
    """(module name, source file) of every Python module of simprune, simprune.kernels included.

    Found on disk (pkgutil over the packages' directories), without importing the modules: the
    collection of this file must not import Triton or Torch-Pruning for the rest of the test run.
    """
    # simprune.kernels (installed from kernels/ by package_dir) is not under simprune.__path__;
    # find_spec locates it without running it.
    kernels = importlib.util.find_spec("simprune.kernels")
    roots = [("simprune", list(simprune.__path__))]
    if kernels is not None and kernels.submodule_search_locations:
        roots.append(("simprune.kernels", list(kernels.submodule_search_locations)))
    mods: dict[str, str] = {}

    def walk(name: str, paths: list[str]) -> None:
        for d in paths:
            if os.path.isfile(os.path.join(d, "__init__.py")):
                mods[name] = os.path.join(d, "__init__.py")
        for info in pkgutil.iter_modules(paths, name + "."):
            # A FileFinder: .path is the directory it searched.
            base = os.path.join(info.module_finder.path, info.name.rsplit(".", 1)[1])
            if info.ispkg:
                walk(info.name, [base])
            elif os.path.isfile(base + ".py"):
                mods[info.name] = base + ".py"

    for name, paths in roots:
        walk(name, paths)
    return sorted(mods.items())


def _rel(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def collect() -> dict[str, list[str]]:
    """Every dotted ``simprune.`` name -> the places (``file:line``) where it is written."""
    found: dict[str, list[str]] = defaultdict(list)
    docs = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    docs += glob.glob(os.path.join(ROOT, "simprune", "**", "*.md"), recursive=True)
    for path in [os.path.join(ROOT, "README.md"), *sorted(docs)]:
        with open(path, encoding="utf-8") as f:
            _names_in(f.read(), _rel(path), 1, found)
    for _, path in _module_files():
        for line, doc in _docstrings(path):
            _names_in(doc, _rel(path), line, found)
    return found


def resolve(name: str) -> object:
    """Import the longest importable module prefix of ``name``, then getattr the rest.

    Raises ImportError or AttributeError when ``name`` does not exist.
    """
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        try:
            obj: object = importlib.import_module(prefix)
        except ModuleNotFoundError as e:
            # Only "this prefix is not a module" moves on to a shorter one; a module that exists
            # but fails to import is an error of its own.
            if e.name is not None and prefix.startswith(e.name):
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no importable prefix in {name}")


FOUND = collect()


def test_names_are_found():
    # The collector itself works: the README names the top-level API and a submodule path.
    assert "simprune.prune" in FOUND and "simprune.hierarchy.linkage_rounds" in FOUND
    assert not any(n.startswith("simprune.csrc") for n in FOUND)


@pytest.mark.parametrize(
    "name",
    [
        "simprune.linkage._linkage_rounds",  # a function, not a module, since the renames
        "simprune.prune.TracingError",  # simprune.prune is the function; the package is pruning
        "simprune.cut.cut_threshold",
        "simprune.experiments",
    ],
)
def test_stale_names_do_not_resolve(name):
    with pytest.raises((ImportError, AttributeError)):
        resolve(name)


@pytest.mark.parametrize("name", sorted(FOUND))
def test_name_resolves(name):
    try:
        resolve(name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{name} does not resolve ({e}); written at {', '.join(FOUND[name])}")
