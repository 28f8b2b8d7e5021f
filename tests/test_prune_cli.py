"""The ``simprune prune`` subcommand: model sources, outputs, the matplotlib-absent message."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torchvision

from simprune.cli import main
from simprune.pruning import PruningPlan, apply_plan
from tests._helpers import state_dicts_equal


def _run(tmp_path, *args):
    out = tmp_path / "out"
    rc = main(["prune", *args, "--input-shape", "1,3,32,32", "--out", str(out), "--no-progress"])
    return rc, out


def test_cli_torchvision_writes_model_plan_report_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, out = _run(tmp_path, "torchvision:resnet18", "--macs-reduction", "0.25")
    assert rc == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "layer1.0.conv1" in text and "dendrogram: group" in text
    png = (out / "pruning.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = json.loads((out / "report.json").read_text())
    assert abs(report["macs_reduction"] - 0.25) <= 0.01
    plan = PruningPlan.load(out / "plan.json")
    model = torch.load(out / "pruned_model.pt", weights_only=False)
    x = torch.randn(1, 3, 32, 32)
    assert model(x).shape == (1, 1000)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    assert plan.n_removed > 0


def test_cli_state_dict_with_arch_and_replay(tmp_path):
    torch.manual_seed(0)
    src = torchvision.models.mobilenet_v3_small().eval()
    sd_path = tmp_path / "sd.pt"
    torch.save(src.state_dict(), sd_path)
    rc, out = _run(
        tmp_path, str(sd_path), "--arch", "torchvision:mobilenet_v3_small", "--no-plot",
        "--pruning-ratio", "0.2",
    )  # fmt: skip
    assert rc == 0 and not (out / "pruning.png").exists()
    pruned = torch.load(out / "pruned_model.pt", weights_only=False)
    replay = apply_plan(src, PruningPlan.load(out / "plan.json"))
    assert state_dicts_equal(pruned, replay)


def test_cli_whole_model_file(tmp_path):
    m = torchvision.models.resnet18().eval()
    path = tmp_path / "m.pt"
    torch.save(m, path)
    rc, out = _run(tmp_path, str(path), "--no-plot", "--params-reduction", "0.2")
    assert rc == 0 and (out / "plan.json").exists()


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="state dict.*--arch"):
        sd = tmp_path / "sd.pt"
        torch.save(torchvision.models.resnet18().state_dict(), sd)
        _run(tmp_path, str(sd), "--no-plot")
    with pytest.raises(SystemExit, match="neither torchvision:NAME nor an existing file"):
        _run(tmp_path, str(tmp_path / "missing.pt"))
    with pytest.raises(SystemExit, match="no model named"):
        _run(tmp_path, "torchvision:resnet9000", "--no-plot")
    rc, _ = _run(
        tmp_path, "torchvision:resnet18", "--no-plot", "--macs-reduction", "0.9",
        "--min-keep-ratio", "0.5",
    )  # fmt: skip
    assert rc == 2 and "cannot reach" in capsys.readouterr().err


def test_cli_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc, _ = _run(tmp_path, "torchvision:resnet18")
    assert rc == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_cli_calibration_data(tmp_path, capsys):
    data = tmp_path / "calib.pt"
    x = torch.randn(16, 3, 32, 32)
    torch.save(x, data)
    rc, out = _run(tmp_path, "torchvision:resnet18", "--no-plot", "--calibration-data", str(data))
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert "calibrate" in report["timings"]
    model = torch.load(out / "pruned_model.pt", weights_only=False)
    # The stem's BatchNorm now holds the statistics of these inputs (its conv is not pruned away).
    with torch.no_grad():
        z = model.conv1(x)
    torch.testing.assert_close(model.bn1.running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.save({"x": x}, data)
    rc, _ = _run(tmp_path, "torchvision:resnet18", "--no-plot", "--calibration-data", str(data))
    assert (
        rc == 2 and "must be a torch.save'd Tensor of inputs, got dict" in capsys.readouterr().err
    )
    rc, _ = _run(tmp_path, "torchvision:resnet18", "--no-plot", "--calibration-data", "nope.pt")
    assert rc == 2 and "cannot read --calibration-data nope.pt" in capsys.readouterr().err
