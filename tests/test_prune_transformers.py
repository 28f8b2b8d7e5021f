"""Hugging Face transformers through simprune.prune (issue 16): MLP neurons of LLaMA, GPT-2 (Conv1D),
BERT, a Qwen2 grouped-query config and ViT; keyword inputs and output transforms; the bounded root
search; plan and CLI round trips. Small random-init configs (hidden 32, MLP 64, 2 layers)."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
from torch import nn

import simprune
from simprune.pruning import apply_plan, prune
from simprune.pruning.groups import build_dependency_graph, module_names
from simprune.pruning.plan import PruningPlan
from simprune.pruning.transformers import (
    check_mlp_roots,
    conv1d_to_linear,
    linear_to_conv1d,
    mlp_region,
    output_transform_of,
)

tf = pytest.importorskip("transformers")

VOCAB = 64
# Names of the MLP layers (producers and consumers) of each architecture; nothing else may change.
MLP = {
    "llama": r"\.mlp\.(gate|up|down)_proj\.",
    "qwen2": r"\.mlp\.(gate|up|down)_proj\.",
    "gpt2": r"\.mlp\.c_(fc|proj)\.",
    "bert": r"\.layer\.\d\.(intermediate|output)\.dense\.",
    "vit": r"\.layers?\.\d\.((intermediate|output)\.dense|mlp\.fc[12])\.",
}
ROOTS = {
    "llama": r"model\.layers\.\d\.mlp\.gate_proj",
    "qwen2": r"model\.layers\.\d\.mlp\.gate_proj",
    "gpt2": r"transformer\.h\.\d\.mlp\.c_fc",
    "bert": r"encoder\.layer\.\d\.intermediate\.dense",
    "vit": r"vit\.(encoder\.layer|layers)\.\d\.(intermediate\.dense|mlp\.fc1)",
}
OUTPUT = {"llama": "logits", "qwen2": "logits", "gpt2": "logits", "bert": None, "vit": "logits"}


def make(kind: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, 12))
    if kind == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
        )  # fmt: skip
        return tf.LlamaForCausalLM(cfg).eval(), ids
    if kind == "qwen2":  # grouped-query attention: 4 query heads share 2 key/value heads
        cfg = tf.Qwen2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )  # fmt: skip
        return tf.Qwen2ForCausalLM(cfg).eval(), ids
    if kind == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=32,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return tf.GPT2LMHeadModel(cfg).eval(), ids
    if kind == "bert":
        cfg = tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32,
        )  # fmt: skip
        return tf.BertModel(cfg).eval(), ids
    if kind == "vit":
        cfg = tf.ViTConfig(
            image_size=16, patch_size=8, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_labels=5,
        )  # fmt: skip
        return tf.ViTForImageClassification(cfg).eval(), torch.randn(1, 3, 16, 16)
    raise ValueError(kind)


KINDS = list(MLP)


def _tensors(out):
    return output_transform_of(None)(out)


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


@pytest.fixture(scope="module")
def pruned_models():
    """One prune per architecture at -15 % MACs (verify=True, the default), shared by the tests."""
    cache = {}

    def get(kind):
        if kind not in cache:
            model, x = make(kind)
            before = copy.deepcopy(model.state_dict())
            res = prune(
                model, x, macs_reduction=0.15, output_transform=OUTPUT[kind], progress=False
            )
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
            cache[kind] = (model, x, res)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_prunes_mlp_neurons_only_and_verifies(kind, pruned_models):
    model, x, (pruned, plan, report) = pruned_models(kind)
    assert report.excluded == [] and report.corrected == []
    assert abs(report.macs_reduction - 0.15) <= 0.01
    assert plan.settings["scope"] == "mlp"
    assert len(plan.groups) == 2 and plan.n_removed > 0
    for gp in plan.groups:
        assert re.fullmatch(ROOTS[kind], gp.root), gp.root
        assert all(re.search(MLP[kind], name + ".") for name, _ in gp.members), gp.members
    # Attention, norms, embeddings and the residual stream are untouched.
    sd1 = pruned.state_dict()
    changed = []
    for k, v in model.state_dict().items():
        if re.search(MLP[kind], k):
            continue
        if k not in sd1 or not torch.equal(sd1[k], v):
            changed.append(k)
    assert changed == []
    with torch.no_grad():
        a, b = _tensors(model(x)), _tensors(pruned(x))
    assert [t.shape for t in a] == [t.shape for t in b]
    assert all(torch.isfinite(t).all() for t in b)


def test_gpt2_conv1d_pruned_and_returned_as_conv1d(pruned_models):
    model, _, (pruned, plan, _) = pruned_models("gpt2")
    conv1d = _conv1d()
    for name, mod in pruned.named_modules():
        assert not isinstance(mod, nn.Linear) or name == "lm_head", name
    fc = pruned.transformer.h[0].mlp.c_fc
    proj = pruned.transformer.h[0].mlp.c_proj
    assert type(fc) is conv1d and type(proj) is conv1d
    kept = len(plan.groups[0].kept)
    assert fc.nf == kept < 64 and fc.weight.shape == (32, kept) and proj.weight.shape == (kept, 32)
    # The original keeps its Conv1D modules and their weights.
    assert type(model.transformer.h[0].mlp.c_fc) is conv1d
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)


def test_gated_mlp_group_couples_gate_and_up(pruned_models):
    _, _, (pruned, plan, _) = pruned_models("qwen2")
    gp = plan.groups[0]
    assert gp.members == [
        ["model.layers.0.mlp.gate_proj", "producer"],
        ["model.layers.0.mlp.up_proj", "producer"],
        ["model.layers.0.mlp.down_proj", "consumer"],
    ]
    mlp = pruned.model.layers[0].mlp
    k = len(gp.kept)
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == k
    # Grouped-query attention untouched: 4 query heads of 8, 2 key/value heads.
    att = pruned.model.layers[0].self_attn
    assert att.q_proj.out_features == 32 and att.k_proj.out_features == 16


@pytest.mark.parametrize("kind", KINDS)
def test_plan_json_replays(kind, pruned_models, tmp_path):
    model, x, (pruned, plan, _) = pruned_models(kind)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = apply_plan(model, path)  # inputs rebuilt from the plan, output transform recorded
    sd0, sd1 = pruned.state_dict(), again.state_dict()
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert [type(m) for m in pruned.modules()] == [type(m) for m in again.modules()]


def _duplicate(model: nn.Module, kind: str, g: torch.Generator) -> dict[str, set[frozenset[int]]]:
    """Make some neurons of every MLP exact duplicates (producer rows equal); return the pairs."""
    pairs: dict[str, set[frozenset[int]]] = {}
    names = module_names(model)
    with torch.no_grad():
        for name, mod in list(model.named_modules()):
            if not re.fullmatch(ROOTS[kind], name):
                continue
            parent = name.rsplit(".", 1)[0]
            if kind in ("llama", "qwen2"):
                mlp = model.get_submodule(parent)
                rows = [mlp.gate_proj.weight, mlp.up_proj.weight]
            elif kind == "gpt2":
                rows = [mod.weight.t()]  # Conv1D: (in, out); rows of the transpose are neurons
                rows.append(mod.bias.view(-1, 1))
            else:
                rows = [mod.weight, mod.bias.view(-1, 1)]
            perm = torch.randperm(64, generator=g)
            ps = set()
            for j, r in perm[:24].view(12, 2).tolist():
                for w in rows:
                    w[j] = w[r]
                ps.add(frozenset((j, r)))
            pairs[names[mod]] = ps
    return pairs


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_neurons_removed_exactly(kind):
    """Duplicated neurons are exactly the ones removed, and with merge the outputs are unchanged
    to 1e-6 (float64); without merge they change (so the test can fail)."""
    model, x = make(kind)
    model = model.double()
    if kind == "vit":
        x = x.double()
    pairs = _duplicate(model, kind, torch.Generator().manual_seed(1))
    with torch.no_grad():
        y0 = _tensors(model(x))
    n_dup = sum(len(p) for p in pairs.values())
    res = prune(
        model, x, pruning_ratio=n_dup / 128, min_keep_ratio=0.0, progress=False,
        output_transform=OUTPUT[kind],
    )  # fmt: skip
    assert res.report.excluded == []
    for gp in res.plan.groups:
        removed = set(gp.removed)
        assert len(removed) == len(pairs[gp.root])
        assert all(len(removed & p) == 1 for p in pairs[gp.root]), gp.root
    with torch.no_grad():
        y1 = _tensors(res.model(x))
    for a, b in zip(y0, y1, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    if kind in ("llama", "gpt2"):
        nomerge = prune(
            model, x, pruning_ratio=n_dup / 128, min_keep_ratio=0.0, merge=False,
            progress=False, output_transform=OUTPUT[kind],
        )  # fmt: skip
        with torch.no_grad():
            y2 = _tensors(nomerge.model(x))
        assert max(float((a - b).abs().max()) for a, b in zip(y0, y2, strict=True)) > 1e-3


def test_keyword_inputs_and_output_name_recorded_in_plan(tmp_path):
    model, ids = make("llama")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pruned, plan, report = prune(
        model, inputs, params_reduction=0.05, output_transform="logits", progress=False
    )
    assert report.excluded == []
    assert plan.settings["output_transform"] == "logits"
    assert [d["name"] for d in plan.example_inputs] == ["input_ids", "attention_mask"]
    assert model.config.use_cache is True and pruned.config.use_cache is True
    path = tmp_path / "plan.json"
    plan.save(path)
    again = apply_plan(model, PruningPlan.load(path), verify=False)
    assert all(
        torch.equal(a, b) for a, b in zip(again.parameters(), pruned.parameters(), strict=True)
    )
    with torch.no_grad():
        assert pruned(**inputs).logits.shape == (1, 12, VOCAB)


def test_callable_output_transform_must_be_given_again():
    model, ids = make("gpt2")
    res = prune(
        model, (ids,), params_reduction=0.05, output_transform=lambda o: o.logits,
        verify=False, progress=False,
    )  # fmt: skip
    assert res.plan.settings["output_transform"] == "<callable>"
    with pytest.raises(ValueError, match="callable output_transform"):
        apply_plan(model, res.plan)
    again = apply_plan(model, res.plan, output_transform=lambda o: o.logits, verify=False)
    assert all(
        torch.equal(a, b) for a, b in zip(again.parameters(), res.model.parameters(), strict=True)
    )


def test_output_transform_errors():
    model, ids = make("bert")
    with pytest.raises(simprune.pruning.TracingError, match="no 'logits'"):
        prune(model, ids, params_reduction=0.05, output_transform="logits", progress=False)
    with pytest.raises(TypeError, match="output_transform must be"):
        prune(model, ids, params_reduction=0.05, output_transform=3, progress=False)
    with pytest.raises(ValueError, match="unknown scope"):
        prune(model, ids, params_reduction=0.05, scope="heads", progress=False)


def test_root_search_is_bounded_and_refuses_non_mlp_roots():
    model, ids = make("llama")
    model.config.use_cache = False
    dg = build_dependency_graph(model, ids, output_transform="logits")
    names = module_names(model)
    layer = model.model.layers[0]
    region = mlp_region(dg, layer.mlp.gate_proj, names)
    assert not isinstance(region, str)
    assert region == ([layer.mlp.gate_proj, layer.mlp.up_proj], [layer.mlp.down_proj])
    assert "exceeds 2 graph nodes" in mlp_region(dg, layer.mlp.gate_proj, names, limit=2)
    assert "reshape" in mlp_region(dg, layer.self_attn.q_proj, names)  # attention heads
    assert "reach" in mlp_region(dg, layer.mlp.down_proj, names)  # the residual stream
    with pytest.raises(ValueError, match="not an MLP producer"):
        check_mlp_roots(dg, model, ["model.layers.0.self_attn.o_proj"])
    # A plan edited to root a group in the residual stream is refused before any traversal.
    plan = prune(model, ids, params_reduction=0.05, verify=False, progress=False).plan
    plan.groups[0].root = "model.layers.0.self_attn.o_proj"
    with pytest.raises(ValueError, match="not an MLP producer"):
        apply_plan(model, plan)


def test_conv1d_conversion_round_trip_is_exact():
    model, ids = make("gpt2")
    work = copy.deepcopy(model)
    names = conv1d_to_linear(work)
    assert len(names) == 8 and all(isinstance(work.get_submodule(n), nn.Linear) for n in names)
    with torch.no_grad():
        torch.testing.assert_close(work(ids).logits, model(ids).logits)
    assert linear_to_conv1d(work) == names
    sd0, sd1 = model.state_dict(), work.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)


def test_timm_mlp_with_scope_mlp():
    timm = pytest.importorskip("timm")
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
        num_classes=5,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    pruned, plan, report = prune(model, x, macs_reduction=0.1, scope="mlp", progress=False)
    assert report.excluded == []
    assert [gp.root for gp in plan.groups] == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert pruned.blocks[0].attn.qkv.out_features == 96  # attention untouched
    with torch.no_grad():
        assert pruned(x).shape == (1, 5)


def _cli(argv):
    from simprune.cli import main

    return main(argv)


def test_cli_config_and_local_directory(tmp_path, capsys):
    model, ids = make("llama")
    cfg = model.config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "out1"
    rc = _cli(
        ["prune", "hf:", "--config", str(cfg_path), "--macs-reduction", "0.1",
         "--input-shape", "1,8", "--output-transform", "logits", "--out", str(out),
         "--no-plot", "--no-progress"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    plan = PruningPlan.load(out / "plan.json")
    assert plan.settings["scope"] == "mlp" and plan.n_removed > 0
    assert plan.example_inputs == [{"shape": [1, 8], "dtype": "int64", "name": "input_ids"}]
    pruned = torch.load(out / "pruned_model.pt", weights_only=False)
    with torch.no_grad():
        assert pruned(ids).logits.shape == (1, 12, VOCAB)

    # hf:DIR: a save_pretrained folder (GPT-2: Conv1D), loaded without any network access.
    g, gids = make("gpt2")
    g.save_pretrained(tmp_path / "gpt2")
    out2 = tmp_path / "out2"
    rc = _cli(
        ["prune", f"hf:{tmp_path / 'gpt2'}", "--macs-reduction", "0.1", "--out", str(out2),
         "--no-plot", "--no-progress"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    pruned2 = torch.load(out2 / "pruned_model.pt", weights_only=False)
    replay = apply_plan(g, out2 / "plan.json")
    sd0, sd1 = pruned2.state_dict(), replay.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert type(pruned2.transformer.h[0].mlp.c_fc) is _conv1d()


def test_cli_refuses_missing_directory(tmp_path):
    with pytest.raises(SystemExit, match="not a local directory"):
        _cli(["prune", f"hf:{tmp_path / 'nope'}", "--out", str(tmp_path), "--no-plot"])
    with pytest.raises(SystemExit, match="does not exist"):
        _cli(["prune", "hf:", "--config", os.fspath(tmp_path / "c.json"), "--no-plot"])


# ---- attention heads (prune_heads=True) ----------------------------------------------------------


def _specs(model: nn.Module):
    """The attention specs of a model (GPT-2 read through its Linear stand-in)."""
    from simprune.pruning.transformers import attention_spec

    conv = copy.deepcopy(model)
    conv1d_to_linear(conv)
    specs = [attention_spec(conv, n) for n, _ in conv.named_modules()]
    return [s for s in specs if s is not None and not isinstance(s, str)]


def _duplicate_head(model: nn.Module, spec, dst: int, src: int) -> None:
    """Key/value head ``dst`` (with its query heads) becomes a copy of ``src``."""
    d, rep = spec.head_dim, spec.n_rep

    def cp(name: str, off: int, a: int, b: int) -> None:
        lin = model.get_submodule(name)
        w = lin.weight if isinstance(lin, nn.Linear) else lin.weight.t()  # Conv1D: (in, out)
        w[off + a * d : off + (a + 1) * d] = w[off + b * d : off + (b + 1) * d]
        if lin.bias is not None:
            lin.bias[off + a * d : off + (a + 1) * d] = lin.bias[off + b * d : off + (b + 1) * d]

    with torch.no_grad():
        cp(spec.k, spec.k_off, dst, src)
        cp(spec.v, spec.v_off, dst, src)
        for r in range(rep):
            cp(spec.q, spec.q_off, dst * rep + r, src * rep + r)


def _mlp_producers(model: nn.Module, kind: str) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if re.fullmatch(ROOTS[kind], n)]


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_heads_removed_exactly(kind, tmp_path):
    """A key/value head (with its query heads) built as a copy of another is the one removed, its
    output-projection columns merged: outputs unchanged to 1e-6 in float64; the plan replays."""
    model, x = make(kind)
    model = model.double()
    x = x.double() if kind == "vit" else x
    specs = _specs(model)
    assert len(specs) == 2
    for s in specs:
        _duplicate_head(model, s, 1, 0)
    with torch.no_grad():
        y0 = _tensors(model(x))
    ch = sum(s.n_kv * s.head_dim for s in specs)
    res = prune(
        model, x, pruning_ratio=2 * specs[0].head_dim / ch, min_keep_ratio=0.0, prune_heads=True,
        ignored_layers=_mlp_producers(model, kind), output_transform=OUTPUT[kind], progress=False,
    )  # fmt: skip
    assert res.report.excluded == []
    assert res.plan.settings["prune_heads"] is True
    assert [gp.root for gp in res.plan.groups] == [s.name for s in specs]
    for gp, s in zip(res.plan.groups, specs, strict=True):
        units = {c % s.n_kv for c in gp.removed}
        assert units in ({0}, {1})  # one of the two copies, whole
        assert len(gp.removed) == s.head_dim
    with torch.no_grad():
        y1 = _tensors(res.model(x))
    for a, b in zip(y0, y1, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    path = tmp_path / "plan.json"
    res.plan.save(path)
    again = apply_plan(model, path)
    sd0, sd1 = res.model.state_dict(), again.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)


@pytest.mark.parametrize("kind", ["qwen2", "gpt2", "bert"])
def test_heads_pruned_verified_and_counts_updated(kind):
    """Half of every module's heads go (uniform cut, least-squares merges): the rewrite passes its
    check, the model runs and the modules' head counts follow; grouped-query attention loses whole
    key/value heads with their query heads."""
    model, x = make(kind)
    res = prune(
        model, x, pruning_ratio=0.5, cut="uniform", prune_heads=True,
        output_transform=OUTPUT[kind], progress=False,
    )  # fmt: skip
    assert res.report.excluded == []
    heads = [gp for gp in res.plan.groups if "mlp" not in gp.root and "intermediate" not in gp.root]
    assert len(heads) == 2 and all(len(gp.kept) * 2 == gp.n_channels for gp in heads)
    assert any(gp.merges for gp in heads)
    if kind == "qwen2":
        att = res.model.model.layers[0].self_attn
        assert (att.q_proj.out_features, att.k_proj.out_features) == (16, 8)  # 2 q heads, 1 kv
        assert att.o_proj.in_features == 16 and att.num_key_value_groups == 2
    elif kind == "gpt2":
        att = res.model.transformer.h[0].attn
        assert type(att.c_attn) is _conv1d() and att.c_attn.nf == 3 * 16
        assert (att.num_heads, att.split_size, att.c_proj.weight.shape) == (2, 16, (16, 32))
    else:
        att = res.model.encoder.layer[0].attention
        assert (att.self.num_attention_heads, att.self.all_head_size) == (2, 16)
        assert att.output.dense.in_features == 16
    with torch.no_grad():
        a, b = _tensors(model(x)), _tensors(res.model(x))
    assert [t.shape for t in a] == [t.shape for t in b]
    again = apply_plan(model, res.plan)
    assert all(
        torch.equal(p, q)
        for p, q in zip(again.state_dict().values(), res.model.state_dict().values(), strict=True)
    )


def test_a_wrong_head_rewrite_is_caught(monkeypatch):
    """The heads' check can fail: an output projection that keeps the wrong columns is excluded."""
    import simprune.pruning.transformers as T

    keep = T._keep_rows

    def wrong(lin, rows, dim):  # the output projection keeps its first columns instead
        keep(lin, list(range(len(rows))) if dim == 1 else rows, dim)

    monkeypatch.setattr(T, "_keep_rows", wrong)
    model, x = make("llama")
    with pytest.warns(UserWarning, match="excluded.*attention heads: the outputs differ"):
        res = prune(
            model, x, pruning_ratio=0.2, cut="uniform", prune_heads=True, progress=False,
            output_transform="logits",
        )  # fmt: skip
    assert sorted(r for r, _ in res.report.excluded) == [
        "model.layers.0.self_attn",
        "model.layers.1.self_attn",
    ]


def test_prune_heads_refusals():
    model, ids = make("llama")
    with pytest.raises(ValueError, match="prune_heads=True needs scope='mlp'"):
        prune(model, ids, params_reduction=0.05, prune_heads=True, scope="all", progress=False)
    with pytest.raises(ValueError, match="does not support merge='data'"):
        prune(
            model, ids, params_reduction=0.05, prune_heads=True, merge="data",
            calibration_data=ids, progress=False,
        )  # fmt: skip


def test_inplace_gpt2_with_heads_is_the_same_model():
    """inplace=True on GPT-2 (Conv1D stand-ins, heads): the caller's module becomes the pruned model,
    back in Conv1D form with its key/value cache flag restored, equal to the copy-based result."""
    model, x = make("gpt2")
    ref = prune(model, x, pruning_ratio=0.3, cut="uniform", prune_heads=True, progress=False)
    res = prune(
        model, x, pruning_ratio=0.3, cut="uniform", prune_heads=True, inplace=True, progress=False
    )
    assert res.model is model and model.config.use_cache is True
    assert type(model.transformer.h[0].attn.c_attn) is _conv1d()
    sd0, sd1 = ref.model.state_dict(), model.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
