"""Calibration-driven pruning (issue 15): the statistics pass (simprune/pruning/stats.py), the data
merge (merge="data": ridge least squares + mean shifts, simprune/pruning/merge.py) and the
``activation`` metric, against brute-force references and on models with duplicated channels."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import simprune
from simprune.pruning import PruningPlan
from simprune.pruning.groups import build_dependency_graph, collect_groups
from simprune.pruning.merge import data_merges
from simprune.pruning.stats import GroupStats, collect_stats
from tests._helpers import (
    DUPLICATE_MODELS,
    duplicate_model,
    n_prunable,
    removed_by_layer,
    small_cnn,
)


def _groups(model, x):
    dg = build_dependency_graph(model, x)
    return collect_groups(dg, model)[0]


def _consumer_inputs(model, names):
    """Forward pre-hooks capturing the inputs of the named modules."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hs = []
    for n in names:
        mod = model.get_submodule(n)
        hs.append(mod.register_forward_pre_hook(lambda m, a, n=n: got[n].append(a[0].detach())))
    return got, hs


def _brute(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.to(torch.float64)
    mu = z.mean(0)
    zc = z - mu
    return mu, zc.T @ zc / z.shape[0]


# ---- the statistics pass ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DUPLICATE_MODELS)
def test_statistics_equal_a_brute_force_covariance(kind):
    """Mean and covariance of every group at its first consumer's input, from the stored inputs of
    the whole data at once: conv inputs pool positions, a flatten-reached Linear pools each
    channel's block, a residual group reads the shared tensor."""
    model, x, _ = duplicate_model(kind)
    groups = _groups(model, x)
    data = torch.randn(40, *x.shape[1:], dtype=x.dtype) + 0.5
    st = collect_stats(model, groups, data, x, batch_size=7)  # uneven batches
    assert set(st) == {g.root_name for g in groups}
    for g in groups:
        s = st[g.root_name]
        cons = next(m for m in g.consumers() if m.name == s.consumers[0])
        got, hs = _consumer_inputs(model, [cons.name])
        with torch.no_grad():
            model(data)
        for h in hs:
            h.remove()
        inp = torch.cat(got[cons.name])
        idx = cons.layer_index_map()
        k = len(idx[0])
        if isinstance(cons.module, nn.Linear):
            # (N, F): channel c owns positions idx[c]; every position is one sample.
            cols = torch.tensor([idx[c] for c in range(g.n_channels)])  # (C, k)
            z = inp[:, cols]  # (N, C, k)
            z = z.permute(0, 2, 1).reshape(-1, g.n_channels)
        else:
            assert k == 1
            chans = torch.tensor([idx[c][0] for c in range(g.n_channels)])
            z = inp[:, chans].permute(0, 2, 3, 1).reshape(-1, g.n_channels)
        mu, cov = _brute(z)
        if len(s.consumers) == 1:
            assert s.n == z.shape[0]
            torch.testing.assert_close(s.mean, mu, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(s.cov, cov, rtol=1e-9, atol=1e-12)
        else:
            # Several distinct consumer tensors (resblock: conv_a reads x, fc reads x.mean((2, 3))):
            # the samples of all of them.
            zs = [z]
            for other in s.consumers[1:]:
                m2 = g.consumers()[[m.name for m in g.consumers()].index(other)]
                got, hs = _consumer_inputs(model, [other])
                with torch.no_grad():
                    model(data)
                for h in hs:
                    h.remove()
                i2 = m2.layer_index_map()
                zs.append(torch.cat(got[other])[:, [i2[c][0] for c in range(g.n_channels)]])
            mu, cov = _brute(torch.cat([t.reshape(-1, g.n_channels) for t in zs]))
            assert s.n == sum(t.reshape(-1, g.n_channels).shape[0] for t in zs)
            torch.testing.assert_close(s.mean, mu, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(s.cov, cov, rtol=1e-9, atol=1e-12)


def test_statistics_float32_model_and_large_mean():
    """float32 products summed in float64 around a shift: a mean 1e3 times the spread does not
    cancel the covariance."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    model = nn.Sequential(nn.Linear(4, 6), lin).eval()
    with torch.no_grad():
        model[0].bias.fill_(1000.0)
    data = torch.randn(3000, 4)
    groups = _groups(model, data[:1])
    st = collect_stats(model, groups, data, data[:1], batch_size=512)["0"]
    with torch.no_grad():
        z = model[0](data.double().to(torch.float32)).double()
    mu, cov = _brute(z)
    assert st.product_dtype == torch.float32
    torch.testing.assert_close(st.mean, mu, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(st.cov, cov, rtol=2e-4, atol=2e-4)


def test_statistics_memory_budget_passes_and_refusal():
    model, x, _ = duplicate_model("mlp")
    groups = _groups(model, x)
    data = torch.randn(64, 16, dtype=torch.float64)
    full = collect_stats(model, groups, data, x)
    # A budget for one group per pass: two passes, the same statistics.
    one = collect_stats(model, groups, data, x, memory_budget=8 * (24 * 24 + 48))
    for k, s in full.items():
        assert torch.equal(s.cov, one[k].cov) and s.n == one[k].n
    # Two passes over a one-shot iterator cannot work: said before any pass.
    with pytest.raises(ValueError, match="2 passes.*one-shot iterator"):
        collect_stats(
            model, groups, iter(torch.split(data, 16)), x, memory_budget=8 * (24 * 24 + 48)
        )
    # A group wider than the budget is refused, naming it and the bytes it needs.
    with pytest.raises(
        ValueError, match=r"group 'fc2' has 20 channels.*0.00 MiB.*memory_budget=0.00 MiB"
    ):
        collect_stats(model, groups, data, x, memory_budget=1000)


def test_statistics_bad_input_is_named():
    model, x, _ = duplicate_model("chain")
    groups = _groups(model, x)
    with pytest.raises(ValueError, match=r"calibration batch 0 has shape \(8, 3, 8\).*dimensions"):
        collect_stats(model, groups, torch.randn(8, 3, 8, dtype=torch.float64), x)
    with pytest.raises(
        ValueError, match=r"calibration batch 0 of shape \(8, 2, 8, 8\) does not fit"
    ):
        collect_stats(model, groups, torch.randn(8, 2, 8, 8, dtype=torch.float64), x)
    with pytest.raises(TypeError, match="dtype torch.uint8.*floating point"):
        collect_stats(model, groups, torch.zeros(8, 3, 8, 8, dtype=torch.uint8), x)
    bad = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="batch 0 contains 1 NaN"):
        collect_stats(model, groups, bad, x)
    # float32 data for a float64 model is cast (not an error); the model is left as it was.
    before = copy.deepcopy(model.state_dict())
    model.train()
    st = collect_stats(model, groups, torch.randn(8, 3, 8, 8), x)
    assert st and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Activations that overflow: named group and consumer.
    with torch.no_grad():
        model.conv1.weight.mul_(1e300)
    with pytest.raises(
        ValueError, match=r"group 'conv\d'.*non-finite activations.*input of '(conv2|fc)'"
    ):
        collect_stats(model, groups, torch.randn(8, 3, 8, 8, dtype=torch.float64), x)


# ---- the data merge -----------------------------------------------------------------------------
def _recalibrated(model, data):
    return simprune.recalibrate_bn(copy.deepcopy(model), data)


def _prune_duplicates(model, x, ratio: float, data, metric, *, recalibrate_first: bool = True):
    """(model, pruned, plan, report, reference) of ``prune(..., calibration_data=data)``; the
    reference is the model with its BatchNorm re-estimated on ``data`` as prune() does.
    ``recalibrate_first``: BatchNorm statistics of the data first, as in a trained model: with the
    random running statistics of the test models a channel can be dead (ReLU) on the data --
    measured redundant, dropped by the fit -- and alive after prune()'s re-estimation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # models without BatchNorm: nothing to recalibrate
        if recalibrate_first:
            model = _recalibrated(model, data)
        pruned, plan, report = simprune.prune(
            model, x, pruning_ratio=ratio, min_keep_ratio=0.0, calibration_data=data,
            metric=metric, progress=False,
        )  # fmt: skip
        return model, pruned, plan, report, _recalibrated(model, data)


def _check_removed(plan, expected: dict[str, list[int]], *, exact: bool) -> None:
    """The duplicates' layers lose exactly the expected channels (``exact``), or as many channels
    are removed in all: measured on data, a channel that is dead (always zero after its ReLU) is
    as redundant as a duplicate and the activation metric may take it instead; the callers check
    that the function is kept either way."""
    if exact:
        assert removed_by_layer(plan, expected) == expected
    else:
        assert plan.n_removed == sum(len(v) for v in expected.values())


@pytest.mark.parametrize("metric", ["gaussian", None])
@pytest.mark.parametrize("kind", DUPLICATE_MODELS)
def test_data_merge_is_exact_on_duplicates(kind, metric):
    """merge="data" (the default with calibration data) removes exactly the duplicates and the
    pruned model computes the original's function (after BN re-estimation on both, 1e-6 float64);
    the plan replays to the same model through JSON. With the default metric (``activation`` when
    data are given) the two channels of a pair have the same measured energy up to rounding, so
    which of them stays is not pinned: the counts are, and the function."""
    model, x, expected = duplicate_model(kind)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    data = torch.randn(256, *x.shape[1:], dtype=x.dtype)
    # The random BatchNorm statistics are kept for the gaussian metric (it does not read data).
    model, pruned, plan, report, ref = _prune_duplicates(
        model, x, ratio, data, metric, recalibrate_first=metric is None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP has no BatchNorm to recalibrate
        replay = simprune.apply_plan(
            model, PruningPlan.from_json(plan.to_json()), calibration_data=data
        )
    assert plan.settings["merge"] == "data" and not report.excluded
    assert plan.settings["metric"] == (metric or "activation")
    _check_removed(plan, expected, exact=metric is not None)
    assert any(len({j for j, _, _ in gp.merges}) < len(gp.merges) for gp in plan.groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(data), ref(data), rtol=0, atol=1e-6)
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, replay.state_dict()[k]), k
    # Without any merge the same removal changes the function (the test can fail).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off, _, _ = simprune.prune(
            model, x, pruning_ratio=ratio, min_keep_ratio=0.0, calibration_data=data,
            merge=False, progress=False,
        )  # fmt: skip
    with torch.no_grad():
        assert (off(data) - ref(data)).abs().max() > 1e-3


def _cov(n_samples: int, c: int, rank: int, seed: int) -> GroupStats:
    g = torch.Generator().manual_seed(seed)
    z = (
        torch.randn(n_samples, rank, generator=g, dtype=torch.float64)
        @ torch.randn(rank, c, generator=g, dtype=torch.float64)
        + torch.randn(n_samples, c, generator=g, dtype=torch.float64) * 0.3
        + 2.0
    )
    mu, cov = _brute(z)
    return GroupStats("g", n_samples, mu, cov), z


class _G:
    """The parts of a ChannelGroup that data_merges reads."""

    def __init__(self, n: int, ch_groups: int = 1) -> None:
        self.n_channels, self.ch_groups, self.root_name = n, ch_groups, "g"


def _residual(z, kept, merges, shifts):
    """Mean squared error of reconstructing the removed channels of samples z from the kept ones
    with the merges (coefficients) and shifts."""
    c = z.shape[1]
    rec = torch.zeros_like(z)
    for j, r, a in merges:
        rec[:, j] += a * z[:, r]
    for j, s in shifts:
        rec[:, j] += s
    removed = [i for i in range(c) if i not in set(kept)]
    return float(((rec[:, removed] - z[:, removed]) ** 2).mean())


def test_reconstruction_error_decreases_with_more_kept_channels():
    st, z = _cov(4000, 24, 6, 0)
    errs = []
    removed_last = list(range(18, 24))
    for n_kept in (2, 4, 8, 12, 18):
        kept = list(range(n_kept))
        ((merges, shifts),) = data_merges([(_G(24), st, kept)])
        # Only the channels removed in every setting are compared: a nested sequence of kept sets.
        e = _residual(z[:, :], kept, merges, shifts)
        e_last = _residual_subset(z, kept, merges, shifts, removed_last)
        errs.append(e_last)
        assert e >= 0
    assert all(a >= b - 1e-12 for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.5 * errs[0]
    # It is the least-squares optimum: perturbing a coefficient makes it worse.
    kept = list(range(8))
    ((merges, shifts),) = data_merges([(_G(24), st, kept)])
    e0 = _residual(z, kept, merges, shifts)
    bumped = [[j, r, a + (0.05 if k == 3 else 0.0)] for k, (j, r, a) in enumerate(merges)]
    assert _residual(z, kept, bumped, shifts) > e0


def _residual_subset(z, kept, merges, shifts, cols):
    rec = torch.zeros_like(z)
    for j, r, a in merges:
        rec[:, j] += a * z[:, r]
    for j, s in shifts:
        rec[:, j] += s
    return float(((rec[:, cols] - z[:, cols]) ** 2).mean())


def test_data_merge_matches_a_direct_least_squares_fit():
    """B and c equal numpy's least squares of the removed channels on [kept, 1]."""
    st, z = _cov(5000, 10, 10, 1)
    kept = [0, 2, 3, 7]
    ((merges, shifts),) = data_merges([(_G(10), st, kept)])
    removed = [i for i in range(10) if i not in kept]
    a = torch.cat([z[:, kept], torch.ones(len(z), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(a, z[:, removed]).solution  # (|K| + 1, |R|)
    got = {(j, r): c for j, r, c in merges}
    for ti, j in enumerate(removed):
        for si, r in enumerate(kept):
            assert got[(j, r)] == pytest.approx(float(sol[si, ti]), rel=1e-6, abs=1e-9)
    sh = dict(shifts)
    for ti, j in enumerate(removed):
        assert sh[j] == pytest.approx(float(sol[-1, ti]), rel=1e-6, abs=1e-9)


def test_conv_groups_merge_within_their_block_and_nothing_removed_is_identity():
    st, _ = _cov(2000, 12, 12, 2)
    # ch_groups=2: channels 0-5 and 6-11; a merge never crosses the blocks.
    ((merges, shifts),) = data_merges([(_G(12, 2), st, [0, 1, 6, 7])])
    assert merges and all((j < 6) == (r < 6) for j, r, _ in merges)
    ((merges, shifts),) = data_merges([(_G(12), st, list(range(12)))])
    assert merges == [] and shifts == []


def test_rank_deficient_statistics_warn_and_use_the_fallback_ridge():
    st, _ = _cov(5, 12, 12, 3)  # 5 samples, 8 kept channels
    with pytest.warns(UserWarning, match=r"5 calibration sample\(s\) for 8 kept channels.*ridge"):
        ((merges, _),) = data_merges([(_G(12), st, list(range(8)))])
    assert all(torch.isfinite(torch.tensor(a)) for _, _, a in merges)


def test_prune_data_merge_needs_data_and_rejects_bad_data():
    model, x = small_cnn()
    with pytest.raises(ValueError, match="merge='data' needs calibration_data"):
        simprune.prune(model, x, macs_reduction=0.3, merge="data", progress=False)
    with pytest.raises(ValueError, match="metric='activation' needs calibration_data"):
        simprune.prune(model, x, macs_reduction=0.3, metric="activation", progress=False)
    with pytest.raises(ValueError, match=r"batch 0 of shape \(4, 5, 8, 8\) does not fit"):
        simprune.prune(
            model, x, macs_reduction=0.3, calibration_data=torch.randn(4, 5, 8, 8), progress=False
        )
    bad = torch.randn(4, 3, 8, 8)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        simprune.prune(model, x, macs_reduction=0.3, calibration_data=bad, progress=False)


def test_prune_data_merge_plan_json_round_trip_and_merge_ls_still_available():
    model, x = small_cnn()
    data = torch.randn(64, 3, 8, 8)
    pruned, plan, _ = simprune.prune(
        model, x, pruning_ratio=0.4, calibration_data=data, progress=False
    )
    d = json.loads(plan.to_json())
    assert any(g["shifts"] for g in d["groups"])
    again = PruningPlan.from_json(plan.to_json())
    assert [g.shifts for g in again.groups] == [g.shifts for g in plan.groups]
    ls, plan_ls, _ = simprune.prune(
        model, x, pruning_ratio=0.4, calibration_data=data, merge="ls", progress=False
    )
    assert plan_ls.settings["merge"] == "ls" and not any(g.shifts for g in plan_ls.groups)
    assert [g.kept for g in plan_ls.groups] == [g.kept for g in plan.groups]


# ---- the activation metric ----------------------------------------------------------------------
def test_activation_metric_distances_are_the_variance_of_differences():
    from simprune.pruning.descriptors import group_descriptors
    from simprune.pruning.stats import attach_stats

    model, x, _ = duplicate_model("chain")
    groups = _groups(model, x)
    data = torch.randn(64, 3, 8, 8, dtype=torch.float64)
    st = collect_stats(model, groups, data, x)
    attach_stats(groups, st)
    for g in groups:
        v = group_descriptors(g, "activation")
        s = st[g.root_name].cov
        d = torch.cdist(v, v) ** 2
        want = s.diagonal()[:, None] + s.diagonal()[None, :] - 2 * s
        torch.testing.assert_close(d, want, rtol=1e-8, atol=1e-10)


def test_prune_with_activation_metric_removes_the_duplicates():
    model, x, expected = duplicate_model("chain")
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    data = torch.randn(128, 3, 8, 8, dtype=torch.float64)
    pruned, plan, _ = simprune.prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, metric="activation",
        calibration_data=data, progress=False,
    )  # fmt: skip
    # One channel of every duplicated pair goes (which one is a tie: their variances are equal),
    # and the pruned model computes the same function.
    pairs = {"conv1": [(8, 0), (9, 1), (10, 2), (11, 3)], "conv2": [(7, 2), (9, 4)]}
    got = removed_by_layer(plan, expected)
    for layer, ps in pairs.items():
        assert sorted(got[layer]) == sorted(a if a in got[layer] else b for a, b in ps)
        assert all((a in got[layer]) != (b in got[layer]) for a, b in ps)
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(data), _recalibrated(model, data)(data), rtol=0, atol=1e-6
        )


def test_similarity_importance_with_data_scores_by_activation():
    """Torch-Pruning with SimilarityImportance(metric="activation", data=...): one channel of every
    duplicated pair goes (zero activation distance); without data it is refused."""
    import torch_pruning as tp

    from simprune.integrations.torch_pruning import SimilarityImportance

    with pytest.raises(ValueError, match="metric='activation' needs data="):
        SimilarityImportance(metric="activation")
    model, x, _ = duplicate_model("mlp")
    data = torch.randn(128, 16, dtype=torch.float64)
    imp = SimilarityImportance(metric="activation", data=data)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=imp, pruning_ratio=3 / 24, ignored_layers=[model.fc2, model.fc3]
    )
    removed = []
    for g in pruner.step(interactive=True):
        removed += [int(i) for i in g[0].idxs]
        g.prune()
    pairs = [(20, 5), (21, 6), (22, 7)]
    assert len(removed) == 3 and all((a in removed) != (b in removed) for a, b in pairs)
    assert imp.passes == 1


_LAYER_KINDS = [
    "concat_ab",
    "squeeze_excitation",
    "conv_transpose",
    "conv_transpose_depthwise",
    "conv1d",
    "conv3d",
    "grouped_consumer",
]


@pytest.mark.parametrize("metric", ["gaussian", None])
@pytest.mark.parametrize("kind", _LAYER_KINDS)
def test_data_merge_is_exact_on_duplicates_for_more_layer_types(kind, metric):
    """The data merge's fold (several kept channels per removed one, bias shifts) on the layer
    types of tests/test_prune_layers.py: concatenations, squeeze-excitation, ConvTranspose
    (depthwise too), Conv1d/3d and a grouped-conv consumer."""
    from tests.test_prune_layers import layer_model

    model, x, expected = layer_model(kind)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    data = torch.randn(64, *x.shape[1:], dtype=x.dtype)
    model, pruned, plan, report, ref = _prune_duplicates(model, x, ratio, data, metric)
    assert plan.settings["merge"] == "data" and not report.excluded
    _check_removed(plan, expected, exact=metric is not None)
    with torch.no_grad():
        torch.testing.assert_close(pruned(data), ref(data), rtol=0, atol=1e-6)
    replay = simprune.apply_plan(model, plan, x, verify=False, calibration_data=data)
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, replay.state_dict()[k]), k


def test_many_merge_entries_are_solved_as_dense_blocks(monkeypatch):
    """No descriptor-merge fallback any more: beyond MAX_MERGE_ENTRIES the triple view refuses
    (naming the dense one) and data_merge_blocks gives the same coefficients as a matrix (the
    plans store wide groups densely: tests/test_prune_dense_merge.py)."""
    import simprune.pruning.merge as merge_mod

    st, _ = _cov(500, 12, 12, 4)
    ((want, want_sh),) = data_merges([(_G(12), st, list(range(6)))])
    monkeypatch.setattr(merge_mod, "MAX_MERGE_ENTRIES", 20)  # 6 kept x 6 removed = 36
    with pytest.raises(ValueError, match="36 coefficients.*data_merge_blocks"):
        data_merges([(_G(12), st, list(range(6)))])
    ((blocks, shifts),) = merge_mod.data_merge_blocks([(_G(12), st, list(range(6)))])
    assert [b.coef.shape for b in blocks] == [(6, 6)] and shifts == want_sh
    assert blocks[0].triples() == want


@pytest.mark.parametrize("kind", ["chain", "resblock"])
def test_layer_by_layer_data_merge_is_exact_on_duplicates(kind):
    """merge.sequential_data_merge_plans (the layer-by-layer variant of docs/results.md) refits a
    plan's merges group by group against the partly pruned model: exact on duplicates too, and the
    model it is given is left untouched."""
    from simprune.pruning.groups import build_dependency_graph
    from simprune.pruning.merge import sequential_data_merge_plans
    from simprune.pruning.plan import plan_groups

    model, x, expected = duplicate_model(kind)
    data = torch.randn(128, *x.shape[1:], dtype=x.dtype)
    model = _recalibrated(model, data)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    _, plan, _ = simprune.prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, merge=False, progress=False
    )
    before = copy.deepcopy(model.state_dict())
    groups = plan_groups(model, build_dependency_graph(model, x), plan.groups)
    sequential_data_merge_plans(model, groups, plan.groups, data, x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    pruned = simprune.apply_plan(model, plan, x)
    with torch.no_grad():
        torch.testing.assert_close(pruned(data), model(data), rtol=0, atol=1e-6)


def test_default_metric_with_data_falls_back_where_a_group_cannot_be_measured():
    """conv0 is read only in halves (chunk): no consumer input holds all of its channels, so the
    data cannot measure it. The default metric with data (activation) then falls back to gaussian
    for the whole cut with a warning naming the group; an explicit metric='activation' refuses."""
    from tests.test_prune_patterns import TwoBranches

    m = TwoBranches("chunk").eval()
    x, data = torch.randn(1, 3, 8, 8), torch.randn(64, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"group\(s\) \['conv0'\].*'gaussian' metric is used"):
        _, plan, _ = simprune.prune(m, x, pruning_ratio=0.3, calibration_data=data, progress=False)
    assert plan.settings["metric"] == "gaussian"
    with pytest.raises(ValueError, match="metric='activation' needs statistics of group 'conv0'"):
        simprune.prune(
            m, x, pruning_ratio=0.3, calibration_data=data, metric="activation", progress=False
        )
    # A model the data measures fully keeps the default: the activation metric.
    model, xm = small_cnn()
    _, plan, _ = simprune.prune(
        model, xm, pruning_ratio=0.3, calibration_data=torch.randn(64, *xm.shape[1:]),
        progress=False,
    )  # fmt: skip
    assert plan.settings["metric"] == "activation"


def test_similarity_importance_default_with_data_scores_unmeasured_groups_by_gaussian():
    """SimilarityImportance(data=...) defaults to the activation metric; a group the data cannot
    measure (conv0, read in halves) is scored by the gaussian metric with a warning instead of
    failing the step; metric='activation' given explicitly refuses."""
    import torch_pruning as tp

    from simprune.integrations.torch_pruning import SimilarityImportance
    from tests.test_prune_patterns import TwoBranches

    x, data = torch.randn(1, 3, 8, 8), torch.randn(64, 3, 8, 8)
    m = TwoBranches("chunk").eval()
    imp = SimilarityImportance(data=data)
    assert imp.metric == "activation"
    pr = tp.pruner.MetaPruner(m, x, imp, pruning_ratio=0.3, ignored_layers=[m.fc])
    with pytest.warns(UserWarning, match=r"group\(s\) \['conv0'\].*'gaussian' metric"):
        pr.step()
    assert m.conv0.out_channels < 32
    m = TwoBranches("chunk").eval()
    imp = SimilarityImportance(metric="activation", data=data)
    pr = tp.pruner.MetaPruner(m, x, imp, pruning_ratio=0.3, ignored_layers=[m.fc])
    with pytest.raises(ValueError, match="group 'conv0'.*needs statistics"):
        pr.step()
