"""Helpers shared by several test files (pytest / hypothesis only; what ships is simprune.testing).

* linkage: the condensed distances of the simprune.testing data sets and scipy's Z on them, cached
  per (data set, n); a hypothesis strategy of small condensed inputs with and without ties;
* pruning: small models whose channels are built as exact duplicates, a plain CNN, and comparisons
  of models (widths, state_dicts).
"""

from __future__ import annotations

import io

import numpy as np
import scipy.cluster.hierarchy as sch
import scipy.spatial.distance as ssd
import torch
from hypothesis import strategies as st
from torch import nn

from simprune.testing import DATASETS

# ---------------------------------------------------------------------------------------------------
# Linkage: condensed float64 distances (scipy pdist), cached with scipy's Z, per (data set, n).

_CACHE: dict = {}


def data(name: str, n: int) -> np.ndarray:
    """Condensed distances of ``DATASETS[name](n)`` (cached: do not modify the result)."""
    key = (name, n)
    if key not in _CACHE:
        _CACHE[key] = ssd.pdist(DATASETS[name](n))
    return _CACHE[key]


def scipy_z(name: str, n: int, method: str) -> np.ndarray:
    """scipy's linkage of :func:`data` (cached: do not modify the result)."""
    key = (name, n, method)
    if key not in _CACHE:
        _CACHE[key] = sch.linkage(data(name, n), method)
    return _CACHE[key]


@st.composite
def condensed(draw):
    """(d, euclidean): integer grid points (Euclidean, heavy ties) or arbitrary non-negative floats."""
    n = draw(st.integers(2, 24))
    if draw(st.booleans()):
        dim = draw(st.integers(1, 3))
        pts = draw(st.lists(st.integers(0, 3), min_size=n * dim, max_size=n * dim))
        return ssd.pdist(np.asarray(pts, dtype=np.float64).reshape(n, dim)), True
    m = n * (n - 1) // 2
    vals = draw(
        st.lists(
            st.floats(0, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False),
            min_size=m,
            max_size=m,
        )
    )
    return np.asarray(vals, dtype=np.float64), False


# ---------------------------------------------------------------------------------------------------
# Pruning: models with duplicated channels (pruned with merge on, they compute the same function).


def randomise_bn(bn: nn.BatchNorm2d, g: torch.Generator, running_stats: bool = True) -> None:
    """Trained-looking BatchNorm: random gamma, beta and (with ``running_stats``) running stats."""
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=g) * 0.3)
        if running_stats:
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def randomise_bns(model: nn.Module, seed: int) -> nn.Module:
    """Random gamma/beta in every BatchNorm2d (the gaussian metric then sees both terms); eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomise_bn(m, g, running_stats=False)
    return model.eval()


def _out_channel(layer: nn.Module, c: int) -> tuple:
    """Index of output channel ``c`` in ``layer.weight`` (ConvTranspose: (in, out/groups, ...))."""
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
        opg = layer.out_channels // layer.groups
        ipg = layer.in_channels // layer.groups
        g, k = divmod(c, opg)
        return (slice(g * ipg, (g + 1) * ipg), k)
    return (c,)


@torch.no_grad()
def duplicate_channels(
    layer: nn.Module, bn: nn.Module | None, pairs: list[tuple[int, int]]
) -> None:
    """Make output channel j of ``layer`` (and of its norm: BatchNorm, LayerNorm, GroupNorm) an exact
    copy of channel r, for (j, r)."""
    for j, r in pairs:
        layer.weight[_out_channel(layer, j)] = layer.weight[_out_channel(layer, r)]
        if getattr(layer, "bias", None) is not None:
            layer.bias[j] = layer.bias[r]
        if bn is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(bn, name, None)
                if t is not None:
                    t[j] = t[r]


def conv_bn(cin: int, cout: int, kernel_size: int, **kwargs) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A Conv2d and the BatchNorm2d of its output (created in that order: the same random weights
    as writing them out)."""
    return nn.Conv2d(cin, cout, kernel_size, **kwargs), nn.BatchNorm2d(cout)


