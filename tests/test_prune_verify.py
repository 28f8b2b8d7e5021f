"""The rewrite verification (simprune.pruning.verify) on hand-built rewrites: a removed channel
rebuilt from several kept ones (the data merge's dense coefficients) plus a bias shift, checked against
the real forward -- accepted when the rewrite is right, corrected or rejected when it is not."""

from __future__ import annotations

import pytest
import torch

from simprune.pruning.plan import GroupPlan
from simprune.pruning.verify import probe_positions, verify_rewrite
from tests._helpers import MERGE_KEPT, MERGE_REMOVED, merge_net, merge_rewrite

REMOVED, KEPT = MERGE_REMOVED, MERGE_KEPT
_setup, _rewrite = merge_net, merge_rewrite


def _plan(g, B: torch.Tensor, shift: torch.Tensor) -> GroupPlan:
    gp = GroupPlan(
        root="conv0", n_channels=6, ch_groups=1,
        members=[[m.name, m.kind] for m in g.members], kept=KEPT,
        merges=[[j, r, float(B[a, b])] for a, j in enumerate(REMOVED) for b, r in enumerate(KEPT)],
    )  # fmt: skip
    gp.shifts = [[j, float(shift[a])] for a, j in enumerate(REMOVED)]  # type: ignore[attr-defined]
    return gp


def _verify(model, pruned, g, gp, x):
    probe = probe_positions(model, x, [g])
    return verify_rewrite(model, pruned, [g], [gp], probe, x)


def test_dense_merges_and_shifts_are_accepted():
    model, x, g = _setup()
    B = torch.randn(len(REMOVED), len(KEPT), dtype=torch.float64)
    shift = torch.randn(len(REMOVED), dtype=torch.float64)
    res = _verify(model, _rewrite(model, B, shift), g, _plan(g, B, shift), x)
    assert res.failed == {} and res.corrected == []


def test_a_wrong_coefficient_is_corrected_in_every_consumer():
    model, x, g = _setup()
    B = torch.randn(len(REMOVED), len(KEPT), dtype=torch.float64)
    shift = torch.randn(len(REMOVED), dtype=torch.float64)
    wrong = B.clone()
    wrong[1, 2] += 0.5
    pruned = _rewrite(model, wrong, shift)
    res = _verify(model, pruned, g, _plan(g, B, shift), x)
    assert res.failed == {}
    assert sorted(c for c, _ in res.corrected) == ["conv1", "fc"]
    right = _rewrite(model, B, shift)
    for name in ("conv1", "fc"):
        assert torch.allclose(
            pruned.get_submodule(name).weight, right.get_submodule(name).weight, atol=1e-12
        )


@pytest.mark.parametrize("missing", ["shift", "merge"])
def test_a_missing_bias_shift_or_merge_fails_the_forward_check(missing):
    model, x, g = _setup()
    B = torch.randn(len(REMOVED), len(KEPT), dtype=torch.float64)
    shift = torch.randn(len(REMOVED), dtype=torch.float64)
    gp = _plan(g, B, shift)
    if missing == "shift":
        pruned = _rewrite(model, B, torch.zeros_like(shift))  # the biases lack the shift
        res = _verify(model, pruned, g, gp, x)
        assert list(res.failed) == [0] and "computes something else" in res.failed[0]
    else:
        # The plan says "merge" but the rewrite did not: every consumer is rebuilt (corrected).
        pruned = _rewrite(model, torch.zeros_like(B), shift)
        res = _verify(model, pruned, g, gp, x)
        assert res.failed == {} and sorted(c for c, _ in res.corrected) == ["conv1", "fc"]
