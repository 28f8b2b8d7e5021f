"""SimilarityImportance inside Torch-Pruning's MetaPruner (issue 7).

Oracle for "which channels go": the pipeline's own groups and descriptors (simprune.pruning.groups /
descriptors, built independently of the importance), the engine's dendrogram, ``cut_n_clusters`` and
``representatives``. Torch-Pruning's schedule options are checked against Torch-Pruning itself: with
local pruning the widths cannot depend on the scores, so they must equal those that
GroupMagnitudeImportance gives.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import simprune
from simprune.functional import channel_dendrogram
from simprune.integrations.torch_pruning import SimilarityImportance, representatives_of_removed
from simprune.pruning.descriptors import group_descriptors
from simprune.pruning.groups import collect_groups
from tests._helpers import MLP, conv_bn, duplicate_channels, layer_widths, randomise_bns

EX = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(name: str) -> nn.Module:
    torch.manual_seed(1)
    return randomise_bns(getattr(torchvision.models, name)(), 2)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _model("resnet18")


@pytest.fixture(scope="module")
def mobilenet_v2() -> nn.Module:
    return _model("mobilenet_v2")


def _head(model: nn.Module) -> nn.Module:
    return model.fc if hasattr(model, "fc") else model.classifier[-1]


def _oracle(pruner: tp.pruner.MetaPruner, model: nn.Module) -> dict[str, tuple]:
    """root name -> (descriptors, dendrogram, energy) from the pipeline's code, before a step."""
    groups, _ = collect_groups(pruner.DG, model, [_head(model)])
    out = {}
    for g in groups:
        v = group_descriptors(g, "gaussian").to(torch.float64)
        if v.shape[0] < 2:
            continue
        z = channel_dendrogram(v, metric="euclidean")
        out[g.root_name] = (v, z, simprune.channel_energy(v))
    return out


def _step_checked(pruner, model, imp) -> dict[str, list[int]]:
    """One interactive step; asserts every removed set is a dendrogram cut. Returns removals."""
    oracle = _oracle(pruner, model)
    names = {m: n for n, m in model.named_modules()}
    removed_by = {}
    for group in pruner.step(interactive=True):
        root = names[group[0].dep.target.module]
        removed = sorted(int(i) for i in group[0].root_idxs)
        v, z, energy = oracle[root]
        n, k = v.shape[0], len(removed)
        labels = simprune.cut_n_clusters(z, n - k)
        kept = simprune.representatives(labels, energy=energy)
        expect = sorted(set(range(n)) - set(kept.tolist()))
        assert removed == expect, f"{root}: removed set is not the {n - k}-cluster cut"
        removed_by[root] = removed
        group.prune()
    return removed_by


# ------------------------------------------------------------------------------ scores


@pytest.fixture(scope="module")
def scored18(resnet18):
    """A traced ResNet-18 and an importance that has scored it (raw heights)."""
    model = copy.deepcopy(resnet18)
    dg = tp.DependencyGraph().build_dependency(model, EX)
    imp = SimilarityImportance(normalizer=None)
    return model, dg, imp


