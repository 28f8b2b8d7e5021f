"""Duplicate-channel exactness of ``simprune.prune`` beyond plain conv chains (style.md item 10).

Each model below is built in float64 with some output channels that are exact copies of others
(producer weights, bias and norm parameters copied; ``tests._helpers.duplicate_channels``). Pruned at
the ratio that removes exactly as many channels as there are copies, with merge on, the removed
channels must be exactly the copies and the pruned model must compute the original function (to
1e-6; float64 gives ~1e-16). Without merge the same removals change the output: the merge is what
makes it exact, so the tests can fail.

Layer types: a concatenation (both orders of the inputs), a squeeze-excitation block (channels
coupled through a multiply), ConvTranspose2d as producer and consumer, a depthwise ConvTranspose2d,
Conv1d, Conv3d, a LayerNorm-coupled group, a GroupNorm-coupled group, and grouped-conv consumers.

LayerNorm and GroupNorm normalise *across* channels, so removing a channel changes their statistics
unless the removed channels leave the statistics unchanged: their models duplicate *every* channel
of a normalisation group once (the mean and variance over {x, x} are those over {x}), so removing all
copies is exact. A GroupNorm group must lose the same positions in every one of its groups; otherwise
the pruned GroupNorm regroups the channels (or cannot run at all). A grouped (non-depthwise)
ConvTranspose cannot be rewritten by Torch-Pruning (it slices the (in, out/groups, ...) weight as if
it were a Conv's): its groups are skipped with a reason.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from simprune.pruning import PruningPlan, apply_plan, prune
from tests._helpers import (
    duplicate_channels,
    n_prunable,
    randomise_bn,
    removed_by_layer,
    state_dicts_equal,
)


def _norms(g: torch.Generator, *norms: nn.Module) -> None:
    """Trained-looking affine terms (and running statistics for BatchNorm)."""
    for n in norms:
        if isinstance(n, nn.modules.batchnorm._BatchNorm):
            randomise_bn(n, g)
        else:
            with torch.no_grad():
                n.weight.copy_(torch.rand(n.weight.shape, generator=g) + 0.5)
                n.bias.copy_(torch.randn(n.bias.shape, generator=g) * 0.3)


class Concat(nn.Module):
    """Two conv-BN-ReLU branches concatenated (in ``order``), then conv-BN-ReLU, pool, Linear."""

    def __init__(self, order: str) -> None:
        super().__init__()
        self.order = order
        self.a, self.ba = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b, self.bb = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
        self.c, self.bc = nn.Conv2d(11, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya = torch.relu(self.ba(self.a(x)))
        yb = torch.relu(self.bb(self.b(x)))
        y = torch.cat([ya, yb] if self.order == "ab" else [yb, ya], 1)
        return self.fc(torch.relu(self.bc(self.c(y))).mean((2, 3)))


class SqueezeExcitation(nn.Module):
    """conv-BN-ReLU, then x * sigmoid(fc2(relu(fc1(pool(x))))): c1 and fc2 produce one group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.fc(torch.relu(self.b2(self.c2(x * s))).mean((2, 3)))


class Transposed(nn.Module):
    """conv-BN-ReLU -> ConvTranspose2d (consumer of c0, producer of its own group) -> BN -> conv."""

    def __init__(self, groups: int = 1, width: int = 8) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.ct = nn.ConvTranspose2d(8, width, 2, stride=2, groups=groups)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b0(self.c0(x)))
        x = torch.relu(self.b1(self.ct(x)))
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


class ConvNd(nn.Module):
    """conv-BN-ReLU x2 in 1 or 3 spatial dimensions, pool, Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 3: nn.Conv3d}[dim]
        bn = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[dim]
        self.dims = tuple(range(2, 2 + dim))
        self.c1, self.b1 = conv(3, 8, 3, padding=1, bias=False), bn(8)
        self.c2, self.b2 = conv(8, 6, 3, padding=1), bn(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        return self.fc(torch.relu(self.b2(self.c2(x))).mean(self.dims))


class LayerNormMLP(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear -> ReLU -> Linear: fc1's group holds the LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln = nn.Linear(10, 12), nn.LayerNorm(12)
        self.fc2, self.fc3 = nn.Linear(12, 7), nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.ln(self.fc1(x))))))


class GroupNormNet(nn.Module):
    """conv -> GroupNorm(2, 8) -> ReLU -> conv -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 5, 3)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.gn(self.c1(x)))).mean((2, 3)))


