"""The dense form of the data merge (simprune/pruning/merge.py ``DenseMerge``, ``GroupPlan.dense``):
a group whose merge has more than ``DENSE_MERGE_ENTRIES`` coefficients is stored as |R| x |K|
matrices (base64 in the plan JSON) and folded as a matrix product -- no fallback to the descriptor
merge at any width. Exact on duplicated / linearly dependent channels, the same weights as the
triples, bitwise replay through JSON, and the verification catches a wrong dense coefficient."""

from __future__ import annotations

import base64
import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import simprune
import simprune.pruning.merge as merge_mod
from simprune.pruning import PruningPlan
from simprune.pruning.api import _trace
from simprune.pruning.groups import build_dependency_graph
from simprune.pruning.merge import DenseMerge, data_merge_plans
from simprune.pruning.plan import GroupPlan, plan_groups
from simprune.pruning.stats import attach_stats, collect_stats
from simprune.pruning.verify import probe_positions, verify_rewrite
from tests._helpers import (
    DUPLICATE_MODELS,
    MERGE_KEPT,
    MERGE_REMOVED,
    duplicate_model,
    merge_net,
    merge_rewrite,
    n_prunable,
    removed_by_layer,
)

_LAYER_KINDS = ["concat_ab", "conv_transpose_depthwise", "conv1d", "grouped_consumer"]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _model(kind: str):
    if kind in DUPLICATE_MODELS:
        return duplicate_model(kind)
    from tests.test_prune_layers import layer_model

    return layer_model(kind)


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        assert torch.equal(v, sb[k]), k


# ---- dense vs triples on the layer kinds of the triple path ----------------------------------------
@pytest.mark.parametrize("kind", DUPLICATE_MODELS + _LAYER_KINDS)
def test_dense_form_equals_the_triples_and_replays_bitwise(kind, monkeypatch):
    """With DENSE_MERGE_ENTRIES = 0 every data merge is stored dense: the same kept channels, the
    same coefficients as the triples, the same pruned weights to rounding (flatten-reached Linear,
    grouped and depthwise consumers, ConvTranspose, residuals), the verification accepts it, and a
    replay of the saved-and-loaded plan is bitwise the pruned model."""
    model, x, expected = _model(kind)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    data = torch.randn(64, *x.shape[1:], dtype=x.dtype)
    model = _quiet(simprune.recalibrate_bn, copy.deepcopy(model), data)
    # The subject is the storage of the merge: the gaussian selection pins which duplicate goes.
    kw = dict(
        pruning_ratio=ratio, min_keep_ratio=0.0, calibration_data=data, metric="gaussian",
        progress=False,
    )  # fmt: skip
    p_trip, plan_trip, rep_trip = _quiet(simprune.prune, model, x, **kw)
    monkeypatch.setattr(merge_mod, "DENSE_MERGE_ENTRIES", 0)
    p_dense, plan_dense, rep_dense = _quiet(simprune.prune, model, x, **kw)
    assert not rep_trip.excluded and not rep_dense.excluded and not rep_dense.corrected
    assert removed_by_layer(plan_dense, expected) == expected
    n_dense = 0
    for gt, gd in zip(plan_trip.groups, plan_dense.groups, strict=True):
        assert gt.kept == gd.kept and gt.dense == [] and gd.shifts == gt.shifts
        if gd.dense:
            n_dense += 1
            assert gd.merges == []
            got = [t for b in gd.dense for t in b.triples()]
            assert [(j, r) for j, r, _ in got] == [(j, r) for j, r, _ in gt.merges]
            want = np.array([a for _, _, a in gt.merges])
            np.testing.assert_allclose([a for _, _, a in got], want, rtol=1e-6, atol=1e-12)
    assert n_dense >= 1
    sd = p_dense.state_dict()
    for k, v in p_trip.state_dict().items():
        torch.testing.assert_close(sd[k], v, rtol=1e-9, atol=1e-9, msg=k)
    # The JSON holds the matrices (base64), no triples; a replay from it is bitwise the same.
    d = json.loads(plan_dense.to_json())
    assert all(
        "dense" in g for g, gp in zip(d["groups"], plan_dense.groups, strict=True) if gp.dense
    )
    again = PruningPlan.from_json(plan_dense.to_json())
    assert [g.dense for g in again.groups] == [g.dense for g in plan_dense.groups]
    replay = _quiet(simprune.apply_plan, model, again, x, calibration_data=data)
    _same_state(p_dense, replay)


