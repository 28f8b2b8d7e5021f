"""Plausible bugs in the pruning decisions, each of which the test suite must catch.

``scripts/mutation_check.py`` applies every mutant below to a temporary copy of the repository and
runs the listed tests against it: a mutant that survives (the tests still pass) is a decision the
suite does not pin. The list lives next to the code it mutates: a refactor that changes one of the
``old`` snippets makes the script fail loudly ("not found") until the list is updated.

Each mutant: ``file`` (relative to this folder), ``old`` (must occur exactly once), ``new``,
``tests`` (pytest arguments that must fail with the mutant) and ``why`` (the decision it breaks).
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "no-merges-below-threshold",
        "budget.py",
        "    raw_lo = [c.merges_at(float(cand[lo])) if lo >= 0 else 0 for c in curves]",
        "    raw_lo = [0 for c in curves]",
        ("tests/test_prune_budget.py",),
        "every merge strictly below the global threshold is applied",
    ),
    Mutant(
        "ties-in-group-order",
        "budget.py",
        "    pending = sorted(\n        ((m + 1) / c.n_units, g)",
        "    pending = list(\n        ((m + 1) / c.n_units, g)",
        ("tests/test_prune_budget.py",),
        "merges tied at the threshold are split across groups in proportion to their size",
    ),
    Mutant(
        "no-scale-free-heights",
        "budget.py",
        "    h = np.maximum.accumulate(z[:, 2]) / scale if n > 1 else np.zeros(0)",
        "    h = np.maximum.accumulate(z[:, 2]) if n > 1 else np.zeros(0)",
        ("tests/test_prune_budget.py",),
        "heights are divided by the group's RMS descriptor norm before the global cut",
    ),
    Mutant(
        "first-kept-representative",
        "merge.py",
        "            r = cands[int(torch.argmin(d))]",
        "            r = cands[0]",
        ("tests/test_prune_merge.py",),
        "a removed unit merges into the nearest kept unit of its cluster",
    ),
    Mutant(
        "lowest-energy-representative",
        "merge.py",
        "        energy = (v * v).sum(1)\n",
        "        energy = -(v * v).sum(1)\n",
        ("tests/test_prune_merge.py",),
        "each cluster keeps its highest-energy units",
    ),
    Mutant(
        "parameters-only-finite-check",
        "descriptors.py",
        "    for name, t in list(model.named_parameters()) + list(model.named_buffers()):",
        "    for name, t in list(model.named_parameters()):",
        ("tests/test_prune_refusals.py",),
        "NaN/Inf BatchNorm buffers are refused like parameters",
    ),
    Mutant(
        "nan-calibration-accepted",
        "calibrate.py",
        "            if x.is_floating_point() and not bool(torch.isfinite(x).all()):",
        "            if False:",
        ("tests/test_prune_refusals.py",),
        "NaN/Inf calibration data is refused before it reaches the statistics",
    ),
    Mutant(
        "plan-not-checked",
        "plan.py",
        "    for gp in group_plans:\n        gp.check()\n",
        "",
        ("tests/test_prune_refusals.py",),
        "a hand-built plan is checked before any rewrite",
    ),
    Mutant(
        "members-not-compared",
        "plan.py",
        "        _check_group(gp, grp)",
        "        pass",
        ("tests/test_prune_refusals.py",),
        "a replayed plan's members (names and kinds) must match the model's",
    ),
)