class Chain(nn.Module):
    """conv-BN-ReLU x2, then flatten -> Linear (a flatten-reached consumer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 12, 3, padding=1)
        self.conv2, self.bn2 = conv_bn(12, 10, 3, padding=1, stride=2, bias=False)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class ResBlockNet(nn.Module):
    """A stem and a ResNet basic block with an identity residual add, then pool + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = conv_bn(3, 8, 3, padding=1, bias=False)
        self.conv_a, self.bn_a = conv_bn(8, 6, 3, padding=1, bias=False)
        self.conv_b, self.bn_b = conv_bn(6, 8, 3, padding=1, bias=False)
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
        self.stem, self.bn0 = conv_bn(3, 4, 3, padding=1, bias=False)
        self.expand, self.bn1 = conv_bn(4, 8, 1, bias=False)
        self.dw, self.bn2 = conv_bn(8, 8, 3, padding=1, groups=8, bias=False)
        self.project, self.bn3 = conv_bn(8, 6, 1, bias=False)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = nn.functional.relu6(self.bn1(self.expand(x)))
        x = nn.functional.relu6(self.bn2(self.dw(x)))
        x = self.bn3(self.project(x))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear with the given widths (``sizes``: input, two hidden, output)."""

    def __init__(self, sizes: tuple[int, int, int, int] = (16, 24, 20, 3)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


DUPLICATE_MODELS = ["chain", "resblock", "depthwise", "mlp"]


def duplicate_model(kind: str) -> tuple[nn.Module, torch.Tensor, dict[str, list[int]]]:
    """(model in float64, eval mode; input; {producing layer: the channels that duplicate others})
    for ``kind`` in :data:`DUPLICATE_MODELS`."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "chain":
        m = Chain()
        randomise_bn(m.bn1, g)
        randomise_bn(m.bn2, g)
        duplicate_channels(m.conv1, m.bn1, [(8, 0), (9, 1), (10, 2), (11, 3)])
        duplicate_channels(m.conv2, m.bn2, [(7, 2), (9, 4)])
        x = torch.randn(2, 3, 8, 8)
        expected = {"conv1": [8, 9, 10, 11], "conv2": [7, 9]}
    elif kind == "resblock":
        m = ResBlockNet()
        for bn in (m.bn0, m.bn_a, m.bn_b):
            randomise_bn(bn, g)
        # The residual stream is one coupled group: stem and conv_b duplicate the same channel.
        duplicate_channels(m.stem, m.bn0, [(7, 1), (5, 2)])
        duplicate_channels(m.conv_b, m.bn_b, [(7, 1), (5, 2)])
        duplicate_channels(m.conv_a, m.bn_a, [(5, 0)])
        x = torch.randn(2, 3, 6, 6)
        expected = {"stem": [5, 7], "conv_a": [5]}
    elif kind == "depthwise":
        m = DepthwiseNet()
        for bn in (m.bn0, m.bn1, m.bn2, m.bn3):
            randomise_bn(bn, g)
        duplicate_channels(m.expand, m.bn1, [(6, 1), (7, 3)])
        duplicate_channels(m.dw, m.bn2, [(6, 1), (7, 3)])
        x = torch.randn(2, 3, 6, 6)
        expected = {"expand": [6, 7]}
    else:
        m = MLP()
        duplicate_channels(m.fc1, None, [(20, 5), (21, 6), (22, 7)])
        duplicate_channels(m.fc2, None, [(15, 1), (19, 2)])
        x = torch.randn(4, 16)
        expected = {"fc1": [20, 21, 22], "fc2": [15, 19]}
    return m.double().eval(), x.double(), expected


