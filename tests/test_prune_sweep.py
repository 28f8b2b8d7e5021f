"""A torchvision sweep: prune, forward, state_dict round-trip and plan replay on random-init models.

resnet18, resnet50 and mobilenet_v2 are covered (with MACs targets) in test_prune_targets.py. To keep
CI time low the heaviest distance computations are trimmed, never skipped silently: wide_resnet50_2
uses the BN-only ``wasserstein`` descriptor, convnext_tiny leaves the 4x-wide MLPs of its last two
stages alone, and vit_b_16 prunes the MLPs of two of its encoder blocks (the others, attention and
the residual stream are in ignored_layers).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from simprune.pruning import PruningPlan, apply_plan, prune
from tests._helpers import TORCHVISION_SWEEP, load_through_bytes, state_dicts_equal


def _setup(name: str):
    torch.manual_seed(0)
    kwargs: dict = {"macs_reduction": 0.2}
    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(image_size=32).eval()
        x = torch.randn(1, 3, 32, 32)
        blocks = list(model.encoder.layers)
        keep = {0, len(blocks) - 1}
        ignored: list[nn.Module] = [model.conv_proj, model.heads.head]
        for k, b in enumerate(blocks):
            ignored += [b.self_attention, b.mlp[3]]
            if k not in keep:
                ignored.append(b.mlp[0])
        kwargs = {"pruning_ratio": 0.3, "ignored_layers": ignored}
        return model, x, kwargs
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 64, 64)
    if name == "wide_resnet50_2":
        kwargs["metric"] = "wasserstein"
    if name == "convnext_tiny":
        kwargs["ignored_layers"] = [
            blk.block[3] for stage in (model.features[5], model.features[7]) for blk in stage
        ]
    return model, x, kwargs


SWEEP = TORCHVISION_SWEEP


@pytest.mark.parametrize("name", SWEEP)
def test_torchvision_sweep(name):
    model, x, kwargs = _setup(name)
    with torch.no_grad():
        y0 = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        # Torch-Pruning notes the unwrapped parameters of convnext/vit (layer_scale, tokens).
        warnings.filterwarnings("ignore", message="Unwrapped parameters")
        pm, plan, report = prune(model, x, progress=False, **kwargs)
        replay = apply_plan(model, PruningPlan.from_json(plan.to_json()), x)
    assert plan.n_removed > 0, name
    if "macs_reduction" in kwargs:
        assert abs(report.macs_reduction - kwargs["macs_reduction"]) <= 0.01, name
    # The caller's model is untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        y1 = pm(x)
        assert y1.shape == y0.shape and bool(torch.isfinite(y1).all())
        # Replay reproduces the pruned weights exactly.
        assert state_dicts_equal(pm, replay), name
        # The state_dict saves and loads into the replayed architecture.
        fresh = load_through_bytes(apply_plan(model, plan, x), pm)
        torch.testing.assert_close(fresh(x), y1, rtol=0, atol=0)


def test_untraceable_torchvision_model_names_the_op():
    # ShuffleNetV2's channel shuffle (view -> transpose -> view) defeats Torch-Pruning's reshape
    # index mapping; the error must say so instead of failing deep inside Torch-Pruning.
    from simprune.pruning import TracingError

    model = torchvision.models.shufflenet_v2_x0_5().eval()
    with pytest.raises(TracingError, match=r"update_reshape_index_mapping, at a view/reshape"):
        prune(model, torch.randn(1, 3, 32, 32), macs_reduction=0.2, progress=False)
