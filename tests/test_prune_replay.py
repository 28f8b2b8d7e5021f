"""Independent oracles for the rewrite: the pruned model is rebuilt without simprune's ``execute``.

``prune`` and ``apply_plan`` share ``plan.execute`` (merge, then Torch-Pruning's prune functions), so
comparing the two only compares the rewrite with itself. Here the expected model comes from the plan
and the original weights alone:

* **By hand** (plain conv-BN-conv chain with a flatten into a Linear, a residual block, an MLP):
  metric.md section 4 / merge.py -- every consumer's column r += a * column j (original columns; a
  flatten-reached consumer owns a block of columns per channel) for each merge (j, r, a), then the
  producers' rows (weight, bias), the norms' entries (weight, bias, running statistics) and the
  consumers' columns are sliced to the kept channels. The group layout (which layer produces, which
  norm, which consumer reads each group) is written out per model, not taken from Torch-Pruning.
  prune()'s and apply_plan()'s models (with and without its verification, which would correct a
  wrong rewrite) must equal it (float64, 1e-12), and give its outputs. Plans come from prune() (ls,
  sum, no merge) and by hand (several merges into one channel, arbitrary and negative coefficients).
* **Functional, on torchvision models** (efficientnet_b0: depthwise, squeeze-excitation, residual
  streams; vit_b_16: the MLPs of two encoder blocks -- the two cheapest of the sweep). Removing
  channel j from every member of its group, after folding it into r (consumer column r += a *
  column j), is, for the model's function, the same as editing the *input of every consumer* (a
  Conv/Linear reading the group's channels) in the original model: x_j := a * x_r for a merged
  channel, x_j := 0 for one removed without merge. Why this is exact: a consumer is linear in its
  input, so sum_k W[:, k] x_k with x_j = a x_r is (W[:, r] + a W[:, j]) x_r + the kept columns, and
  a zero input channel contributes nothing (zero padding included); the removed channel's other
  members (its producers' rows, its BatchNorm entries, a depthwise conv, the SE gate that multiplies
  it) only compute values that, in the original, reach nothing but these consumer inputs
  (channel-wise ops keep channels apart, and groups whose channels reach the model output are never
  pruned). It would *not* hold where channels are mixed before a consumer (a LayerNorm over the
  channels, attention across them): those groups are left unpruned here (ignored layers, and the
  check that every consumer reads exactly the group's channels, in order, through a groups=1 layer).
  The consumers are the plan members of kind "consumer"; a missing or wrong one would make the
  outputs differ. Both prune()'s model (which its verification may correct) and apply_plan()'s
  without verification (the bare rewrite) must match.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from simprune.pruning import PruningPlan, apply_plan, prune
from tests._helpers import duplicate_model, randomise_bns

# Per model, each channel group: (producers (output rows), norms (entries), consumers (name, columns
# per channel)). A plan group is matched by its root, one of the producers.
LAYOUTS = {
    "chain": [
        (["conv1"], ["bn1"], [("conv2", 1)]),
        (["conv2"], ["bn2"], [("fc", 16)]),  # flatten of 10 x 4 x 4
    ],
    "resblock": [
        # The residual stream: stem and conv_b are added, conv_a and fc read the sum.
        (["stem", "conv_b"], ["bn0", "bn_b"], [("conv_a", 1), ("fc", 1)]),
        (["conv_a"], ["bn_a"], [("conv_b", 1)]),
    ],
    "mlp": [
        (["fc1"], [], [("fc2", 1)]),
        (["fc2"], [], [("fc3", 1)]),
    ],
}


def _layout_of(kind: str, root: str) -> tuple:
    (entry,) = [e for e in LAYOUTS[kind] if root in e[0]]
    return entry


def _cols(channels: list[int], block: int) -> list[int]:
    return [c * block + k for c in channels for k in range(block)]


@torch.no_grad()
def expected_model(model: nn.Module, plan: PruningPlan, kind: str) -> nn.Module:
    """The pruned model, rebuilt by hand from ``plan`` and ``model``'s weights."""
    sd0 = model.state_dict()
    new = {k: v.clone() for k, v in sd0.items()}
    rows: dict[str, list[int]] = {}
    cols: dict[str, list[int]] = {}
    for gp in plan.groups:
        producers, norms, consumers = _layout_of(kind, gp.root)
        for name in producers + norms:
            rows[name] = gp.kept
        for name, blk in consumers:
            w0, w = sd0[f"{name}.weight"], new[f"{name}.weight"]
            for j, r, a in gp.merges:
                w[:, r * blk : (r + 1) * blk] += a * w0[:, j * blk : (j + 1) * blk]
            cols[name] = _cols(gp.kept, blk)
    for name, keep in rows.items():
        for t in ("weight", "bias", "running_mean", "running_var"):
            if f"{name}.{t}" in new:
                new[f"{name}.{t}"] = new[f"{name}.{t}"][keep]
    for name, keep in cols.items():
        new[f"{name}.weight"] = new[f"{name}.weight"][:, keep]
    out = copy.deepcopy(model)
    for key, t in new.items():
        mod_name, _, attr = key.rpartition(".")
        mod = out.get_submodule(mod_name)
        if attr in mod._parameters:
            mod._parameters[attr] = nn.Parameter(t)
        else:
            mod._buffers[attr] = t
    return out


