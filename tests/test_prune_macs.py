"""simprune's MACs are Torch-Pruning's counter's (simprune/pruning/macs.py).

On the torchvision sweep and on timm models (random init), ``prune(model, x, macs_reduction=0.3)``
reports before/after MACs that agree with ``tp.utils.count_ops_and_params`` within 1 % (module by
module), and the reduction the counter measures is the one requested (within 1 %) wherever simprune
does not warn that it could not meet it. A model whose channel groups Torch-Pruning cannot build in
bounded memory (torchvision's swin_t) is refused with a TracingError, in a child process whose
address space is capped so that a regression cannot take the machine down.

``verify=False`` throughout: these tests are about the cost model, and prune's rewrite check
(tested in its own files) would triple their time.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from simprune.pruning import CostModel, TracingError, prune
from simprune.pruning.groups import build_dependency_graph, collect_groups
from tests._helpers import TORCHVISION_SWEEP

TARGET = 0.3
REPO = Path(__file__).resolve().parents[1]

TORCHVISION = TORCHVISION_SWEEP
TIMM = [
    "resnet50d",
    "regnety_008",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "convnext_nano",
    "ghostnet_100",
    "vit_tiny_patch16_224",
    "mixer_s16_224",
]

# Known failures outside the cost model (strict: a fix makes these tests fail until unmarked).
_BROKEN = {
    "timm:vit_tiny_patch16_224": "pruning the qkv group breaks timm Attention's reshape to "
    "(3, num_heads, head_dim): the pruned model does not run (groups.py; with verify=True, the "
    "default, the qkv groups are excluded and the target is met)",
}
_MISSES_TARGET = {
    "timm:ghostnet_100": "GhostModule's cat([x1, cheap(x1)]) makes root channels i and i + n/2 one "
    "unit; the group counts them as two, so ~0.56 is removed for 0.3 (groups.py; with verify=True, "
    "the default, the group is excluded and the target is met)",
}


def _cases(xfail: dict[str, str]) -> list:
    names = TORCHVISION + [f"timm:{n}" for n in TIMM]
    return [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=xfail[n])) if n in xfail else n
        for n in names
    ]


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name.startswith("timm:"):
        timm = pytest.importorskip("timm")
        n = name[5:]
        model = timm.create_model(n, pretrained=False).eval()
        size = 224 if n.startswith(("vit", "mixer")) else 64  # ViT/Mixer: their native size
        return model, torch.randn(1, 3, size, size)
    model = getattr(torchvision.models, name)().eval()
    # vit_b_16 at its native 224 x 224 (197 tokens): the case, attention products included.
    size = 224 if name == "vit_b_16" else 64
    return model, torch.randn(1, 3, size, size)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small inputs: a second intra-op thread only adds OpenMP spin-waits, which on a shared 2-core
    # machine made these tests several times slower (prune of densenet121: 2 s vs 4-38 s).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_RESULTS: dict[str, dict] = {}


def _result(name: str) -> dict:
    """Prune once per model; keep only numbers (not the models) for the tests that read them."""
    if name in _RESULTS:
        return _RESULTS[name]
    model, x = _model(name)
    out: dict = {"error": None}
    out["tp0"], out["params0"] = tp.utils.count_ops_and_params(model, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pm, _, report = prune(model, x, macs_reduction=TARGET, progress=False, verify=False)
        except (TracingError, ValueError) as e:  # a refusal with a clear error
            out["refused"] = str(e)
            _RESULTS[name] = out
            return out
        except Exception as e:  # noqa: BLE001 - recorded; the tests fail on it
            out["error"] = f"prune: {type(e).__name__}: {e}"
            _RESULTS[name] = out
            return out
    out["warnings"] = [str(w.message) for w in caught if "met only" in str(w.message)]
    out["report"] = (report.macs_before, report.macs_after, report.params_before)
    out["report_params_after"] = report.params_after
    try:  # the counter runs the pruned model
        tp1, out["params1"], layer_flops, _ = tp.utils.count_ops_and_params(pm, x, layer_wise=True)
    except Exception as e:  # noqa: BLE001
        out["error"] = f"forward of the pruned model: {type(e).__name__}: {e}"
        _RESULTS[name] = out
        return out
    out["tp1"] = tp1
    # Module by module: every module the counter counts, at the pruned widths.
    by_name = dict(pm.named_modules())
    ours = CostModel(model, x).per_layer(pm)
    out["modules"] = len(ours)
    out["module_mismatch"] = [
        (n, m, layer_flops[by_name[n]])
        for n, (m, _) in ours.items()
        if layer_flops[by_name[n]] is None or abs(m - layer_flops[by_name[n]]) > 1e-6 * m
    ][:5]
    _RESULTS[name] = out
    return out


@pytest.mark.parametrize("name", _cases(_BROKEN))
def test_report_agrees_with_torch_pruning_counter(name):
    r = _result(name)
    assert r["error"] is None, (name, r["error"])
    if "refused" in r:
        assert len(r["refused"]) > 40, (name, r["refused"])
        return
    before, after, params0 = r["report"]
    assert before == pytest.approx(r["tp0"], rel=0.01), name
    assert after == pytest.approx(r["tp1"], rel=0.01), name
    assert (params0, r["report_params_after"]) == (r["params0"], r["params1"]), name
    assert r["modules"] > 0 and not r["module_mismatch"], (name, r["module_mismatch"])


@pytest.mark.parametrize("name", _cases({**_BROKEN, **_MISSES_TARGET}))
def test_target_is_met_in_the_counters_terms(name):
    r = _result(name)
    assert r["error"] is None, (name, r["error"])
    if "refused" in r or r["warnings"]:
        return  # refused, or simprune said how far it got
    reached = 1.0 - r["tp1"] / r["tp0"]
    assert abs(reached - TARGET) <= 0.01, (name, reached)


class _AttentionNet(nn.Module):
    """A residual block around nn.MultiheadAttention whose embedding width is a channel group."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        h = self.act(self.inp(x))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(a + h)).mean(-2 if self.attn.batch_first else 0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_cost_follows_its_embedding_width(batch_first):
    model = _AttentionNet(batch_first).eval()
    x = torch.randn(2, 7, 16) if batch_first else torch.randn(7, 2, 16)
    dg = build_dependency_graph(model, x)
    groups, _ = collect_groups(dg, model)
    assert [g.root_name for g in groups] == ["inp"]  # inp -> attn (embed dim) -> norm -> out
    cm = CostModel(model, x)
    cm.bind(groups)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    assert (cm.macs0, cm.params0) == (macs0, params0)
    pm, plan, report = prune(
        model, x, pruning_ratio=0.25, cut="uniform", progress=False, verify=False
    )
    assert pm.attn.embed_dim == 24
    macs1, params1 = tp.utils.count_ops_and_params(pm, x)
    removed = [g.n_channels - len(gp.kept) for g, gp in zip(groups, plan.groups, strict=True)]
    # the bisection's prediction, the report and the counter agree exactly
    assert cm.cost(removed) == pytest.approx((macs1, params1), rel=1e-12)
    assert (report.macs_after, report.params_after) == pytest.approx((macs1, params1), rel=1e-12)