def test_scores_have_root_length_and_order(scored18):
    model, dg, imp = scored18
    n_groups = 0
    for g in dg.get_all_groups(ignored_layers=[model.fc]):
        s = imp(g)
        n = len(g[0].idxs)
        assert s.shape == (n,) and s.dtype == torch.float64
        assert torch.isinf(s).sum() == 1 and bool((s[torch.isfinite(s)] >= 0).all())
        # A partial group in any order gets the same channels' scores, in its order.
        sub = torch.randperm(n, generator=torch.Generator().manual_seed(n))[: max(1, n // 3)]
        part = dg.get_pruning_group(g[0].dep.target.module, g[0].dep.handler, sub.tolist())
        assert torch.equal(imp(part), s[sub])
        n_groups += 1
    assert n_groups > 5
    assert imp.passes == 1  # every group came from the one batched pass
    # The classifier's group is left out of the batch (its classes reach the output) and scored
    # on demand.
    fc = dg.get_pruning_group(model.fc, tp.prune_linear_out_channels, list(range(1000)))
    assert imp(fc).shape == (1000,) and imp.passes == 2
    imp(fc)
    assert imp.passes == 2


def test_scores_match_functional_api_on_a_plain_group(scored18):
    """conv1 of a basic block -> bn1 is a plain group: the scores are the functional API's."""
    model, dg, imp = scored18
    blk = model.layer2[1]
    n = blk.conv1.out_channels
    g = dg.get_pruning_group(blk.conv1, tp.prune_conv_out_channels, list(range(n)))
    ref = simprune.functional.score_channels(
        blk.conv1.weight.double(), gamma=blk.bn1.weight, beta=blk.bn1.bias
    )
    torch.testing.assert_close(imp(g), ref, rtol=1e-5, atol=1e-7)
    passes = imp.passes
    # The default normaliser divides by the RMS descriptor norm: scale-free heights.
    scaled = copy.copy(imp)
    scaled.normalizer = "energy"
    ref_n = simprune.functional.score_channels(
        blk.conv1.weight.double(), gamma=blk.bn1.weight, beta=blk.bn1.bias, normalize=True
    )
    torch.testing.assert_close(scaled(g), ref_n, rtol=1e-5, atol=1e-7)
    assert scaled.passes == passes  # the copy reused the cache


NORMALIZERS = [None, "mean", "max", "sum", "gaussian", "lamp", "standarization", "sentinel_0.5",
               "energy", lambda s: s * 2 + 1]  # fmt: skip


def test_normalizers_keep_the_order_within_a_group(scored18):
    model, dg, imp = scored18
    g = dg.get_pruning_group(model.layer3[0].conv1, tp.prune_conv_out_channels, list(range(256)))
    raw = imp(g)
    passes = imp.passes
    fin = torch.isfinite(raw)
    order = torch.argsort(raw[fin], stable=True)
    for normalizer in NORMALIZERS:
        other = copy.copy(imp)  # shares the cached dendrograms
        other.normalizer = normalizer
        s = other(g)
        assert torch.equal(torch.isfinite(s), fin), normalizer  # the survivor stays +inf
        assert bool((s[fin][order].diff() >= 0).all()), normalizer
        assert not torch.equal(s, raw) or normalizer is None, normalizer
        assert other.passes == passes  # normalising reuses the cached dendrograms


def test_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        SimilarityImportance(metric="l7")
    with pytest.raises(ValueError, match="linkage method"):
        SimilarityImportance(method="nearest")
    with pytest.raises(ValueError, match="Euclidean"):
        SimilarityImportance(metric="cosine", method="ward")
    with pytest.raises(ValueError, match="normalizer"):
        SimilarityImportance(normalizer="median")
    with pytest.raises(ValueError, match="merge"):
        SimilarityImportance(merge="avg")
    with pytest.raises(ValueError, match="dependency graph"):
        SimilarityImportance()(tp.dependency.Group())


# ---------------------------------------------------------------- MetaPruner, the dendrogram cut


def test_local_pruning_removes_the_cut_resnet18(resnet18):
    model = copy.deepcopy(resnet18)
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(model, EX, imp, pruning_ratio=0.5, ignored_layers=[model.fc])
    removed = _step_checked(pr, model, imp)
    assert len(removed) > 5 and imp.passes == 1
    assert model(EX).shape == (1, 1000)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_global_pruning_ranks_scale_free_heights(request, name):
    model = copy.deepcopy(request.getfixturevalue(name))
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(
        model, EX, imp, pruning_ratio=0.4, global_pruning=True, ignored_layers=[_head(model)]
    )
    scores = {}
    names = {m: n for n, m in model.named_modules()}
    for g in pr.DG.get_all_groups(ignored_layers=[_head(model)]):
        scores[names[g[0].dep.target.module]] = imp(g)
    removed = _step_checked(pr, model, imp)
    # One threshold for the whole network: every removed score <= every kept score.
    rem = torch.cat([scores[r][idx] for r, idx in removed.items()])
    kept = torch.cat(
        [
            s[[i for i in range(len(s)) if i not in set(removed.get(r, []))]]
            for r, s in scores.items()
        ]
    )
    assert float(rem.max()) <= float(kept.min())
    total = sum(len(s) for s in scores.values())
    assert len(rem) == total - int(total * (1 - 0.4))
    widths = [len(s) - len(removed.get(r, [])) for r, s in scores.items()]
    assert len(set(w / len(s) for w, s in zip(widths, scores.values(), strict=True))) > 1
    model(EX)


def test_iterative_steps_rescore_each_step(resnet18):
    model = copy.deepcopy(resnet18)
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(
        model, EX, imp, pruning_ratio=0.5, iterative_steps=2, ignored_layers=[model.fc]
    )
    for step in range(2):
        _step_checked(pr, model, imp)
        assert imp.passes == step + 1  # one batched pass per step, recomputed after pruning
    assert model.layer2[0].conv1.out_channels == 64
    model(EX)


def test_round_to_mobilenet_v2(mobilenet_v2):
    model = copy.deepcopy(mobilenet_v2)
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(
        model, EX, imp, pruning_ratio=0.3, round_to=8, ignored_layers=[model.classifier[-1]]
    )
    removed = _step_checked(pr, model, imp)
    assert len(removed) > 5
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.groups == 1 and name in removed:
            assert mod.out_channels % 8 == 0, name
    model(EX)


def test_resnet50_local_step():
    model = _model("resnet50")
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(model, EX, imp, pruning_ratio=0.3, ignored_layers=[model.fc])
    removed = _step_checked(pr, model, imp)
    assert len(removed) > 20 and imp.passes == 1
    model(EX)


@pytest.mark.parametrize(
    "opts",
    [
        {"pruning_ratio": 0.5, "iterative_steps": 3, "max_pruning_ratio": 0.4},
        {"pruning_ratio": 0.5, "round_to": 16},
        {"pruning_ratio": 0.3, "pruning_ratio_dict": "layer2"},
    ],
    ids=["iterative+max_ratio", "round_to", "ratio_dict"],
)
def test_schedule_options_work_unchanged(mobilenet_v2, resnet18, opts):
    """Local pruning widths depend only on Torch-Pruning's schedule, not on the scores."""
    widths = []
    base = resnet18 if "pruning_ratio_dict" in opts or "round_to" in opts else mobilenet_v2
    for imp in (SimilarityImportance(), tp.importance.GroupMagnitudeImportance(p=2)):
        model = copy.deepcopy(base)
        kw = dict(opts)
        if kw.get("pruning_ratio_dict") == "layer2":
            kw["pruning_ratio_dict"] = {model.layer2: 0.6}
        pr = tp.pruner.MetaPruner(model, EX, imp, ignored_layers=[_head(model)], **kw)
        for _ in range(kw.get("iterative_steps", 1)):
            pr.step()
        model(EX)
        widths.append(layer_widths(model))
    assert widths[0] == widths[1]
    assert widths[0] != layer_widths(base)


# --------------------------------------------------------------------- grouped convolutions


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 16, 3, padding=1, bias=False)
        self.conv2, self.bn2 = conv_bn(16, 16, 3, padding=1, groups=4, bias=False)
        self.conv3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def test_grouped_conv_scores_are_position_wise():
    torch.manual_seed(3)
    model = randomise_bns(GroupedNet(), 4)
    ex = torch.randn(1, 3, 8, 8)
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(model, ex, imp, pruning_ratio=0.5, ignored_layers=[model.fc])
    g = pr.DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(16)))
    s = imp(g)
    # Torch-Pruning averages over 4 channel groups: the scores repeat with period 16 / 4.
    assert torch.equal(s, s[:4].repeat(4))
    # The unit of position u concatenates channels u, u+4, u+8, u+12 of conv1 and conv2.
    groups, _ = collect_groups(pr.DG, model, [model.fc])
    (grp,) = [x for x in groups if x.root_name == "conv1"]
    v = group_descriptors(grp, "gaussian").double()
    assert v.shape[0] == 4
    ref = simprune.functional.score_channels(v, metric="euclidean", normalize=True)
    torch.testing.assert_close(s[:4], ref, rtol=1e-5, atol=1e-7)
    kept_units = set(range(4)) - {int(torch.argsort(ref)[0]), int(torch.argsort(ref)[1])}
    for group in pr.step(interactive=True):
        if group[0].dep.target.module is model.conv1:
            removed = sorted(int(i) for i in group[0].root_idxs)
            assert removed == sorted(
                u + 4 * k for u in set(range(4)) - kept_units for k in range(4)
            )
        imp.merge(group)
        group.prune()
    assert model.conv1.out_channels == 8 and model.conv2.groups == 4
    model(ex)


