"""The rewrite verification (simprune.pruning.verify) on hand-built rewrites: a removed channel
rebuilt from several kept ones (the data merge's dense coefficients) plus a bias shift, checked against
the real forward -- accepted when the rewrite is right, corrected or rejected when it is not."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simprune.pruning.api import _trace
from simprune.pruning.plan import GroupPlan
from simprune.pruning.verify import probe_positions, verify_rewrite

REMOVED = [1, 4]
KEPT = [0, 2, 3, 5]


class Net(nn.Module):
    """conv0 (6 channels) -> ReLU -> {conv1 (3x3, padded) ; channels-last flatten -> fc}."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv0(x))
        a = self.conv1(h)
        b = self.fc(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1))
        return a, b


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    _, groups, _, _ = _trace(model, model, x, [])
    (g,) = [g for g in groups if g.root_name == "conv0"]
    return model, x, g


def _plan(g, B: torch.Tensor, shift: torch.Tensor) -> GroupPlan:
    gp = GroupPlan(
        root="conv0", n_channels=6, ch_groups=1,
        members=[[m.name, m.kind] for m in g.members], kept=KEPT,
        merges=[[j, r, float(B[a, b])] for a, j in enumerate(REMOVED) for b, r in enumerate(KEPT)],
    )  # fmt: skip
    gp.shifts = [[j, float(shift[a])] for a, j in enumerate(REMOVED)]  # type: ignore[attr-defined]
    return gp


def _rewrite(model: Net, B: torch.Tensor, shift: torch.Tensor) -> Net:
    """The data-merge rewrite by hand: W_K += W_R B^T, bias += (W_R summed over the kernel) shift."""
    p = copy.deepcopy(model)
    k, r = torch.tensor(KEPT), torch.tensor(REMOVED)
    with torch.no_grad():
        p.conv0 = nn.Conv2d(3, 4, 3, padding=1).double()
        p.conv0.weight.copy_(model.conv0.weight[k])
        p.conv0.bias.copy_(model.conv0.bias[k])
        w = model.conv1.weight  # (4, 6, 3, 3)
        wk = w[:, k] + torch.einsum("orhw,rk->okhw", w[:, r], B)
        p.conv1 = nn.Conv2d(4, 4, 3, padding=1).double()
        p.conv1.weight.copy_(wk)
        p.conv1.bias.copy_(model.conv1.bias + w[:, r].sum((2, 3)) @ shift)
        # fc reads position (y, x, c) = (y * 4 + x) * 6 + c
        wf = model.fc.weight.reshape(5, 16, 6)
        wfk = wf[:, :, k] + torch.einsum("osr,rk->osk", wf[:, :, r], B)
        p.fc = nn.Linear(16 * 4, 5).double()
        p.fc.weight.copy_(wfk.reshape(5, -1))
        p.fc.bias.copy_(model.fc.bias + wf[:, :, r].sum(1) @ shift)
    return p


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
