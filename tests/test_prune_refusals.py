"""Bad input to the pruning pipeline gets a clear error naming the problem, never a silent result.

Non-finite parameters and buffers, NaN calibration data, hand-edited plans (out-of-range, duplicate
or unsorted kept indices, unknown member kinds, merges that do not fit), and the CLI's file errors.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from simprune.pruning import PruningPlan, apply_plan, prune, recalibrate_bn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()


X = torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize(
    "where, what",
    [("1.running_var", float("nan")), ("1.running_mean", float("inf")), ("0.weight", float("nan"))],
)
def test_non_finite_parameters_and_buffers_are_refused(where, what):
    m = _net()
    t = m.get_submodule(where.rsplit(".", 1)[0])
    getattr(t, where.rsplit(".", 1)[1]).data.view(-1)[2] = what
    with pytest.raises(ValueError, match=rf"'{where}' has 1 non-finite value"):
        prune(m, X, pruning_ratio=0.25, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_calibration_data_is_refused_and_leaves_the_statistics(bad):
    m = _net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = torch.randn(16, 3, 8, 8)
    data[5, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="calibration batch 0 contains 1 NaN or Inf"):
        recalibrate_bn(m, data, batch_size=8)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="NaN or Inf"):
        prune(_net(), X, pruning_ratio=0.25, calibration_data=data, progress=False)


def test_non_finite_activations_are_refused():
    m = _net()
    m[0].weight.data.fill_(1e38)  # finite weights, but the conv output overflows to inf
    before = m[1].running_var.clone()
    with pytest.raises(ValueError, match=r"BatchNorm '1' saw non-finite activations"):
        recalibrate_bn(m, torch.randn(8, 3, 8, 8) * 100)
    assert torch.equal(m[1].running_var, before)


@pytest.fixture(scope="module")
def plan_dict():
    _, plan, _ = prune(_net(), X, pruning_ratio=0.5, progress=False)
    assert plan.groups and plan.groups[0].merges
    return plan.to_dict()


def _edit(d, **change):
    d = copy.deepcopy(d)
    d["groups"][0].update(change)
    return d


@pytest.mark.parametrize(
    "change, why",
    [
        ({"kept": [0, 99]}, r"kept channel\(s\) \[99\] out of range \[0, 8\)"),
        ({"kept": [-1, 3]}, r"out of range"),
        ({"kept": [1, 1, 3]}, r"kept lists channel\(s\) \[1\] more than once"),
        ({"kept": [3, 1]}, "sorted ascending"),
        ({"kept": []}, "non-empty"),
        ({"members": [["0", "producer"], ["1", "teleport"]]}, "kind in"),
        ({"merges": [[0, 0, 1.0]]}, "is not a removed channel"),
        ({"n_channels": 0}, "n_channels"),
        ({"ch_groups": 3}, "ch_groups must divide"),
    ],
)
def test_malformed_plans_are_refused(plan_dict, change, why):
    d = _edit(plan_dict, **change)
    with pytest.raises(ValueError, match=why):
        PruningPlan.from_dict(d)
    # a plan object built by hand is checked before any rewrite, too
    plan = PruningPlan.from_dict(plan_dict)
    for k, v in change.items():
        setattr(plan.groups[0], k, v)
    m = _net()
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=why):
        apply_plan(m, plan, inplace=True)
    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())


def test_merge_into_a_removed_channel_and_bad_coefficient(plan_dict):
    g = plan_dict["groups"][0]
    j, r, _ = g["merges"][0]
    other_removed = next(c for c in range(g["n_channels"]) if c not in g["kept"] and c != j)
    with pytest.raises(ValueError, match="is not kept"):
        PruningPlan.from_dict(_edit(plan_dict, merges=[[j, other_removed, 0.5]]))
    with pytest.raises(ValueError, match="finite number"):
        PruningPlan.from_dict(_edit(plan_dict, merges=[[j, r, float("nan")]]))
    with pytest.raises(ValueError, match="merged twice"):
        PruningPlan.from_dict(_edit(plan_dict, merges=[[j, r, 0.5], [j, r, 0.5]]))
    with pytest.raises(ValueError, match="malformed plan group 0"):
        PruningPlan.from_dict(_edit(plan_dict, colour="blue"))


def test_member_kind_mismatch_is_refused(plan_dict):
    """The architecture check compares every member's name and kind with the model's."""
    plan = PruningPlan.from_dict(plan_dict)
    name, kind = plan.groups[0].members[-1]
    plan.groups[0].members[-1] = [name, "norm" if kind != "norm" else "consumer"]
    with pytest.raises(ValueError, match=rf"member {len(plan.groups[0].members) - 1} of group"):
        apply_plan(_net(), plan)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "simprune", "prune", *args, "--no-plot", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_cli_file_errors(tmp_path):
    import torchvision

    sd = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), sd)
    (tmp_path / "junk.pt").write_text("not a torch file")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases = [
        (
            ["torchvision:resnet34", "--weights", str(sd)],
            r"does not fit torchvision:resnet34: \d+ missing",
        ),
        ([str(sd), "--arch", "torchvision:resnet34"], "does not fit torchvision:resnet34"),
        ([str(tmp_path / "junk.pt")], "cannot read MODEL"),
        ([str(tmp_path / "list.pt")], "holds a list, not a model or a state dict"),
        ([str(sd)], "holds a state dict; give its architecture with --arch"),
        (["torchvision:resnet18", "--weights", str(tmp_path / "nope.pt")], "does not exist"),
        (["torchvision:resnet18", "--input-shape", "1,a"], "bad input shape '1,a'"),
        (["torchvision:resnet18", "--input-shape", "1,3,0,8"], "bad input shape"),
    ]
    for args, why in cases:
        out = _cli(*args, "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert out.returncode != 0, args
        assert "Traceback" not in out.stderr, out.stderr
        import re

        assert re.search(why, out.stderr), (args, out.stderr[-500:])
    assert not (tmp_path / "o").exists()


def test_a_valid_plan_still_round_trips(plan_dict, tmp_path):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan_dict))
    a = apply_plan(_net(), str(p))
    b, _, _ = prune(_net(), X, pruning_ratio=0.5, progress=False)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
