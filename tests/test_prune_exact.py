"""Exactness of the whole chain (metric.md section 4): models whose channels are built as exact
duplicates, pruned with merge on, compute the same function; the duplicates are exactly the channels
removed. merge=False on the same models is *not* exact (so the tests can fail)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import simprune
from simprune.pruning import prune


def _randomise_bn(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=g) * 0.3)
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@torch.no_grad()
def _dup(layer: nn.Module, bn: nn.Module | None, pairs: list[tuple[int, int]]) -> None:
    """Make output channel j of ``layer`` (and its BN) an exact copy of channel r."""
    for j, r in pairs:
        layer.weight[j] = layer.weight[r]
        if getattr(layer, "bias", None) is not None:
            layer.bias[j] = layer.bias[r]
        if bn is not None:
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[j] = t[r]


class Chain(nn.Module):
    """conv-BN-ReLU x2, then flatten -> Linear (a flatten-reached consumer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 10, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class ResBlockNet(nn.Module):
    """A stem and a ResNet basic block with an identity residual add, then pool + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(6)
        self.conv_b = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        x = torch.relu(x + y)
        return self.fc(x.mean((2, 3)))


class DepthwiseNet(nn.Module):
    """An inverted-residual style block: 1x1 expand, 3x3 depthwise, 1x1 project."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.expand = nn.Conv2d(4, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 6, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = nn.functional.relu6(self.bn1(self.expand(x)))
        x = nn.functional.relu6(self.bn2(self.dw(x)))
        x = self.bn3(self.project(x))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 20)
        self.fc3 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _build(kind: str):
    """(model in float64, input, {group root: expected removed channels})."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "chain":
        m = Chain()
        _randomise_bn(m.bn1, g)
        _randomise_bn(m.bn2, g)
        _dup(m.conv1, m.bn1, [(8, 0), (9, 1), (10, 2), (11, 3)])
        _dup(m.conv2, m.bn2, [(7, 2), (9, 4)])
        x = torch.randn(2, 3, 8, 8)
        expected = {"conv1": [8, 9, 10, 11], "conv2": [7, 9]}
    elif kind == "resblock":
        m = ResBlockNet()
        for bn in (m.bn0, m.bn_a, m.bn_b):
            _randomise_bn(bn, g)
        # The residual stream is one coupled group: stem and conv_b duplicate the same channel.
        _dup(m.stem, m.bn0, [(7, 1), (5, 2)])
        _dup(m.conv_b, m.bn_b, [(7, 1), (5, 2)])
        _dup(m.conv_a, m.bn_a, [(5, 0)])
        x = torch.randn(2, 3, 6, 6)
        expected = {"stem": [5, 7], "conv_a": [5]}
    elif kind == "depthwise":
        m = DepthwiseNet()
        for bn in (m.bn0, m.bn1, m.bn2, m.bn3):
            _randomise_bn(bn, g)
        _dup(m.expand, m.bn1, [(6, 1), (7, 3)])
        _dup(m.dw, m.bn2, [(6, 1), (7, 3)])
        x = torch.randn(2, 3, 6, 6)
        expected = {"expand": [6, 7]}
    else:
        m = MLP()
        _dup(m.fc1, None, [(20, 5), (21, 6), (22, 7)])
        _dup(m.fc2, None, [(15, 1), (19, 2)])
        x = torch.randn(4, 16)
        expected = {"fc1": [20, 21, 22], "fc2": [15, 19]}
    return m.double().eval(), x.double(), expected


def _n_prunable(model, x):
    # The number of prunable channels, to turn "remove exactly the duplicates" into a ratio.
    from simprune.pruning.groups import build_dependency_graph, collect_groups

    dg = build_dependency_graph(model, x)
    groups, _ = collect_groups(dg, model)
    return sum(g.n_channels for g in groups)


KINDS = ["chain", "resblock", "depthwise", "mlp"]


def _removed_by_layer(plan, expected):
    """{layer: removed channels of the group where ``layer`` produces} for the expected layers, and
    check that no other group lost a channel."""
    out = {}
    for gp in plan.groups:
        producers = {name for name, kind in gp.members if kind in ("producer", "depthwise")}
        hit = producers & set(expected)
        if gp.removed:
            assert hit, f"group {gp.root} lost channels {gp.removed} but holds no duplicate"
        for name in hit:
            out[name] = gp.removed
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_duplicates_removed_and_output_unchanged(kind):
    model, x, expected = _build(kind)
    n_dup = sum(len(v) for v in expected.values())
    ratio = n_dup / _n_prunable(model, x)
    with torch.no_grad():
        y0 = model(x)
    pruned, plan, report = prune(model, x, pruning_ratio=ratio, min_keep_ratio=0.0, progress=False)
    assert _removed_by_layer(plan, expected) == expected
    with torch.no_grad():
        y1 = pruned(x)
    assert y1.dtype == torch.float64
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
    # The duplicates really were removed from the layers.
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())
    assert report.params_after == n_params


@pytest.mark.parametrize("kind", KINDS)
def test_without_merge_the_output_changes(kind):
    model, x, expected = _build(kind)
    n_dup = sum(len(v) for v in expected.values())
    ratio = n_dup / _n_prunable(model, x)
    with torch.no_grad():
        y0 = model(x)
    pruned, plan, _ = prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, merge=False, progress=False
    )
    assert _removed_by_layer(plan, expected) == expected
    with torch.no_grad():
        y1 = pruned(x)
    assert (y1 - y0).abs().max() > 1e-3


def test_positive_multiple_linear_merges_exactly():
    # metric.md section 4: LS is exact for a Linear without BN whose row and bias are a positive
    # multiple of another's (ReLU(a z) = a ReLU(z)); "sum" is not.
    model, x, _ = _build("mlp")
    with torch.no_grad():
        model.fc1.weight[23] = 0.4 * model.fc1.weight[4]
        model.fc1.bias[23] = 0.4 * model.fc1.bias[4]
        y0 = model(x)
    # Only fc1's duplicates and the scaled copy are zero-distance-free; target 4 of fc1's channels
    # by ignoring fc2 and keeping the cut at those four near-zero heights.
    outs = {}
    for mode in ("ls", "sum"):
        pruned, plan, _ = prune(
            model, x, pruning_ratio=4 / 24, min_keep_ratio=0.0, merge=mode, metric="cosine",
            ignored_layers=[model.fc2], progress=False,
        )  # fmt: skip
        assert plan.groups[0].removed == [20, 21, 22, 23]
        with torch.no_grad():
            outs[mode] = pruned(x)
    torch.testing.assert_close(outs["ls"], y0, rtol=0, atol=1e-6)
    assert (outs["sum"] - y0).abs().max() > 1e-3


def test_exports():
    assert simprune.prune is prune
    assert simprune.PruningPlan is not None and simprune.apply_plan is not None


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_duplicates_exact_on_cuda(kind):
    # The same chain with descriptors, distances and linkage on the GPU backends (auto).
    model, x, expected = _build(kind)
    model, x = model.cuda(), x.cuda()
    n_dup = sum(len(v) for v in expected.values())
    ratio = n_dup / _n_prunable(model, x)
    with torch.no_grad():
        y0 = model(x)
    pruned, plan, _ = prune(model, x, pruning_ratio=ratio, min_keep_ratio=0.0, progress=False)
    assert _removed_by_layer(plan, expected) == expected
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), y0, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_model_with_the_cpu_engine(kind):
    """backend="cpu" on a GPU model: the engine pass runs on the CPU kernels, the model stays on the
    GPU, the duplicates are still exactly the channels removed."""
    model, x, expected = _build(kind)
    model, x = model.cuda(), x.cuda()
    n_dup = sum(len(v) for v in expected.values())
    ratio = n_dup / _n_prunable(model, x)
    with torch.no_grad():
        y0 = model(x)
    pruned, plan, _ = prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, backend="cpu", progress=False
    )
    assert _removed_by_layer(plan, expected) == expected
    assert next(pruned.parameters()).is_cuda
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), y0, rtol=0, atol=1e-6)
