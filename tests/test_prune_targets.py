"""MACs/params targets on torchvision CNNs, the analytic cost model cross-checked against
Torch-Pruning's counter, and the rewrite round-trips (forward, state_dict, plan replay)."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision

from simprune.pruning import CostModel, PruningPlan, apply_plan, prune
from tests._helpers import load_through_bytes, state_dicts_equal

TARGET = 0.3
MODELS = ["resnet18", "resnet50", "mobilenet_v2"]


@pytest.fixture(scope="module", params=MODELS)
def pruned(request):
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)().eval()
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, macs_reduction=TARGET, progress=False)
    return request.param, model, x, result


def test_macs_target_within_one_percent(pruned):
    name, model, x, (pm, plan, report) = pruned
    assert abs(report.macs_reduction - TARGET) <= 0.01, (name, report.macs_reduction)
    # Torch-Pruning's own counter (which also counts activations and pooling) agrees.
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    macs1, params1 = tp.utils.count_ops_and_params(pm, x)
    assert abs((1 - macs1 / macs0) - TARGET) <= 0.01, (name, 1 - macs1 / macs0)
    assert (report.params_before, report.params_after) == (params0, params1)


def test_cost_model_matches_torch_pruning_per_layer(pruned):
    name, model, x, (pm, _, report) = pruned
    cm = CostModel(model, x)
    for m in (model, pm):
        _, _, layer_flops, _ = tp.utils.count_ops_and_params(m, x, layer_wise=True)
        ours = cm.per_layer(m)
        by_name = {n: mod for n, mod in m.named_modules()}
        assert ours, name
        for layer, (macs, _) in ours.items():
            theirs = layer_flops[by_name[layer]]
            assert macs == pytest.approx(theirs, rel=1e-9), (name, layer)
    assert cm.measure(pm)[0] == pytest.approx(report.macs_after, rel=1e-12)
    assert cm.macs0 == pytest.approx(report.macs_before, rel=1e-12)


def test_prediction_of_the_bisection_is_exact(pruned):
    # The bisection predicts the cost from per-group channel counts; the rewrite must land there.
    _, model, x, (pm, plan, report) = pruned
    from simprune.pruning.groups import build_dependency_graph, collect_groups

    m = model
    dg = build_dependency_graph(m, x)
    groups, _ = collect_groups(dg, m)
    cm = CostModel(m, x)
    cm.bind(groups)
    removed = {gp.root: gp.n_channels - len(gp.kept) for gp in plan.groups}
    r = [removed.get(g.root_name, 0) for g in groups]
    assert cm.cost(r)[0] == pytest.approx(report.macs_after, rel=1e-9)


def test_forward_state_dict_and_replay(pruned):
    name, model, x, (pm, plan, _) = pruned
    assert pm(x).shape == model(x).shape
    replay = apply_plan(model, PruningPlan.from_json(plan.to_json()))
    assert state_dicts_equal(pm, replay)
    load_through_bytes(replay, pm)
    torch.testing.assert_close(replay(x), pm(x), rtol=0, atol=0)


def test_params_target_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    pm, _, report = prune(model, x, params_reduction=0.25, progress=False)
    assert abs(report.params_reduction - 0.25) <= 0.01
    assert sum(p.numel() for p in pm.parameters()) == report.params_after