def test_grouped_conv_interactive_merge_is_exact():
    """Positions 2, 3 duplicate 0, 1 in every conv group (conv1 and the grouped conv2)."""
    torch.manual_seed(8)
    model = randomise_bns(GroupedNet(), 9).double()
    pairs = [(2 + 4 * k, 4 * k) for k in range(4)] + [(3 + 4 * k, 1 + 4 * k) for k in range(4)]
    duplicate_channels(model.conv1, model.bn1, pairs)
    duplicate_channels(model.conv2, model.bn2, pairs)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y0 = model(x)
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(
        model, x, imp, pruning_ratio=0.5, ignored_layers=[model.fc, model.conv3]
    )
    folded = 0
    for group in pr.step(interactive=True):
        folded += imp.merge(group)
        group.prune()
    assert folded > 0 and model.conv1.out_channels == 8 and model.conv2.out_channels == 8
    torch.testing.assert_close(model(x), y0, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_cuda_model_gives_the_cpu_scores(resnet18):
    """On a CUDA model the engine runs on the GPU (ragged Triton distances, GPU linkage)."""
    cpu = copy.deepcopy(resnet18)
    gpu = copy.deepcopy(resnet18).cuda()
    dg_c = tp.DependencyGraph().build_dependency(cpu, EX)
    dg_g = tp.DependencyGraph().build_dependency(gpu, EX.cuda())
    imp_c, imp_g = SimilarityImportance(), SimilarityImportance()
    for gc, gg in zip(
        dg_c.get_all_groups(ignored_layers=[cpu.fc]),
        dg_g.get_all_groups(ignored_layers=[gpu.fc]),
        strict=True,
    ):
        sc, sg = imp_c(gc), imp_g(gg)
        assert sg.device.type == "cpu" and torch.equal(torch.isinf(sc), torch.isinf(sg))
        fin = torch.isfinite(sc)
        torch.testing.assert_close(sg[fin], sc[fin], rtol=1e-4, atol=1e-6)
    assert imp_g.passes == 1


# ---------------------------------------------------------------- interactive merge exactness


class DupChain(nn.Module):
    """conv-BN-ReLU x2 -> flatten -> Linear, and a residual add; channels built as duplicates."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 12, 3, padding=1)
        self.conv2, self.bn2 = conv_bn(12, 12, 3, padding=1, bias=False)
        self.conv3, self.bn3 = conv_bn(12, 10, 3, padding=1, stride=2, bias=False)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))  # residual: conv1 and conv2 coupled
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.flatten(1))


def _dup_chain() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(5)
    m = randomise_bns(DupChain(), 6).double()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    half = [(j, j - 6) for j in range(6, 12)]
    duplicate_channels(m.conv1, m.bn1, half)
    duplicate_channels(m.conv2, m.bn2, half)
    # conv2 reads its input twice (channels j and j-6 are equal): its weights must not depend on
    # which copy they read for the residual duplicates to stay duplicates -- they need not: the
    # input copies are equal, so any weights give equal outputs for equal *output* rows.
    duplicate_channels(m.conv3, m.bn3, [(j, j - 5) for j in range(5, 10)])
    return m, torch.randn(2, 3, 8, 8, dtype=torch.float64)


def _dup_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(7)
    m = MLP((10, 16, 12, 3)).double()
    duplicate_channels(m.fc1, None, [(j, j - 8) for j in range(8, 16)])
    duplicate_channels(m.fc2, None, [(j, j - 6) for j in range(6, 12)])
    return m, torch.randn(4, 10, dtype=torch.float64)


@pytest.mark.parametrize("build", [_dup_chain, _dup_mlp], ids=["conv-residual-flatten", "mlp"])
@pytest.mark.parametrize("merge", ["ls", "sum"])
def test_interactive_merge_keeps_outputs(build, merge):
    model, x = build()
    model.eval()
    y0 = model(x)
    head = model.fc if hasattr(model, "fc") else model.fc3
    imp = SimilarityImportance(merge=merge)
    pr = tp.pruner.MetaPruner(model, x, imp, pruning_ratio=0.5, ignored_layers=[head])
    folded = 0
    for group in pr.step(interactive=True):
        folded += imp.merge(group)
        group.prune()
    assert folded > 0
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in build()[0].parameters()
    )
    torch.testing.assert_close(model(x), y0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("metric", ["gaussian", None])
@pytest.mark.parametrize("build", [_dup_chain, _dup_mlp], ids=["conv-residual-flatten", "mlp"])
def test_interactive_data_merge_keeps_outputs_and_verifies(build, metric):
    """SimilarityImportance(data=...) merges by the data (merge=None -> "data"): W_K += W_R B^T and
    the mean shift in the consumers' biases, through imp.prune (verified against the real forward);
    the pruned model computes the original's function on the data. metric=None: the activation
    metric picks the channels."""
    model, x = build()
    model.eval()
    data = torch.randn(256, *x.shape[1:], dtype=x.dtype)
    y0 = model(data)
    head = model.fc if hasattr(model, "fc") else model.fc3
    imp = SimilarityImportance(metric=metric, data=data)
    assert imp.merge_mode == "data" and imp.metric == (metric or "activation")
    pr = tp.pruner.MetaPruner(model, x, imp, pruning_ratio=0.5, ignored_layers=[head])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no group restored, no consumer corrected
        assert all(imp.prune(group, x) for group in pr.step(interactive=True))
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in build()[0].parameters()
    )
    torch.testing.assert_close(model(data), y0, rtol=0, atol=1e-6)


def test_merge_data_needs_data():
    with pytest.raises(ValueError, match="merge='data' needs data="):
        SimilarityImportance(merge="data")
    with pytest.raises(ValueError, match="merge must be one of"):
        SimilarityImportance(merge="mean")
    assert SimilarityImportance().merge_mode == "ls"


@pytest.mark.parametrize("build", [_dup_chain, _dup_mlp], ids=["conv-residual-flatten", "mlp"])
def test_without_merge_outputs_change(build):
    """The exactness above comes from the merge (the check can fail)."""
    model, x = build()
    model.eval()
    y0 = model(x)
    head = model.fc if hasattr(model, "fc") else model.fc3
    pr = tp.pruner.MetaPruner(
        model, x, SimilarityImportance(), pruning_ratio=0.5, ignored_layers=[head]
    )
    pr.step()
    assert (model(x) - y0).abs().max() > 1e-3


def test_merge_rejects_stale_scores():
    model, x = _dup_mlp()
    imp = SimilarityImportance()
    pr = tp.pruner.MetaPruner(model, x, imp, pruning_ratio=0.5, ignored_layers=[model.fc3])
    groups = list(pr.step(interactive=True))
    groups[0].prune()
    with pytest.raises(ValueError, match="score it again"):
        imp.merge(groups[0])


def test_cache_follows_in_place_updates():
    model, x = _dup_mlp()
    imp = SimilarityImportance()
    dg = tp.DependencyGraph().build_dependency(model, x)
    g = dg.get_pruning_group(model.fc1, tp.prune_linear_out_channels, list(range(16)))
    s0 = imp(g)
    imp(g)
    assert imp.passes == 1
    with torch.no_grad():
        model.fc1.weight[0] += 1.0  # an optimiser step: in place, bumps the version counter
    s1 = imp(g)
    assert imp.passes == 2 and not torch.equal(s0, s1)
    with torch.no_grad():
        model.fc1.weight.data[1] += 1.0  # invisible to the version counter ...
    imp.invalidate()  # ... hence invalidate()
    imp(g)
    assert imp.passes == 3


# -------------------------------------------------------------------- representatives helper


def test_representatives_of_removed_is_the_cut():
    g = torch.Generator().manual_seed(11)
    for n in (2, 3, 7, 20):
        v = torch.randn(n, 4, generator=g, dtype=torch.float64)
        z = channel_dendrogram(v, metric="euclidean")
        pr = simprune.channel_energy(v)
        scores = simprune.redundancy_scores(z, pr)
        for k in range(n):
            removed = torch.argsort(scores)[:k].tolist()
            rep = representatives_of_removed(z.numpy(), removed, pr)
            labels = simprune.cut_n_clusters(z, n - k)
            kept = set(simprune.representatives(labels, energy=pr).tolist())
            assert kept == set(range(n)) - set(removed)
            assert set(rep) == set(removed)
            for j, r in rep.items():
                assert r in kept and labels[j] == labels[r]
