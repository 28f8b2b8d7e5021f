"""simprune.prune: arguments, guards, the caller's model, plans, reports, errors."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from simprune.pruning import PruningPlan, TracingError, apply_plan, prune
from tests._helpers import ResBlockNet, SmallCNN, duplicate_model, small_cnn, state_dicts_equal


def test_caller_model_untouched_unless_inplace():
    m, x = small_cnn()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pruned, plan, _ = prune(m, x, pruning_ratio=0.3, progress=False)
    assert plan.n_removed > 0
    assert pruned is not m
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    pruned2, _, _ = prune(m, x, pruning_ratio=0.3, inplace=True, progress=False)
    assert pruned2 is m
    assert m.c1.out_channels < 16 or m.c2.out_channels < 24
    assert state_dicts_equal(pruned, m)


def test_training_mode_is_kept():
    m, x = small_cnn()
    m.train()
    pruned, _, _ = prune(m, x, pruning_ratio=0.2, progress=False)
    assert pruned.training and m.training


def test_prunes_nothing_warns():
    m, x = small_cnn()
    with pytest.warns(UserWarning, match="removed no channel"):
        pruned, plan, _ = prune(m, x, pruning_ratio=0.0, progress=False)
    assert plan.n_removed == 0
    assert state_dicts_equal(pruned, m)


def test_no_layer_is_emptied():
    m, x = small_cnn()
    pruned, plan, _ = prune(m, x, pruning_ratio=0.9, min_keep_ratio=0.0, progress=False)
    for mod in pruned.modules():
        if isinstance(mod, nn.Conv2d):
            assert mod.out_channels >= 1 and mod.in_channels >= 1
    assert all(len(gp.kept) >= 1 for gp in plan.groups)
    pruned(x)


def test_min_keep_ratio_guard():
    m, x = small_cnn()
    _, plan, _ = prune(m, x, pruning_ratio=0.8, min_keep_ratio=0.5, cut="uniform", progress=False)
    for gp in plan.groups:
        assert len(gp.kept) >= math.ceil(0.5 * gp.n_channels / gp.ch_groups) * gp.ch_groups


def test_unreachable_target_raises_with_the_limit():
    m, x = small_cnn()
    with pytest.raises(ValueError, match="the most this model allows"):
        prune(m, x, macs_reduction=0.95, min_keep_ratio=0.5, progress=False)


def test_grouped_conv_prunes_same_positions_in_every_group():
    m, x = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4-channel steps may miss the ratio by more than 1 %
        pruned, plan, _ = prune(m, x, pruning_ratio=0.4, progress=False)
    g = next(gp for gp in plan.groups if any(name == "c3" for name, _ in gp.members))
    assert g.ch_groups == 4
    kept = sorted(g.kept)
    gs = g.n_channels // 4
    pos = [sorted(c - k * gs for c in kept if k * gs <= c < (k + 1) * gs) for k in range(4)]
    assert all(p == pos[0] for p in pos)
    assert pruned.c3.groups == 4
    pruned(x)


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to(round_to):
    m, x = small_cnn()
    _, plan, _ = prune(m, x, pruning_ratio=0.3, round_to=round_to, progress=False)
    for gp in plan.groups:
        assert len(gp.kept) % round_to == 0 or len(gp.kept) == gp.n_channels


def test_uniform_cut_keeps_the_same_ratio():
    m, x = duplicate_model("mlp")[:2]
    _, plan, _ = prune(m, x, pruning_ratio=0.25, cut="uniform", min_keep_ratio=0.0, progress=False)
    for gp in plan.groups:
        assert len(gp.kept) == gp.n_channels - round(0.25 * gp.n_channels)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_per_cluster": 2},
        {"representative": "medoid"},
        {"merge": "sum"},
        {"merge": False},
        {"metric": "wasserstein"},
        {"metric": "cosine", "method": "complete"},
        {"method": "ward"},
        {"params_reduction": 0.3, "pruning_ratio": None},
        {"macs_reduction": 0.3, "pruning_ratio": None, "cut": "uniform"},
    ],
)
def test_options_run_and_meet_targets(kwargs):
    m, x = small_cnn()
    args = {"pruning_ratio": 0.3, **kwargs}
    args = {k: v for k, v in args.items() if v is not None}
    pruned, plan, report = prune(m, x, progress=False, **args)
    assert pruned(x).shape == (1, 7)
    if "params_reduction" in args:
        assert abs(report.params_reduction - 0.3) <= 0.01 + 1e-9 or report.params_reduction > 0.25
    if "macs_reduction" in args:
        assert abs(report.macs_reduction - 0.3) < 0.05
    if kwargs.get("keep_per_cluster") == 2:
        assert plan.n_removed > 0


def test_bad_arguments():
    m, x = small_cnn()
    with pytest.raises(ValueError, match="exactly one target"):
        prune(m, x, progress=False)
    with pytest.raises(ValueError, match="exactly one target"):
        prune(m, x, macs_reduction=0.2, pruning_ratio=0.2, progress=False)
    with pytest.raises(ValueError, match="fraction"):
        prune(m, x, macs_reduction=1.5, progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        prune(m, x, pruning_ratio=0.2, metric="l7", progress=False)
    with pytest.raises(ValueError, match="unknown cut"):
        prune(m, x, pruning_ratio=0.2, cut="local", progress=False)
    with pytest.raises(ValueError, match="merge"):
        prune(m, x, pruning_ratio=0.2, merge="avg", progress=False)
    with pytest.raises(ValueError, match="ignored_layers"):
        prune(m, x, pruning_ratio=0.2, ignored_layers=[nn.Conv2d(1, 1, 1)], progress=False)


def test_nan_weights_name_the_layer():
    m, x = small_cnn()
    with torch.no_grad():
        m.c2.weight[3, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"c2\.weight.*non-finite"):
        prune(m, x, pruning_ratio=0.2, progress=False)


class NoGradInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.a(x)
        return self.b(y)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x).flatten(1))


def test_untraceable_models_name_the_problem():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TracingError, match=r"'a'.*not connected"):
        prune(NoGradInside(), x, pruning_ratio=0.2, progress=False)
    with pytest.raises(TracingError, match=r"while running 'head'"):
        prune(Broken(), x, pruning_ratio=0.2, progress=False)


def test_ignored_layers_keep_their_width():
    m, x = small_cnn()
    pruned, plan, _ = prune(m, x, pruning_ratio=0.4, ignored_layers=[m.c2], progress=False)
    assert pruned.c2.out_channels == 24
    assert pruned.c1.out_channels < 16


def test_output_channels_are_never_pruned():
    m, x = small_cnn()
    pruned, _, report = prune(m, x, pruning_ratio=0.5, progress=False)
    assert pruned.fc.out_features == 7
    assert any(root == "fc" for root, _ in report.skipped)


def test_plan_json_roundtrip_and_replay(tmp_path):
    m, x = small_cnn()
    pruned, plan, _ = prune(m, x, pruning_ratio=0.35, progress=False)
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["versions"]["simprune"] and data["versions"]["torch_pruning"]
    assert {g["root"] for g in data["groups"]} == {gp.root for gp in plan.groups}
    loaded = PruningPlan.load(path)
    assert loaded == plan
    replayed = apply_plan(m, loaded)
    assert state_dicts_equal(replayed, pruned)
    assert state_dicts_equal(apply_plan(m, path), pruned)
    torch.testing.assert_close(replayed(x), pruned(x), rtol=0, atol=0)
    # The pruned model saves and loads through a state_dict into the replayed architecture.
    fresh = apply_plan(m, plan)
    fresh.load_state_dict(pruned.state_dict())


def test_plan_on_another_architecture_names_the_first_mismatch():
    m, x = small_cnn()
    _, plan, _ = prune(m, x, pruning_ratio=0.3, progress=False)
    other = SmallCNN().eval()
    other.c2 = nn.Conv2d(16, 20, 3, padding=1, bias=False)
    other.b2 = nn.BatchNorm2d(20)
    other.c3 = nn.Conv2d(20, 24, 3, padding=1, groups=4, bias=False)
    with pytest.raises(ValueError, match=r"'c2' has 20 output channels, the plan expects 24"):
        apply_plan(other, plan)
    res = ResBlockNet().eval()
    with pytest.raises(ValueError, match="plan does not match|no layer named"):
        apply_plan(res, plan, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unsupported plan format"):
        PruningPlan.from_dict({**plan.to_dict(), "format": 99})


def test_report_table_and_dict():
    m, x = small_cnn()
    _, plan, report = prune(m, x, pruning_ratio=0.3, progress=False)
    d = report.to_dict()
    assert d["macs_before"] > d["macs_after"] > 0
    assert d["params_before"] > d["params_after"] > 0
    assert {g["root"] for g in d["groups"]} == {gp.root for gp in plan.groups}
    for g, gp in zip(d["groups"], plan.groups, strict=True):
        assert g["channels_before"] == gp.n_channels and g["channels_after"] == len(gp.kept)
    text = str(report)
    assert "MACs" in text and "params" in text and plan.groups[0].root in text
    json.dumps(d)


def test_progress_bar_writes_to_stderr(capsys):
    m, x = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune(m, x, pruning_ratio=0.2, progress=True)
    err = capsys.readouterr().err
    assert "descriptors" in err and "done" in err