def _assert_same(model: nn.Module, want: nn.Module) -> None:
    a, b = model.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12, msg=k)


def _hand_plan(plan: PruningPlan) -> PruningPlan:
    """``plan``'s groups (members) with hand-chosen kept channels and merges: every third channel
    removed and merged, two of them into the same kept channel, with coefficients 0.7, -0.4, 1.3."""
    d = plan.to_dict()
    coefs = [0.7, -0.4, 1.3]
    for g in d["groups"]:
        n = g["n_channels"]
        removed = list(range(1, n, 3))
        kept = [c for c in range(n) if c not in removed]
        merges = [[j, kept[0] if k < 2 else j - 1, coefs[k % 3]] for k, j in enumerate(removed)]
        g["kept"], g["merges"] = kept, merges
    return PruningPlan.from_dict(d)


@pytest.mark.parametrize("merge", ["ls", "sum", False])
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_prune_and_replay_equal_the_hand_built_model(kind, merge):
    model, x, _ = duplicate_model(kind)
    # Deeper than the duplicates alone: real merges with coefficients other than 1.
    pm, plan, _ = prune(
        model, x, pruning_ratio=0.4, min_keep_ratio=0.0, merge=merge, progress=False
    )
    assert len(plan.groups) == len(LAYOUTS[kind])
    assert plan.n_removed > 0
    coefs = [a for gp in plan.groups for _, _, a in gp.merges]
    if merge == "ls":
        assert any(abs(a - 1.0) > 1e-3 for a in coefs)
    elif merge == "sum":
        assert coefs and all(a == 1.0 for a in coefs)
    else:
        assert not coefs
    want = expected_model(model, plan, kind)
    loaded = PruningPlan.from_json(plan.to_json())
    # prune()'s model, the verified replay and the bare rewrite (no verification to correct it).
    for got in (pm, apply_plan(model, loaded, x), apply_plan(model, loaded, x, verify=False)):
        _assert_same(got, want)
        with torch.no_grad():
            torch.testing.assert_close(got(x), want(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_replay_of_a_hand_made_plan_equals_the_hand_built_model(kind):
    model, x, _ = duplicate_model(kind)
    _, plan, _ = prune(model, x, pruning_ratio=0.4, min_keep_ratio=0.0, progress=False)
    hand = _hand_plan(plan)
    want = expected_model(model, hand, kind)
    for verify in (True, False):
        got = apply_plan(model, hand, x, verify=verify)
        _assert_same(got, want)
        with torch.no_grad():
            torch.testing.assert_close(got(x), want(x), rtol=0, atol=1e-12)
    # The oracle is not trivially satisfied: without the merges it differs.
    plain = expected_model(model, PruningPlan.from_dict(_no_merges(hand)), kind)
    with torch.no_grad():
        assert (plain(x) - want(x)).abs().max() > 1e-3


def _no_merges(plan: PruningPlan) -> dict:
    d = plan.to_dict()
    for g in d["groups"]:
        g["merges"] = []
    return d


# ---------------------------------------------------------------------------------------------------
# Functional oracle on torchvision models (module docstring).


def _torchvision(name: str) -> tuple[nn.Module, torch.Tensor, dict]:
    torch.manual_seed(0)
    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(image_size=32)
        nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zeroes it: output == 0
        x = torch.randn(2, 3, 32, 32)
        blocks = list(model.encoder.layers)
        ignored: list[nn.Module] = [model.conv_proj, model.heads.head]
        for k, b in enumerate(blocks):
            ignored += [b.self_attention, b.mlp[3]]  # attention and the residual stream (LayerNorm)
            if k not in (0, len(blocks) - 1):
                ignored.append(b.mlp[0])
        kwargs = {"pruning_ratio": 0.3, "ignored_layers": ignored}
    else:
        # Trained-looking BatchNorms: with torchvision's initialisation the activations of an
        # efficientnet vanish (~1e-13 at the output), which would make any comparison vacuous.
        model = randomise_bns(getattr(torchvision.models, name)(), 0)
        x = torch.randn(1, 3, 32, 32)
        kwargs = {"macs_reduction": 0.2}
    return model.double().eval(), x.double(), kwargs


def _edit_consumers(model: nn.Module, plan: PruningPlan) -> list:
    """Forward pre-hooks on every consumer of every pruned group: x_j := a * x_r (merged) or 0."""
    mods = dict(model.named_modules())
    edits: dict[str, list[tuple[list[int], list]]] = {}
    for gp in plan.groups:
        if not gp.removed:
            continue
        for name, kind in gp.members:
            if kind != "consumer":
                continue
            mod = mods[name]
            n_in = mod.in_channels if isinstance(mod, nn.modules.conv._ConvNd) else mod.in_features
            # The oracle's premise: the consumer reads exactly the group's channels, in order.
            assert n_in == gp.n_channels, (name, n_in, gp.n_channels)
            assert not isinstance(mod, nn.modules.conv._ConvNd) or mod.groups == 1, name
            edits.setdefault(name, []).append((gp.removed, gp.merges))

    def hook(mod: nn.Module, args: tuple, name: str) -> tuple:
        (x,) = args
        dim = 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1
        x = x.clone()
        for removed, merges in edits[name]:
            for j in removed:
                x.select(dim, j).zero_()
            for j, r, a in merges:  # r is kept: its input is the original one
                x.select(dim, j).copy_(a * x.select(dim, r))
        return (x,)

    return [
        mods[name].register_forward_pre_hook(lambda m, a, name=name: hook(m, a, name))
        for name in edits
    ]


@pytest.mark.parametrize(
    "name,merge,verify",
    [
        ("efficientnet_b0", "ls", True),
        ("efficientnet_b0", False, True),
        ("vit_b_16", "ls", True),
        # prune's verification of a vit_b_16 costs more than the rest of the test; the bare
        # rewrite is what apply_plan(verify=False) checks anyway.
        ("vit_b_16", False, False),
    ],
)
def test_torchvision_pruned_equals_original_with_consumer_inputs_edited(name, merge, verify):
    model, x, kwargs = _torchvision(name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters")
        pm, plan, _ = prune(model, x, merge=merge, verify=verify, progress=False, **kwargs)
        replay = apply_plan(model, plan, x, verify=False)  # the bare rewrite
    assert plan.n_removed > 0
    if merge:
        assert any(gp.merges for gp in plan.groups)
    with torch.no_grad():
        y1 = pm(x)
        y2 = replay(x)
        y0 = model(x)
        handles = _edit_consumers(model, plan)
        try:
            want = model(x)
        finally:
            for h in handles:
                h.remove()
    scale = float(want.abs().max())
    torch.testing.assert_close(y1, want, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(y2, want, rtol=0, atol=1e-9 * scale)
    # Pruning did change the function (so the equality above is not vacuous).
    assert (y1 - y0).abs().max() > 1e-6 * scale
