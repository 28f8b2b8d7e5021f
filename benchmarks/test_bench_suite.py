"""pytest-benchmark suites (small CPU sizes): ``pytest benchmarks --benchmark-only``.

Each benchmark group times simprune next to its peers on the same input (compare them with
``--benchmark-group-by=group``); the full-size, ratio-first tables come from
``python -m benchmarks.report``. The main test run (``pytest``, testpaths = tests) does not collect
this file. Results are checked for correctness (a benchmark of a wrong answer is void), never for
speed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from benchmarks.bench_linkage import d1k, test_linkage_1k  # noqa: F401  (re-exported suite)
from benchmarks.bench_llama import test_llama_plan_smoke  # noqa: F401  (re-exported suite)
from simprune import testing

pytest.importorskip("pytest_benchmark")


def _pedantic(benchmark, fn, rounds: int = 3):
    # Seconds-long calls: a fixed small number of rounds instead of pytest-benchmark's calibration.
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


# ---- distance: simprune vs torch.cdist vs scipy cdist -------------------------------------------


@pytest.fixture(scope="module")
def x1k() -> torch.Tensor:
    return torch.tensor(testing.channel_like(1024, 64, seed=0), dtype=torch.float32)


@pytest.mark.benchmark(group="distance 1024x64")
@pytest.mark.parametrize("impl", ["simprune", "torch.cdist", "scipy"])
def test_distance_1k(benchmark, x1k, impl):
    import simprune

    if impl == "simprune":
        out = benchmark(lambda: simprune.pairwise_distance(x1k))
    elif impl == "torch.cdist":
        out = benchmark(lambda: torch.cdist(x1k, x1k).square_())
    else:
        from scipy.spatial.distance import cdist

        xn = x1k.numpy()
        out = torch.from_numpy(benchmark(lambda: cdist(xn, xn, "sqeuclidean")))
    ref = simprune.pairwise_distance_ref(x1k, None, "sqeuclidean", False, torch.float64)
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-4)


# ---- whole model: simprune plan vs CUP-style scipy vs TP FPGMImportance (ResNet-18, 64x64) --------


@pytest.fixture(scope="module")
def resnet18():
    import torchvision

    from benchmarks.bench_model import _groups, _randomise_norms

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    _randomise_norms(model)
    x = torch.randn(1, 3, 64, 64)
    return model, x, [model.fc], _groups(model, x, [model.fc])


@pytest.mark.benchmark(group="model plan resnet18")
@pytest.mark.parametrize("impl", ["simprune_prune", "cup_style_scipy", "tp_fpgm_importance"])
def test_model_plan_resnet18(benchmark, resnet18, impl):
    from benchmarks.bench_model import _tp_parts, cup_style
    from benchmarks.bench_prune import PLAN_STAGES
    from simprune.pruning import prune

    model, x, ignored, groups = resnet18
    warnings.simplefilter("ignore")
    if impl == "simprune_prune":
        reports = []

        def plan():
            _, _, report = prune(
                model, x, macs_reduction=0.3, ignored_layers=ignored, progress=False
            )
            reports.append(report)

        _pedantic(benchmark, plan)
        # The whole prune() is timed; the plan stages alone are recorded next to it.
        benchmark.extra_info["plan_s"] = float(
            np.median([sum(r.timings[k] for k in PLAN_STAGES) for r in reports])
        )
        assert abs(reports[-1].macs_reduction - 0.3) <= 0.01
    elif impl == "cup_style_scipy":
        labels = _pedantic(benchmark, lambda: cup_style(groups, 0.3))
        assert [len(set(lab.tolist())) for lab in labels] == [
            max(1, int(np.ceil(0.7 * g.n_units))) for g in groups
        ]
    else:
        imp, _ = _tp_parts(model, x, ignored, 0.16)
        scores = _pedantic(benchmark, imp)
        assert len(scores) == len(groups)


# ---- pruned-model latency: ResNet-18 -30 % MACs, batch 1, 64x64 -----------------------------------


@pytest.fixture(scope="module")
def resnet18_pruned(resnet18):
    from simprune.pruning import prune

    model, x, ignored, _ = resnet18
    warnings.simplefilter("ignore")
    pruned, _, _ = prune(model, x, macs_reduction=0.3, round_to=8, progress=False)
    return model, pruned.eval(), x


@pytest.mark.benchmark(group="latency resnet18 64x64 b1")
@pytest.mark.parametrize("which", ["original", "pruned_-30%_round_to_8"])
def test_latency_resnet18(benchmark, resnet18_pruned, which):
    model, pruned, x = resnet18_pruned
    m = model if which == "original" else pruned

    def fwd():
        with torch.inference_mode():
            return m(x)

    out = benchmark(fwd)
    assert out.shape == (1, 1000) and bool(torch.isfinite(out).all())


# ---- very wide MLP stack (scaled down): simprune vs per-layer scipy -------------------------------


@pytest.fixture(scope="module")
def stack():
    from benchmarks.bench_wide import make_stack

    return make_stack(4, 128, 448, "cpu")


@pytest.mark.benchmark(group="wide 4x128->448")
@pytest.mark.parametrize("impl", ["simprune", "scipy"])
def test_wide_stack(benchmark, stack, impl):
    from benchmarks.bench_wide import scipy_cluster, simprune_cluster

    if impl == "simprune":
        labels = _pedantic(benchmark, lambda: simprune_cluster(stack, 0.3)[0])
        ref = scipy_cluster(stack, 0.3)
        assert all(testing.same_partition(a.numpy(), b) for a, b in zip(labels, ref, strict=True))
    else:
        labels = _pedantic(benchmark, lambda: scipy_cluster(stack, 0.3))
        assert all(len(set(lab.tolist())) == round(0.7 * 448) for lab in labels)