def test_small_plans_keep_the_triple_json():
    """Below the threshold the plan JSON is as before: no "dense" key, triples in "merges"."""
    model, x, expected = duplicate_model("chain")
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    data = torch.randn(64, *x.shape[1:], dtype=x.dtype)
    pruned, plan, _ = _quiet(
        simprune.prune, model, x, pruning_ratio=ratio, min_keep_ratio=0.0, calibration_data=data,
        progress=False,
    )  # fmt: skip
    d = json.loads(plan.to_json())
    assert not any("dense" in g for g in d["groups"])
    assert any(g["merges"] for g in d["groups"])
    assert list(d["groups"][0]) == ["root", "n_channels", "ch_groups", "members", "kept", "merges",
                                    "shifts"]  # fmt: skip
    assert d["format"] == 1  # readable by a simprune without dense blocks
    # An old plan (triples only, no "dense" key) loads and replays.
    old = PruningPlan.from_dict(d)
    assert all(g.dense == [] for g in old.groups)
    _same_state(pruned, _quiet(simprune.apply_plan, model, old, x, calibration_data=data))


# ---- a wide group: exact on linearly dependent channels -------------------------------------------
class _Wide(nn.Module):
    """x -> fc1 (C) -> fc2: the C hidden features are read by fc2 as they are, so removed features
    that are linear combinations (plus a constant) of kept ones are reconstructed exactly."""

    def __init__(self, d: int, c: int, kept: np.ndarray, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(d, c)
        self.fc2 = nn.Linear(c, 8)
        removed = np.setdiff1d(np.arange(c), kept)
        with torch.no_grad():
            w = torch.randn(c, d, generator=g)
            b = torch.randn(c, generator=g)
            mix = torch.randn(len(removed), len(kept), generator=g) / len(kept) ** 0.5
            kt, rt = torch.from_numpy(kept), torch.from_numpy(removed)
            w[rt] = mix @ w[kt]
            b[rt] = mix @ b[kt] + torch.randn(len(removed), generator=g)
            self.fc1.weight.copy_(w)
            self.fc1.bias.copy_(b)
            self.fc2.weight.copy_(torch.randn(8, c, generator=g) / c**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def _planned(model: nn.Module, x: torch.Tensor, kept: list[int], data: torch.Tensor, hook=None):
    """A plan keeping ``kept`` of fc1's group, with the data merge of ``data`` (the kept set chosen
    by hand: the similarity cut need not remove the dependent features). ``hook`` runs just before
    the merge is solved."""
    _, plan, _ = _quiet(
        simprune.prune, model, x, pruning_ratio=0.5, merge=False, verify=False, progress=False
    )
    (gp,) = [g for g in plan.groups if g.root == "fc1"]
    gp.kept, gp.merges, gp.shifts = kept, [], []
    plan.groups = [gp]
    groups = plan_groups(model, build_dependency_graph(model, x), plan.groups)
    attach_stats(groups, collect_stats(model, groups, data, x))
    if hook is not None:
        hook()
    data_merge_plans(groups, plan.groups)
    return plan


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_group_beyond_the_old_limit_gets_the_exact_data_merge(dtype, monkeypatch):
    """The old limit (MAX_MERGE_ENTRIES, here lowered to 100) no longer sends the group to the
    descriptor merge: 64 removed x 64 kept = 4096 coefficients go dense (threshold lowered to 1000)
    and the pruned model computes the original's function; float32 weights store float32
    coefficients, float64 ones float64."""
    monkeypatch.setattr(merge_mod, "MAX_MERGE_ENTRIES", 100)
    monkeypatch.setattr(merge_mod, "DENSE_MERGE_ENTRIES", 1000)
    c, d = 128, 96
    kept = np.sort(np.random.default_rng(0).permutation(c)[: c // 2])
    model = _Wide(d, c, kept).to(dtype).eval()
    x = torch.randn(1, d, dtype=dtype)
    data = torch.randn(512, d, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        plan = _planned(model, x, kept.tolist(), data)
    (gp,) = plan.groups
    assert gp.merges == [] and len(gp.dense) == 1
    (b,) = gp.dense
    assert b.coef.shape == (64, 64) and b.coef.dtype == np.dtype(str(dtype).removeprefix("torch."))
    assert b.kept.tolist() == kept.tolist() and b.removed.tolist() == gp.removed
    pruned = simprune.apply_plan(model, plan, x)  # verified against the real forward
    assert pruned.fc1.out_features == 64
    test = torch.randn(256, d, dtype=dtype)
    with torch.no_grad():
        y0, y1 = model(test), pruned(test)
    tol = 1e-6 if dtype == torch.float64 else 3e-5  # the ridge (1e-10 / 1e-6 of the variance)
    assert float((y1 - y0).abs().max()) <= tol * float(y0.abs().max())
    # Without the merge the removal is far off (the test can fail).
    gp.dense, gp.shifts = [], []
    off = simprune.apply_plan(model, plan, x)
    with torch.no_grad():
        assert float((off(test) - y0).abs().max()) > 1e-2 * float(y0.abs().max())


def test_a_real_wide_group_is_dense_by_default():
    """C = 1024, 384 kept, 640 removed (245,760 coefficients) with the default thresholds: dense,
    float64, exact, bitwise replay from the saved plan, and far smaller JSON than triples would be."""
    c, d = 1024, 512
    kept = np.sort(np.random.default_rng(1).permutation(c)[:384])
    model = _Wide(d, c, kept, seed=1).double().eval()
    x = torch.randn(1, d, dtype=torch.float64)
    data = torch.randn(1024, d, dtype=torch.float64)
    plan = _planned(model, x, kept.tolist(), data)
    (gp,) = plan.groups
    assert gp.merges == [] and gp.dense[0].coef.shape == (640, 384)
    pruned = simprune.apply_plan(model, plan, x)
    test = torch.randn(64, d, dtype=torch.float64)
    with torch.no_grad():
        y0, y1 = model(test), pruned(test)
    assert float((y1 - y0).abs().max()) <= 1e-6 * float(y0.abs().max())
    text = plan.to_json()
    assert len(text) < 1.4 * 8 * 640 * 384 + 50_000  # base64 of float64 + the ids
    again = simprune.apply_plan(model, PruningPlan.from_json(text), x)
    _same_state(pruned, again)
    # Format 2 (an older simprune refuses it by number, not by an unexpected key); format 1 with
    # dense blocks is malformed.
    d = json.loads(text)
    assert d["format"] == 2
    with pytest.raises(ValueError, match="format 1 cannot hold dense"):
        PruningPlan.from_dict({**d, "format": 1})


@pytest.mark.slow
def test_a_group_beyond_the_old_4m_limit_at_default_settings():
    """C = 4096 half pruned: 2048 x 2048 = 4.2M coefficients, over the old MAX_MERGE_ENTRIES (4M)
    that sent a group to the descriptor merge. Now dense float32 (float32 weights), exact, about
    22.5 MB of plan JSON (triples: ~200 MB), bitwise replay. ~10 s on one core."""
    c, d, nk = 4096, 3072, 2048
    kept = np.sort(np.random.default_rng(2).permutation(c)[:nk])
    model = _Wide(d, c, kept, seed=2).eval()
    x = torch.randn(1, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        plan = _planned(model, x, kept.tolist(), torch.randn(4096, d))
    (gp,) = plan.groups
    assert gp.merges == [] and gp.dense[0].coef.shape == (2048, 2048)
    assert gp.dense[0].coef.dtype == np.float32
    assert gp.dense[0].n_entries > merge_mod.MAX_MERGE_ENTRIES
    pruned = simprune.apply_plan(model, plan, x)
    test = torch.randn(64, d)
    with torch.no_grad():
        y0, y1 = model(test), pruned(test)
    assert float((y1 - y0).abs().max()) <= 3e-5 * float(y0.abs().max())
    text = plan.to_json()
    assert len(text) < 23_000_000
    _same_state(pruned, simprune.apply_plan(model, PruningPlan.from_json(text), x))


# ---- the JSON form -------------------------------------------------------------------------------
def test_dense_json_is_little_endian_base64_and_malformed_blocks_are_named():
    coef = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    dm = DenseMerge(np.array([1, 4]), np.array([0, 2, 3]), coef)
    j = dm.to_json()
    assert j["coef"]["dtype"] == "float32" and j["coef"]["shape"] == [2, 3]
    assert base64.b64decode(j["coef"]["base64"]) == coef.astype("<f4").tobytes()
    back = DenseMerge.from_json(json.loads(json.dumps(j)))
    assert back == dm and back.coef.dtype == np.float32
    assert [(a, b) for a, b, _ in dm.triples()] == [(1, 2), (1, 3), (4, 0), (4, 2), (4, 3)]
    bad = copy.deepcopy(j)
    bad["coef"]["shape"] = [3, 2]
    with pytest.raises(ValueError, match="shape"):
        DenseMerge.from_json(bad)
    bad = copy.deepcopy(j)
    bad["coef"]["base64"] = bad["coef"]["base64"][:-4]
    with pytest.raises(ValueError, match="bytes"):
        DenseMerge.from_json(bad)
    # In a plan group: checked like the triples.
    g = dict(
        root="c", n_channels=5, ch_groups=1, members=[["c", "producer"]], kept=[0, 2, 3],
        merges=[], shifts=[], dense=[j],
    )  # fmt: skip
    assert GroupPlan.from_dict(g).dense == [dm]
    for edit, match in (
        ({"kept": [0, 1, 2, 3]}, "not removed channels"),
        ({"merges": [[1, 0, 1.0]]}, "merged twice"),
        ({"kept": [0, 2]}, "not kept channels"),
    ):
        with pytest.raises(ValueError, match=match):
            GroupPlan.from_dict({**g, **edit})
    nan = DenseMerge(dm.removed, dm.kept, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="finite"):
        GroupPlan.from_dict({**g, "dense": [nan.to_json()]})


# ---- the verification ----------------------------------------------------------------------------
REMOVED, KEPT = MERGE_REMOVED, MERGE_KEPT
_rewrite = merge_rewrite


def _verify_setup():
    model, x, g = merge_net()
    coef = torch.randn(len(REMOVED), len(KEPT), dtype=torch.float64)
    shift = torch.randn(len(REMOVED), dtype=torch.float64)
    return model, x, g, coef, shift


def _dense_plan(g, coef: torch.Tensor, shift: torch.Tensor) -> GroupPlan:
    gp = GroupPlan(
        root="conv0", n_channels=6, ch_groups=1, members=[[m.name, m.kind] for m in g.members],
        kept=KEPT, shifts=[[j, float(shift[a])] for a, j in enumerate(REMOVED)],
        dense=[DenseMerge(np.array(REMOVED), np.array(KEPT), coef.numpy().copy())],
    )  # fmt: skip
    gp.check()
    return gp


def _verify(model, pruned, g, gp, x):
    return verify_rewrite(model, pruned, [g], [gp], probe_positions(model, x, [g]), x)


def test_verification_accepts_the_dense_form():
    model, x, g, coef, shift = _verify_setup()
    res = _verify(model, _rewrite(model, coef, shift), g, _dense_plan(g, coef, shift), x)
    assert res.failed == {} and res.corrected == []


@pytest.mark.parametrize("where", ["rewrite", "plan"])
def test_verification_catches_a_wrong_dense_coefficient(where):
    """One coefficient off -- in the rewrite, or corrupted in the plan -- and every consumer
    (conv1 through its kernel taps, fc through the channels-last flatten) is found to differ from
    the plan's expected weight and rebuilt."""
    model, x, g, coef, shift = _verify_setup()
    wrong = coef.clone()
    wrong[1, 2] += 0.5
    pruned = _rewrite(model, wrong if where == "rewrite" else coef, shift)
    gp = _dense_plan(g, coef if where == "rewrite" else wrong, shift)
    res = _verify(model, pruned, g, gp, x)
    assert res.failed == {}
    assert sorted(c for c, _ in res.corrected) == ["conv1", "fc"]
    right = _rewrite(model, coef if where == "rewrite" else wrong, shift)
    for name in ("conv1", "fc"):
        torch.testing.assert_close(
            pruned.get_submodule(name).weight, right.get_submodule(name).weight, rtol=0, atol=1e-12
        )


def test_the_forward_check_uses_the_dense_form():
    """A consumer the weight comparison leaves to the forward check (a grouped conv): a wrong dense
    coefficient in the rewrite fails the group there, the right one passes."""

    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv1 = nn.Conv2d(6, 4, 3, padding=1, groups=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv1(self.conv0(x))

    torch.manual_seed(0)
    model = Grouped().double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    _, groups, _, _ = _trace(model, model, x, [])
    (g,) = [g for g in groups if g.root_name == "conv0"]
    # Conv groups of conv1: channels 0-2 and 3-5; removed 1 and 4 each rebuilt within its own.
    dense = [
        DenseMerge(np.array([1]), np.array([0, 2]), np.array([[0.7, -0.3]])),
        DenseMerge(np.array([4]), np.array([3, 5]), np.array([[1.2, 0.4]])),
    ]
    gp = GroupPlan(
        root="conv0", n_channels=6, ch_groups=g.ch_groups,
        members=[[m.name, m.kind] for m in g.members], kept=KEPT, dense=dense,
    )  # fmt: skip
    gp.check()
    probe = probe_positions(model, x, [g])

    def pruned_with(blocks):
        p = copy.deepcopy(model)
        dg = build_dependency_graph(p, x)
        plan = copy.deepcopy(gp)
        plan.dense = blocks
        from simprune.pruning.plan import execute

        execute(p, dg, [plan])
        return p

    ok = verify_rewrite(model, pruned_with(dense), [g], [gp], probe, x)
    assert ok.failed == {}
    bad = [dense[0], DenseMerge(dense[1].removed, dense[1].kept, np.array([[1.2, 0.9]]))]
    res = verify_rewrite(model, pruned_with(bad), [g], [gp], probe, x)
    assert list(res.failed) == [0] and "computes something else" in res.failed[0]


# ---- the refusal ---------------------------------------------------------------------------------
def test_insufficient_memory_is_refused_with_needed_and_available_bytes(monkeypatch):
    import simprune._checks as checks

    monkeypatch.setattr(merge_mod, "DENSE_MERGE_ENTRIES", 10)
    c, d = 64, 48
    kept = np.arange(0, c, 2)
    model = _Wide(d, c, kept).double().eval()
    x = torch.randn(1, d, dtype=torch.float64)

    def little_memory():
        monkeypatch.setattr(checks, "available_host_bytes", lambda: 1000)

    data = torch.randn(200, d, dtype=torch.float64)
    with pytest.raises(
        torch.OutOfMemoryError, match=r"n = 64 needs 8192 bytes .*1,024 coeff.*only 1000 bytes"
    ):
        _planned(model, x, kept.tolist(), data, little_memory)


@pytest.mark.gpu
@pytest.mark.parametrize("dense", [False, True])
def test_cuda_model_gets_the_cpu_data_merge(dense, monkeypatch):
    """A model on the GPU: the statistics pass, the activation metric and the ridge solves run on
    the device (the memory check reads cuda.mem_get_info); the same kept channels as on the CPU and
    the same pruned function, with the triples and with the dense form."""
    if dense:
        monkeypatch.setattr(merge_mod, "DENSE_MERGE_ENTRIES", 0)
    model, x, expected = duplicate_model("resblock")
    data = torch.randn(128, *x.shape[1:], dtype=x.dtype)
    model = _quiet(simprune.recalibrate_bn, copy.deepcopy(model), data)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    kw = dict(pruning_ratio=ratio, min_keep_ratio=0.0, progress=False)
    p_cpu, plan_cpu, _ = _quiet(simprune.prune, model, x, calibration_data=data, **kw)
    gpu = copy.deepcopy(model).cuda()
    p_gpu, plan_gpu, rep = _quiet(simprune.prune, gpu, x.cuda(), calibration_data=data.cuda(), **kw)
    assert plan_gpu.settings["metric"] == "activation" and not rep.excluded
    assert [g.kept for g in plan_gpu.groups] == [g.kept for g in plan_cpu.groups]
    assert any(g.dense for g in plan_gpu.groups) == dense
    with torch.no_grad():
        torch.testing.assert_close(p_gpu(data.cuda()).cpu(), p_cpu(data), rtol=0, atol=1e-6)
