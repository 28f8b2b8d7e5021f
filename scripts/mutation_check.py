"""Mutation check of the pruning decisions: every mutant of simprune/pruning/mutants.py must be killed.

    python scripts/mutation_check.py            # all mutants (about a minute per few mutants)
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --only first-kept-representative

For each mutant: copy the repository's simprune/ and tests/ (plus pyproject.toml, for pytest's
settings) into a temporary folder, apply the mutant there, run its tests with this Python
(``-x -q -p no:cacheprovider``) from that folder, and report whether they failed (killed) or passed
(survived). The working tree is never modified. Exit status 1 if any mutant survives or does not
apply; the last line is pytest-style ("N passed, M failed") so CI logs read it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simprune.pruning.mutants import MUTANTS, Mutant  # noqa: E402

IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")


def _copy_tree(dst: Path) -> None:
    shutil.copytree(ROOT / "simprune", dst / "simprune", ignore=IGNORE)
    shutil.copytree(ROOT / "tests", dst / "tests", ignore=IGNORE)
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")


def apply(m: Mutant, root: Path) -> None:
    path = root / "simprune" / "pruning" / m.file
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise LookupError(
            f"mutant {m.name}: its 'old' snippet occurs {count} times in simprune/pruning/{m.file} "
            "(expected once): update simprune/pruning/mutants.py to the current code"
        )
    path.write_text(text.replace(m.old, m.new))


def run_one(m: Mutant) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'error', seconds, detail)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"simprune-mutant-{m.name}-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        try:
            apply(m, root)
        except LookupError as e:
            return "error", time.perf_counter() - t0, str(e)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        # Make sure the mutant, not the repository's copy, was imported.
        probe = subprocess.run(
            [sys.executable, "-c", "import simprune, sys; print(simprune.__file__)"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        if not probe.stdout.strip().startswith(str(root)):
            return "error", time.perf_counter() - t0, f"imported {probe.stdout.strip()!r}"
    last = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode == 0:
        return "survived", time.perf_counter() - t0, last
    if out.returncode == 1:
        return "killed", time.perf_counter() - t0, last
    return "error", time.perf_counter() - t0, f"pytest exit {out.returncode}: {last}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(mutants) != len(set(args.only)):
        known = ", ".join(m.name for m in MUTANTS)
        print(f"unknown mutant in {args.only}; known: {known}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.file:16s} {m.why}")
        return 0
    killed = bad = 0
    for m in mutants:
        status, secs, detail = run_one(m)
        print(f"{status:8s} {m.name:32s} {secs:6.1f} s  {detail}", flush=True)
        if status == "killed":
            killed += 1
        else:
            bad += 1
    print(f"mutation check: {killed} passed, {bad} failed")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