def test_counter_conventions_batch_reuse_and_flatten():
    # A batch of 3 (MACs per sample, a Linear's bias counted once per call), one ReLU module called
    # at two widths, and a flatten into a Linear (9 inputs per channel: Torch-Pruning's reshape
    # index mapping, which the memory guard must let through).
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(3)
            self.fc = nn.Linear(16 * 9, 5)

        def forward(self, x):
            x = self.relu(self.c2(self.relu(self.c1(x))))
            return self.fc(self.pool(x).flatten(1))

    model = Net().eval()
    x = torch.randn(3, 3, 12, 12)
    cm = CostModel(model, x)
    macs, params, layer_flops, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    assert (cm.macs0, cm.params0) == (macs, params)
    assert cm.per_layer(model)["relu"][0] == layer_flops[model.relu] / 3
    pm, _, report = prune(model, x, pruning_ratio=0.5, cut="uniform", progress=False, verify=False)
    macs1, params1, layer_flops1, _ = tp.utils.count_ops_and_params(pm, x, layer_wise=True)
    assert pm.c1.out_channels < 8 and pm.c2.out_channels < 16
    assert pm.fc.in_features == 9 * pm.c2.out_channels
    assert (report.macs_after, report.params_after) == pytest.approx((macs1, params1), rel=1e-12)
    assert cm.per_layer(pm)["relu"][0] == pytest.approx(layer_flops1[pm.relu] / 3, rel=1e-12)


_SWIN = """
import resource, time, warnings
import torch, torchvision
from simprune.pruning import TracingError, prune
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
model = torchvision.models.swin_t().eval()
t = time.perf_counter()
try:
    prune(model, torch.randn(1, 3, 224, 224), macs_reduction=0.3, progress=False, verify=False)
    print("RESULT pruned")
except TracingError as e:
    print("RESULT TracingError:", e)
print("SECONDS", time.perf_counter() - t)
print("MAXRSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _cap_address_space() -> None:
    cap = 8 << 30  # the child dies of MemoryError here, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_swin_t_is_refused_in_bounded_time_and_memory():
    # Torch-Pruning's index propagation through swin_t's window reshapes grows 32x per lap (the
    # process passed 24 GB before this guard); simprune must refuse it early and cheaply.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _SWIN],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
        preexec_fn=_cap_address_space,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["RESULT"].startswith("TracingError:"), lines["RESULT"]
    assert "runs away at a reshape near features." in lines["RESULT"]
    assert float(lines["SECONDS"]) < 120
    assert float(lines["MAXRSS_MB"]) < 4000