class GroupedConsumer(nn.Module):
    """conv-BN-ReLU -> grouped conv (2 groups) -> BN -> ReLU -> 1x1 conv -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1, groups=2, bias=False)
        self.b2 = nn.BatchNorm2d(6)
        self.c3 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(torch.relu(self.c3(x)).mean((2, 3)))


def layer_model(kind: str) -> tuple[nn.Module, torch.Tensor, dict[str, list[int]]]:
    """(float64 model in eval mode, input, {producer: the channels that copy others})."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    img = (2, 3, 6, 6)
    if kind in ("concat_ab", "concat_ba"):
        m = Concat(kind[-2:])
        _norms(g, m.ba, m.bb, m.bc)
        # Copies in both branches: whichever branch is rewritten first shifts the other's columns
        # in the consumer ``c`` when it precedes it in the concatenation.
        duplicate_channels(m.a, m.ba, [(5, 1), (3, 0)])
        duplicate_channels(m.b, m.bb, [(4, 0)])
        expected = {"a": [3, 5], "b": [4]}
    elif kind == "squeeze_excitation":
        m = SqueezeExcitation()
        _norms(g, m.b1, m.b2)
        # One group: c1's channels times fc2's gates. A copy must copy both.
        duplicate_channels(m.c1, m.b1, [(6, 1), (7, 2)])
        duplicate_channels(m.fc2, None, [(6, 1), (7, 2)])
        expected = {"c1": [6, 7]}
    elif kind == "conv_transpose":
        m = Transposed()
        _norms(g, m.b0, m.b1)
        duplicate_channels(m.c0, m.b0, [(5, 2)])  # ct consumes these
        duplicate_channels(m.ct, m.b1, [(7, 3), (6, 0)])  # ct produces these
        expected = {"c0": [5], "ct": [6, 7]}
        img = (2, 3, 5, 5)
    elif kind == "conv_transpose_depthwise":
        m = Transposed(groups=8)
        _norms(g, m.b0, m.b1)
        with torch.no_grad():  # default init of a 1-input 2x2 kernel leaves most channels dead
            m.ct.weight.copy_(torch.randn(m.ct.weight.shape, generator=g))
        # c0, the depthwise ct and their BNs are one group: a copy copies the whole chain.
        duplicate_channels(m.c0, m.b0, [(3, 1), (7, 5)])
        duplicate_channels(m.ct, m.b1, [(3, 1), (7, 5)])
        expected = {"c0": [3, 7]}
        img = (2, 3, 5, 5)
    elif kind in ("conv1d", "conv3d"):
        dim = int(kind[4])
        m = ConvNd(dim)
        _norms(g, m.b1, m.b2)
        duplicate_channels(m.c1, m.b1, [(6, 1), (7, 2)])
        duplicate_channels(m.c2, m.b2, [(5, 0)])
        expected = {"c1": [6, 7], "c2": [5]}
        img = (2, 3, 10) if dim == 1 else (2, 3, 4, 4, 4)
    elif kind == "layernorm":
        m = LayerNormMLP()
        _norms(g, m.ln)
        # Every feature copied once: the LayerNorm statistics over 12 equal those over the 6 kept.
        duplicate_channels(m.fc1, m.ln, [(6 + k, k) for k in range(6)])
        expected = {"fc1": list(range(6, 12))}
        img = (4, 10)
    elif kind == "groupnorm":
        m = GroupNormNet()
        _norms(g, m.gn)
        # GroupNorm(2, 8): groups {0..3}, {4..7}; 2, 3 copy 0, 1 and 6, 7 copy 4, 5. Each group
        # keeps its statistics and loses the same positions (2 and 3).
        duplicate_channels(m.c1, m.gn, [(2, 0), (3, 1), (6, 4), (7, 5)])
        expected = {"c1": [2, 3, 6, 7]}
    elif kind == "grouped_consumer":
        m = GroupedConsumer()
        _norms(g, m.b1, m.b2)
        # c2 has 2 conv groups of 4 inputs: a pruning unit is one position in both groups, so the
        # copy is of the unit (position 3 copies position 1 in both groups).
        duplicate_channels(m.c1, m.b1, [(3, 1), (7, 5)])
        expected = {"c1": [3, 7]}
    else:
        raise ValueError(kind)
    return m.double().eval(), torch.randn(img, dtype=torch.float64), expected