class SmallCNN(nn.Module):
    """Plain CNN: conv-BN-ReLU x3 (the third a grouped conv) + 1x1 conv + Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = conv_bn(3, 16, 3, padding=1, bias=False)
        self.c2, self.b2 = conv_bn(16, 24, 3, padding=1, bias=False)
        self.c3, self.b3 = conv_bn(24, 24, 3, padding=1, groups=4, bias=False)
        self.c4 = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        x = torch.relu(self.c4(x))
        return self.fc(x.mean((2, 3)))


def small_cnn() -> tuple[nn.Module, torch.Tensor]:
    """A :class:`SmallCNN` with random weights and BN affine terms (eval mode) and an input."""
    torch.manual_seed(0)
    m = SmallCNN().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
    return m, torch.randn(1, 3, 8, 8)


def n_prunable(model: nn.Module, x: torch.Tensor) -> int:
    """The number of prunable channels (to turn "remove exactly the duplicates" into a ratio)."""
    from simprune.pruning.groups import build_dependency_graph, collect_groups

    dg = build_dependency_graph(model, x)
    groups, _ = collect_groups(dg, model)
    return sum(g.n_channels for g in groups)


def removed_by_layer(plan, expected: dict[str, list[int]]) -> dict[str, list[int]]:
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


# ---------------------------------------------------------------------------------------------------
# Comparing models.


def layer_widths(model: nn.Module) -> dict[str, int]:
    """{name: output channels / features} of every Conv2d and Linear."""
    return {
        n: int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def state_dicts_equal(a: nn.Module, b: nn.Module) -> bool:
    """Same keys, and every tensor equal (shape and values)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa
    )


def load_through_bytes(dst: nn.Module, src: nn.Module) -> nn.Module:
    """``dst.load_state_dict`` of ``src``'s state_dict after a torch.save / torch.load round trip."""
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf))
    return dst


# The torchvision models every whole-model pruning test sweeps (test_prune_sweep, test_prune_macs).
TORCHVISION_SWEEP = [
    "wide_resnet50_2",
    "mobilenet_v3_small",
    "densenet121",
    "regnet_y_400mf",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
]


# ---------------------------------------------------------------------------------------------------
# A data-merge rewrite built by hand (the verification's tests: tests/test_prune_verify.py and
# tests/test_prune_dense_merge.py).
MERGE_REMOVED = [1, 4]
MERGE_KEPT = [0, 2, 3, 5]


class MergeNet(nn.Module):
    """conv0 (6 channels) -> ReLU -> {conv1 (3x3, padded) ; channels-last flatten -> fc}."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv0(x))
        return self.conv1(h), self.fc(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1))


def merge_net(seed: int = 0):
    """(a float64 :class:`MergeNet`, an input, the traced group of conv0)."""
    from simprune.pruning.api import _trace

    torch.manual_seed(seed)
    model = MergeNet().double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    _, groups, _, _ = _trace(model, model, x, [])
    (g,) = [g for g in groups if g.root_name == "conv0"]
    return model, x, g


def merge_rewrite(model: MergeNet, coef: torch.Tensor, shift: torch.Tensor) -> MergeNet:
    """The data-merge rewrite of conv0 by hand (kept MERGE_KEPT, removed MERGE_REMOVED):
    W_K += W_R coef (coef: removed x kept), bias += (W_R summed over the kernel) shift."""
    import copy

    p = copy.deepcopy(model)
    k, r = torch.tensor(MERGE_KEPT), torch.tensor(MERGE_REMOVED)
    with torch.no_grad():
        p.conv0 = nn.Conv2d(3, 4, 3, padding=1).double()
        p.conv0.weight.copy_(model.conv0.weight[k])
        p.conv0.bias.copy_(model.conv0.bias[k])
        w = model.conv1.weight  # (4, 6, 3, 3)
        p.conv1 = nn.Conv2d(4, 4, 3, padding=1).double()
        p.conv1.weight.copy_(w[:, k] + torch.einsum("orhw,rk->okhw", w[:, r], coef))
        p.conv1.bias.copy_(model.conv1.bias + w[:, r].sum((2, 3)) @ shift)
        wf = model.fc.weight.reshape(5, 16, 6)  # fc reads position (y * 4 + x) * 6 + c
        p.fc = nn.Linear(16 * 4, 5).double()
        p.fc.weight.copy_((wf[:, :, k] + torch.einsum("osr,rk->osk", wf[:, :, r], coef)).flatten(1))
        p.fc.bias.copy_(model.fc.bias + wf[:, :, r].sum(1) @ shift)
    return p
