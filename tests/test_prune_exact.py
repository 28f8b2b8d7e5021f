"""Exactness of the whole chain (metric.md section 4): models whose channels are built as exact
duplicates, pruned with merge on, compute the same function; the duplicates are exactly the channels
removed. merge=False on the same models is *not* exact (so the tests can fail)."""

from __future__ import annotations

import pytest
import torch

import simprune
from simprune.pruning import prune
from tests._helpers import DUPLICATE_MODELS, duplicate_model, n_prunable, removed_by_layer


def _setup(kind: str, device: str = "cpu"):
    """(model, input, expected removals, the pruning ratio that removes exactly the duplicates, the
    model's output) for a duplicate-channel model on ``device``."""
    model, x, expected = duplicate_model(kind)
    model, x = model.to(device), x.to(device)
    ratio = sum(len(v) for v in expected.values()) / n_prunable(model, x)
    with torch.no_grad():
        y0 = model(x)
    return model, x, expected, ratio, y0


@pytest.mark.parametrize(
    "device,backend",
    [
        ("cpu", "auto"),
        # The same chain with descriptors, distances and linkage on the GPU backends (auto).
        pytest.param("cuda", "auto", marks=pytest.mark.gpu),
        # backend="cpu" on a GPU model: the engine pass runs on the CPU kernels, the model stays
        # on the GPU.
        pytest.param("cuda", "cpu", marks=pytest.mark.gpu),
    ],
)
@pytest.mark.parametrize("kind", DUPLICATE_MODELS)
def test_duplicates_removed_and_output_unchanged(kind, device, backend):
    model, x, expected, ratio, y0 = _setup(kind, device)
    pruned, plan, report = prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, backend=backend, progress=False
    )
    assert removed_by_layer(plan, expected) == expected
    assert next(pruned.parameters()).device.type == device
    with torch.no_grad():
        y1 = pruned(x)
    assert y1.dtype == torch.float64
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
    # The duplicates really were removed from the layers.
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())
    assert report.params_after == n_params


@pytest.mark.parametrize("kind", DUPLICATE_MODELS)
def test_without_merge_the_output_changes(kind):
    model, x, expected, ratio, y0 = _setup(kind)
    pruned, plan, _ = prune(
        model, x, pruning_ratio=ratio, min_keep_ratio=0.0, merge=False, progress=False
    )
    assert removed_by_layer(plan, expected) == expected
    with torch.no_grad():
        y1 = pruned(x)
    assert (y1 - y0).abs().max() > 1e-3


def test_positive_multiple_linear_merges_exactly():
    # metric.md section 4: LS is exact for a Linear without BN whose row and bias are a positive
    # multiple of another's (ReLU(a z) = a ReLU(z)); "sum" is not.
    model, x, _ = duplicate_model("mlp")
    with torch.no_grad():
        model.fc1.weight[23] = 0.4 * model.fc1.weight[4]
        model.fc1.bias[23] = 0.4 * model.fc1.bias[4]
        y0 = model(x)
    # Only fc1's duplicates and the scaled copy are zero-distance-free; target 4 of fc1's channels
    # by ignoring fc2 and keeping the cut at those four near-zero heights.
    outs = {}
    for mode in ("ls", "sum"):
        pruned, plan, _ = prune(
            model, x, pruning_ratio=4 / 24, min_keep_ratio=0.0, merge=mode, metric="cosine",
            ignored_layers=[model.fc2], progress=False,
        )  # fmt: skip
        assert plan.groups[0].removed == [20, 21, 22, 23]
        with torch.no_grad():
            outs[mode] = pruned(x)
    torch.testing.assert_close(outs["ls"], y0, rtol=0, atol=1e-6)
    assert (outs["sum"] - y0).abs().max() > 1e-3


def test_exports():
    assert simprune.prune is prune
    assert simprune.PruningPlan is not None and simprune.apply_plan is not None