KINDS = [
    "concat_ab",
    "concat_ba",
    "squeeze_excitation",
    "conv_transpose",
    "conv_transpose_depthwise",
    "conv1d",
    "conv3d",
    "layernorm",
    "groupnorm",
    "grouped_consumer",
]


# Groups whose channels are normalised together: the merge-off runs of these use verify=False, see
# test_exact_norm_group_without_merge_passes_verification.
NORM_KINDS = ("layernorm", "groupnorm")


def _prune_duplicates(kind: str, merge: bool):
    model, x, expected = layer_model(kind)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    with torch.no_grad():
        y0 = model(x)
    pm, plan, report = prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, merge=merge,
        verify=bool(merge) or kind not in NORM_KINDS, progress=False,
    )  # fmt: skip
    with torch.no_grad():
        y1 = pm(x)
    return model, x, expected, plan, report, pm, y0, y1


@pytest.mark.parametrize("kind", KINDS)
def test_duplicates_removed_and_output_unchanged(kind):
    model, x, expected, plan, report, pm, y0, y1 = _prune_duplicates(kind, merge=True)
    assert removed_by_layer(plan, expected) == expected
    # Every merge maps a copy onto its original with coefficient 1 (an exact duplicate).
    assert all(a == pytest.approx(1.0, abs=1e-12) for gp in plan.groups for _, _, a in gp.merges)
    assert y1.dtype == torch.float64
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
    n_params = sum(p.numel() for p in pm.parameters())
    assert n_params == report.params_after < sum(p.numel() for p in model.parameters())
    # The plan replays to the same model, also without apply_plan's verification (which would
    # correct a wrong rewrite): the bare rewrite is exact.
    assert state_dicts_equal(apply_plan(model, plan, x), pm)
    assert state_dicts_equal(apply_plan(model, plan, x, verify=False), pm)


