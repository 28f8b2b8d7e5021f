"""The MNIST pruning demo and the ablation runner (simprune.demo)."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from torch import nn

from simprune import apply_plan, demo
from simprune.pruning import PruningPlan, prune
from simprune.pruning.groups import build_dependency_graph, group_at
from simprune.pruning.macs import CostModel
from simprune.zoo import load_baseline
from tests._helpers import layer_widths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    return demo.Data()


@pytest.fixture(scope="module")
def base():
    return load_baseline()


@pytest.fixture(scope="module")
def sim_plans(base, data):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for level in (0.3, 0.5):
            out[level] = prune(base, data.example, macs_reduction=level, progress=False)
    return out


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_demo_similarity_models_hit_their_macs_target(base, data, sim_plans, level):
    pruned, plan, report = sim_plans[level]
    cm = CostModel(base, data.example)
    macs1, _ = cm.measure(pruned)
    assert abs((1 - macs1 / cm.macs0) - level) <= 0.01
    assert abs(report.macs_reduction - level) <= 0.01
    assert plan.n_removed > 0


@pytest.mark.parametrize("criterion", demo.PEER_CRITERIA)
def test_peer_selection_has_identical_widths_and_macs(base, data, sim_plans, criterion):
    pruned, plan, _ = sim_plans[0.5]
    pp = demo.peer_plan(base, plan, criterion, data.example, seed=3)
    assert [len(g.kept) for g in pp.groups] == [len(g.kept) for g in plan.groups]
    assert all(not g.merges for g in pp.groups)
    peer = apply_plan(base, pp, data.example)
    assert layer_widths(peer) == layer_widths(pruned)
    cm = CostModel(base, data.example)
    assert cm.measure(peer) == cm.measure(pruned)
    out = peer(data.x_test[:4])
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    # A different selection than similarity's, at least somewhere (the peers are not no-ops).
    assert any(a.kept != b.kept for a, b in zip(pp.groups, plan.groups, strict=True))
    # JSON round trip replays the same model.
    again = apply_plan(base, PruningPlan.from_json(pp.to_json()), data.example)
    for (n, p), (_, q) in zip(peer.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_peer_scores_rank_as_documented(base, data, sim_plans):
    """Kept channels score at least as high as removed ones, per criterion, in every group."""
    _, plan, _ = sim_plans[0.5]
    dg = build_dependency_graph(base, data.example)
    for criterion in ("l1", "bn_gamma", "fpgm"):
        pp = demo.peer_plan(base, plan, criterion, data.example)
        for k, gp in enumerate(pp.groups):
            grp = group_at(dg, base, gp.root, k)
            s = demo.peer_scores(grp, criterion, torch.Generator())
            if gp.removed:
                assert float(s[gp.kept].min()) >= float(s[gp.removed].max())
    # The scores themselves, on the stem group (conv1 + bn1 + the residual stream's producers).
    grp = group_at(dg, base, plan.groups[0].root, 0)
    ref = torch.zeros(grp.n_channels, dtype=torch.float64)
    for m in grp.producers():
        w = m.module.weight.detach().double().flatten(1)
        ref[m.root_idxs] += w.abs().sum(1)[m.idxs]
    torch.testing.assert_close(demo.peer_scores(grp, "l1", torch.Generator()), ref)


def test_random_criterion_follows_its_seed(base, data, sim_plans):
    _, plan, _ = sim_plans[0.3]
    a = demo.peer_plan(base, plan, "random", data.example, seed=1)
    b = demo.peer_plan(base, plan, "random", data.example, seed=1)
    c = demo.peer_plan(base, plan, "random", data.example, seed=2)
    assert [g.kept for g in a.groups] == [g.kept for g in b.groups]
    assert [g.kept for g in a.groups] != [g.kept for g in c.groups]


def test_unknown_criterion_is_named(base, data, sim_plans):
    with pytest.raises(ValueError, match="unknown peer criterion 'l3'"):
        demo.peer_plan(base, sim_plans[0.3][1], "l3", data.example)
    with pytest.raises(ValueError, match="unknown criterion 'nope'"):
        demo.prune_config(base, data, demo.RunConfig("nope"))


def test_recalibrate_bn_sets_the_statistics_of_the_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    model[1].running_mean.fill_(5.0)
    model.eval()
    x = torch.randn(40, 1, 8, 8)
    demo.recalibrate_bn(model, x, batch_size=40)
    with torch.no_grad():
        z = model[0](x)
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, z.var((0, 2, 3), unbiased=True))
    assert model[1].momentum == 0.1 and not model.training  # restored


def test_random_shift_moves_images_within_the_border(data):
    x = data.x_train[:16]
    a = demo.random_shift(x, torch.Generator().manual_seed(7))
    b = demo.random_shift(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # seeded
    assert not torch.equal(a, x)  # it does move images
    # a shift only moves pixels: every shifted image is a window of the padded original
    pad = torch.nn.functional.pad(x, (2,) * 4, value=float(x.min()))
    for i in range(len(x)):
        assert any(
            torch.equal(a[i, 0], pad[i, 0, r : r + 28, c : c + 28])
            for r in range(5)
            for c in range(5)
        )


def test_finetune_is_reproducible_and_learns():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = torch.arange(64) % 10

    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))

    cfg = demo.FinetuneConfig(epochs=3, lr=0.05, batch_size=16)
    m1 = demo.finetune(make(), x, y, seed=5, config=cfg)
    m2 = demo.finetune(make(), x, y, seed=5, config=cfg)
    m3 = demo.finetune(make(), x, y, seed=6, config=cfg)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(m1.parameters(), m3.parameters(), strict=True))
    assert not m1.training


def test_tp_global_reaches_the_macs(base, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, red = demo.tp_global_prune(base, data.example, "tp_l1", 0.3, iters=12)
    cm = CostModel(base, data.example)
    assert abs(red - 0.3) <= 0.01
    assert red == pytest.approx(1 - cm.measure(m)[0] / cm.macs0)


def test_reduced_demo_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = demo.run_demo(
        tmp_path,
        macs=(0.3,),
        criteria=("sim_gaussian", "random"),
        finetune_images=64,
        progress=False,
    )
    out = capsys.readouterr().out
    assert "simprune gaussian (+merge)" in out and "random" in out and "unpruned baseline" in out
    assert len(rows) == 2
    assert rows[0]["macs_after"] == rows[1]["macs_after"]  # equal MACs by construction
    assert abs(rows[0]["macs_reduction"] - 0.3) <= 0.01
    for r in rows:
        assert 0.0 <= r["acc_pruned"] <= 1.0 and 0.0 <= r["acc_ft"] <= 1.0
    png = tmp_path / "accuracy_vs_macs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["criterion"] for r in saved["rows"]] == ["sim_gaussian", "random"]
    # The saved plan + state dict rebuild the fine-tuned model.
    plan = PruningPlan.load(tmp_path / "sim_gaussian_macs30.plan.json")
    rebuilt = apply_plan(load_baseline(), plan)
    rebuilt.load_state_dict(torch.load(tmp_path / "sim_gaussian_macs30.finetuned.pt"))
    rebuilt.eval()
    acc = demo.evaluate(rebuilt, *demo.load_mnist5k("test"))
    assert acc == pytest.approx(rows[0]["acc_ft"])


def test_cli_demo_parses_and_engine_flag_is_kept():
    from simprune.cli import build_parser

    a = build_parser().parse_args(["demo"])
    assert not a.engine and a.macs == [0.3, 0.5] and a.finetune_images == 0 and a.threads == 1
    b = build_parser().parse_args(["demo", "--engine", "--max-layers", "2"])
    assert b.engine and b.max_layers == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--criteria", "bogus"])


def test_results_doc_lists_its_commands():
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        text = f.read()
    assert "python scripts/run_ablation.py run" in text
    assert "python scripts/run_ablation.py report" in text
    start = text.index("<!-- generated tables: start -->")
    assert "| simprune gaussian (+merge) |" in text[start:]
