"""BatchNorm recalibration (simprune.recalibrate_bn and prune(..., calibration_data=...))."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import simprune
from simprune.datasets import load_mnist5k
from simprune.zoo import evaluate, load_baseline


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3)
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(7.0)
    return net.eval()


def test_statistics_are_those_of_the_data():
    net = _net()
    x = torch.randn(48, 1, 10, 10)
    simprune.recalibrate_bn(net, x, batch_size=48)  # one batch: exactly the data's statistics
    with torch.no_grad():
        z1 = net[0](x)
        z2 = net[3](net[2]((z1 - z1.mean((0, 2, 3), keepdim=True)) / _std(z1) * 1.0))
    torch.testing.assert_close(net[1].running_mean, z1.mean((0, 2, 3)))
    torch.testing.assert_close(net[1].running_var, z1.var((0, 2, 3), unbiased=True))
    # The second BN sees the first one normalised with the batch statistics (train mode).
    torch.testing.assert_close(net[4].running_mean, z2.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert int(net[1].num_batches_tracked) == 1


def _std(z: torch.Tensor) -> torch.Tensor:
    bn = nn.BatchNorm2d(z.shape[1])  # gamma 1, beta 0: the biased batch std with eps
    return (z.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps).sqrt()


def test_batches_are_averaged_and_modes_restored():
    net = _net()
    net[4].momentum = 0.3
    net[1].train()  # a mixed-mode model: every module's own mode comes back
    x = torch.randn(64, 1, 10, 10)
    simprune.recalibrate_bn(net, x, batch_size=16)
    with torch.no_grad():
        z1 = net[0](x)
    # Equal batch sizes: the cumulative average of the batch means is the mean over all data.
    torch.testing.assert_close(net[1].running_mean, z1.mean((0, 2, 3)))
    assert int(net[1].num_batches_tracked) == 4
    assert net[4].momentum == 0.3 and net[1].momentum == 0.1
    assert [m.training for m in net] == [False, True, False, False, False]


def test_dataloader_lists_and_max_batches():
    net = _net()
    x = torch.randn(40, 1, 10, 10)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.zeros(40)), batch_size=10
    )
    a = copy.deepcopy(net)
    simprune.recalibrate_bn(a, loader)
    b = copy.deepcopy(net)
    simprune.recalibrate_bn(b, list(torch.split(x, 10)))
    for ma, mb in zip(a.modules(), b.modules(), strict=True):
        if isinstance(ma, nn.BatchNorm2d):
            assert torch.equal(ma.running_mean, mb.running_mean)
            assert torch.equal(ma.running_var, mb.running_var)
    c = copy.deepcopy(net)
    simprune.recalibrate_bn(c, loader, max_batches=2)
    assert int(c[1].num_batches_tracked) == 2


def test_bad_data_is_named_and_leaves_the_model_as_it_was():
    net = _net()
    with pytest.raises(ValueError, match="at least one sample"):
        simprune.recalibrate_bn(net, torch.zeros(0, 1, 10, 10))
    with pytest.raises(TypeError, match="Tensor of inputs or an iterable of batches.*dict"):
        simprune.recalibrate_bn(net, {"x": torch.zeros(2, 1, 10, 10)})
    with pytest.raises(TypeError, match="calibration batch must be a Tensor.*str"):
        simprune.recalibrate_bn(net, ["abc"])
    with pytest.raises(ValueError, match="yielded no batch"):
        simprune.recalibrate_bn(net, [])
    with pytest.raises(ValueError, match="batch_size"):
        simprune.recalibrate_bn(net, torch.zeros(4, 1, 10, 10), batch_size=0)
    # A failure after some batches (a wrong input shape) restores the old statistics.
    with pytest.raises(RuntimeError):
        simprune.recalibrate_bn(net, [torch.randn(4, 1, 10, 10), torch.randn(4, 2, 10, 10)])
    assert torch.all(net[1].running_mean == 5.0) and torch.all(net[4].running_var == 7.0)
    assert int(net[1].num_batches_tracked) == 0 and not net.training and net[1].momentum == 0.1


def test_no_batchnorm_warns():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert simprune.recalibrate_bn(net, torch.randn(4, 3)) is net


# ---- through prune(): real data ------------------------------------------------------------------------
def test_prune_with_calibration_data_recovers_accuracy():
    """The shipped MNIST baseline at -30 % MACs: statistics from 1000 training images lift the pruned
    network's test accuracy (36.4 % -> 97.2 % in docs/results.md) with no training; with
    merge="ls" the result is the same as pruning and calling recalibrate_bn afterwards, and the
    caller's model is untouched. The default with data (merge="data") does better still."""
    base = load_baseline()
    before = copy.deepcopy(base.state_dict())
    x_tr, _ = load_mnist5k("train")
    x_te, y_te = load_mnist5k("test")
    ex = x_tr[:1]
    plain, _, _ = simprune.prune(base, ex, macs_reduction=0.3, progress=False)
    recal, plan, report = simprune.prune(
        base, ex, macs_reduction=0.3, calibration_data=x_tr[:1000], merge="ls", metric="gaussian",
        progress=False,
    )  # fmt: skip
    data_g, plan_g, _ = simprune.prune(
        base, ex, macs_reduction=0.3, calibration_data=x_tr[:1000], metric="gaussian",
        progress=False,
    )  # fmt: skip
    assert plan_g.settings["merge"] == "data" and [g.kept for g in plan_g.groups] == [
        g.kept for g in plan.groups
    ]
    # The defaults with data: the activation metric and the data merge.
    data, plan_d, _ = simprune.prune(
        base, ex, macs_reduction=0.3, calibration_data=x_tr[:1000], progress=False
    )
    assert (plan_d.settings["metric"], plan_d.settings["merge"]) == ("activation", "data")
    assert evaluate(data_g, x_te, y_te) > evaluate(recal, x_te, y_te)
    assert evaluate(data, x_te, y_te) > evaluate(recal, x_te, y_te) + 0.01
    manual = simprune.recalibrate_bn(copy.deepcopy(plain), x_tr[:1000])
    for k, v in recal.state_dict().items():
        assert torch.equal(v, manual.state_dict()[k]), k
    replay = simprune.apply_plan(base, plan, calibration_data=x_tr[:1000])
    for k, v in recal.state_dict().items():
        assert torch.equal(v, replay.state_dict()[k]), k
    acc_plain, acc_recal = evaluate(plain, x_te, y_te), evaluate(recal, x_te, y_te)
    assert acc_recal > acc_plain + 0.3 and acc_recal >= 0.9, (acc_plain, acc_recal)
    assert not recal.training and "calibrate" in report.timings
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_prune_rejects_bad_calibration_data_before_any_work():
    with pytest.raises(TypeError, match="calibration data"):
        simprune.prune(_net(), torch.randn(1, 1, 10, 10), macs_reduction=0.3, calibration_data=3)