@pytest.mark.parametrize("kind", ["concat_ab", "concat_ba"])
def test_replay_does_not_depend_on_the_order_of_the_groups(kind):
    # All merges read the original consumer columns before any group is pruned: pruning the first
    # input of a concatenation shifts the second's columns in the consumer, so merging group by
    # group would fold the wrong columns when the first input's group comes first.
    model, x, _, plan, _, pm, y0, _ = _prune_duplicates(kind, merge=True)
    for reverse in (False, True):
        d = plan.to_dict()
        if reverse:
            d["groups"].reverse()
        replay = apply_plan(model, PruningPlan.from_dict(d), x, verify=False)
        assert state_dicts_equal(replay, pm)
        with torch.no_grad():
            torch.testing.assert_close(replay(x), y0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_without_merge_the_output_changes(kind):
    _, _, expected, plan, _, _, y0, y1 = _prune_duplicates(kind, merge=False)
    assert removed_by_layer(plan, expected) == expected
    assert (y1 - y0).abs().max() > 1e-3


def test_groupnorm_loses_the_same_positions_in_every_group():
    # Copies only in GroupNorm group 0 (2, 3 copy 0, 1): removing them alone would leave
    # GroupNorm(2, 6) with the groups {0, 1, 4} and {5, 6, 7} (a different function) and removing
    # one channel a GroupNorm(2, 7) that cannot run. A pruning unit is one position in both groups
    # (c2 is ignored: c1's group is the only one pruned; verify=False as in _prune_duplicates).
    torch.manual_seed(0)
    model = GroupNormNet().double().eval()
    _norms(torch.Generator().manual_seed(1), model.gn)
    duplicate_channels(model.c1, model.gn, [(2, 0), (3, 1)])
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for asked, removed in ((1, 2), (2, 2), (4, 4)):
        # One channel is not a step of this group: the closest cut removes two, with a warning.
        warns = asked != removed
        with pytest.warns(UserWarning, match="met only to 0.2500") if warns else nullcontext():
            pm, plan, _ = prune(
                model, x, pruning_ratio=asked / 8, min_keep_ratio=0.0, ignored_layers=[model.c2],
                verify=False, progress=False,
            )  # fmt: skip
        (gp,) = plan.groups
        assert gp.ch_groups == 2 and len(gp.removed) == removed
        lo = [c for c in gp.kept if c < 4]
        hi = [c - 4 for c in gp.kept if c >= 4]
        assert lo == hi
        assert pm.gn.num_channels == len(gp.kept) and pm.gn.num_groups == 2
        # The pruned GroupNorm normalises the kept channels of each original group together.
        with torch.no_grad():
            h = model.c1(x)[:, gp.kept]
            ref = nn.functional.group_norm(h, 2, model.gn.weight[gp.kept], model.gn.bias[gp.kept])
            torch.testing.assert_close(pm.gn(pm.c1(x)), ref, rtol=0, atol=1e-12)
            assert pm(x).shape == (2, 3)


def test_grouped_conv_transpose_is_skipped_with_a_reason():
    # Torch-Pruning slices a grouped ConvTranspose's (in, out/groups, ...) weight like a Conv's;
    # both groups it belongs to (c0's, as a consumer, and its own) are left alone, named.
    torch.manual_seed(0)
    model = Transposed(groups=2, width=6).double().eval()
    _norms(torch.Generator().manual_seed(1), model.b0, model.b1)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    pm, plan, report = prune(model, x, pruning_ratio=0.2, min_keep_ratio=0.0, progress=False)
    reasons = dict(report.skipped)
    assert "grouped ConvTranspose 'ct'" in reasons["c0"]
    assert "grouped ConvTranspose 'ct'" in reasons["ct"]
    assert [gp.root for gp in plan.groups] == ["c2"] and plan.n_removed == 1
    assert torch.equal(pm.ct.weight, model.ct.weight) and pm.c0.out_channels == 8
    assert pm(x).shape == (2, 3)


def _consumer_inputs_zeroed(model: nn.Module, x: torch.Tensor, consumer: str, removed: list[int]):
    """``model(x)`` with the inputs ``removed`` of layer ``consumer`` set to 0."""

    def pre(mod: nn.Module, args: tuple) -> tuple:
        t = args[0].clone()
        t.index_fill_(-1 if isinstance(mod, nn.Linear) else 1, torch.tensor(removed), 0.0)
        return (t,)

    h = model.get_submodule(consumer).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        h.remove()


@pytest.mark.parametrize("kind", NORM_KINDS)
def test_exact_norm_group_without_merge_passes_verification(kind):
    # Every normalisation group's channels copied once: removing the copies keeps the statistics,
    # so without merge the pruned model is the original with the copies' consumer inputs dropped --
    # what verification accepts -- and the group must be pruned as with verify=False.
    model, x, expected = layer_model(kind)
    ((root, copies),) = expected.items()
    consumer = {"layernorm": "fc2", "groupnorm": "c2"}[kind]
    ratio = len(copies) / n_prunable(model, x)
    bare, plan0, _ = prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, merge=False, verify=False,
        progress=False,
    )  # fmt: skip
    assert removed_by_layer(plan0, expected) == expected
    want = _consumer_inputs_zeroed(model, x, consumer, copies)
    with torch.no_grad():
        torch.testing.assert_close(bare(x), want, rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an exclusion warns
        pm, plan, report = prune(
            model, x, pruning_ratio=ratio, min_keep_ratio=0.0, merge=False, progress=False
        )
    assert report.excluded == []
    assert removed_by_layer(plan, expected) == expected
