"""Transformers: model outputs, GPT-2's ``Conv1D``, MLP-neuron groups found from their roots.

Torch-Pruning's ``get_all_groups`` does not return on a Hugging Face decoder (it keeps producing new
index lists through the residual stream and the attention reshapes), so for transformers simprune
never enumerates every group. It starts from the layers it means to prune and bounds the search:

* **MLP neurons** (:func:`mlp_groups`): the hidden features between Linear layers connected only
  through element-wise operations. From each Linear the graph is walked forward and backward through
  element-wise nodes (activations, the gate product, dtype casts); Linear layers reached forward are
  the consumers, Linear layers feeding the region are co-producers. The walk stops with a stated
  reason at anything else -- a reshape (attention heads), a norm, a reduction (RMSNorm's mean), a
  residual add back into the embeddings, the model output -- or past :data:`REGION_LIMIT` nodes. Only
  a closed region is handed to Torch-Pruning's ``get_pruning_group``, whose traversal then stays
  inside it. This covers LLaMA/Mistral/Qwen2's gated MLP (gate_proj and up_proj coupled, down_proj
  the consumer), GPT-2's ``c_fc``/``c_proj``, BERT/ViT's ``intermediate``/``output`` and timm's
  ``Mlp``; the residual stream, norms and attention are never touched.
* **Attention heads** (``prune_heads=True``; otherwise attention is never touched): whole heads,
  grouped-query attention respected (:class:`HeadGroup`, :func:`remove_heads`,
  :func:`check_heads`; the section "attention heads" below).

Descriptors of an MLP neuron (metric.md, ``linear`` without a BatchNorm): each producer gives its
row and bias, ``[b_i, w_i]``, and a coupled group concatenates them, so for a gated MLP neuron i's
descriptor is ``[w_gate_i, w_up_i]`` (biases when present) and, for i.i.d. standardised inputs (the
RMSNorm output), D_ij = E[(g_i - g_j)^2] + E[(u_i - u_j)^2]: the expected squared difference of
the two pre-activations, summed over gate and up. D_ij = 0 exactly when both pre-activations agree,
i.e. when the neurons' outputs SiLU(g) * u are identical, and the least-squares merge coefficient
of such a duplicate is 1 (exact). Beyond duplicates it is a proxy: a neuron whose up row is c times
another's (same gate) has c times its output, but D_ij > 0 and the coefficient is
(|g|^2 + c |u|^2) / (|g|^2 + |u|^2), not c -- the gate enters through a non-linearity, so no
scale-free reading of both rows is exact.

GPT-2's ``transformers.pytorch_utils.Conv1D`` (a Linear with a transposed weight, unknown to
Torch-Pruning) is converted to :class:`Conv1DLinear` (an ``nn.Linear``) for the pruning and back to
``Conv1D`` afterwards (:func:`conv1d_to_linear`, :func:`linear_to_conv1d`): every step of the pipeline
-- descriptors, merges, the rewrite, the MACs model, the verification -- then sees a Linear, and the
returned model has GPT-2's own module types (weights exactly transposed back).

Outputs (:func:`output_transform_of`): ``output_transform=None`` traces every tensor the model
returns, in nested tuples, lists, dicts and ``ModelOutput``s, and ignores everything else (the
key/value cache objects of a decoder); a string names one output (``"logits"``,
``"last_hidden_state"``; an attribute or a key; recorded in the plan so :func:`simprune.apply_plan`
replays it); a callable maps the output to the tensors to trace.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter as _oc

from .groups import ChannelGroup, output_tensors

# At most this many graph nodes in one MLP region (a gated MLP has about 10; GPT-2's tanh GELU 12).
REGION_LIMIT = 256
# Element-wise autograd nodes that keep a feature in its position (grad_fn names, lower case).
_ELEMENTWISE_OK = (
    "mul", "add", "sub", "div", "neg", "silu", "gelu", "relu", "tanh", "sigmoid", "pow", "exp",
    "hardswish", "hardsigmoid", "leakyrelu", "elu", "softplus", "mish", "clamp", "tocopy", "clone",
    "sqrt", "erf", "abs", "where", "maximum", "minimum",
)  # fmt: skip
# Names that contain an allowed token but mix positions (matrix products, reductions).
_ELEMENTWISE_BAD = ("mm", "mean", "sum", "norm", "softmax", "var", "std", "cumsum", "max", "min")


# ---- outputs ---------------------------------------------------------------------------------


def output_transform_of(spec: Any) -> Callable[[Any], Any]:
    """The output transform for ``spec``: None (every tensor), an output's name, or a callable."""
    if spec is None:
        return output_tensors
    if callable(spec):
        return spec
    if isinstance(spec, str):
        name = spec

        def pick(out: Any) -> Any:
            if isinstance(out, dict) and name in out:
                return out[name]
            if hasattr(out, name):
                return getattr(out, name)
            if isinstance(out, (tuple, list)) and name.isdigit() and int(name) < len(out):
                return out[int(name)]
            have = list(out.keys()) if isinstance(out, dict) else type(out).__name__
            raise ValueError(
                f"output_transform={name!r}: the model output has no {name!r} ({have})"
            )

        return pick
    raise TypeError(
        f"output_transform must be None, an output name (str) or a callable, got {type(spec).__name__}"
    )


def describe_output_transform(spec: Any) -> str | None:
    """What a plan records: the output name, None, or "<callable>" (apply_plan then needs it)."""
    if spec is None or isinstance(spec, str):
        return spec
    return "<callable>"


def transformed_output(model: nn.Module, example_inputs: Any, spec: Any) -> Any:
    """``output_transform(model(example_inputs))``."""
    from .groups import _run_forward

    return output_transform_of(spec)(_run_forward(model, example_inputs))


# ---- Hugging Face models ---------------------------------------------------------------------


def is_hf_model(model: nn.Module) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (without importing transformers)."""
    tf = sys.modules.get("transformers")
    base = getattr(tf, "PreTrainedModel", None) if tf is not None else None
    return base is not None and isinstance(model, base)


def set_use_cache(model: nn.Module, value: Any) -> Any:
    """Set a Hugging Face model's ``config.use_cache``; returns the previous value (None: no flag).

    Pruning traces without the key/value cache: a cache's ``torch.cat`` of past and new keys is not
    a feature concatenation, and Torch-Pruning fails on it (GPT-2).
    """
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "use_cache") or value is None:
        return None
    old = cfg.use_cache
    cfg.use_cache = value
    return old


def _conv1d_type() -> type | None:
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


class Conv1DLinear(nn.Linear):
    """GPT-2's ``Conv1D`` as an ``nn.Linear`` while it is being pruned (weight transposed)."""


# Torch-Pruning's MACs counter matches exact types (it does not count GPT-2's Conv1D at all): count
# the stand-in as the Linear it is, so simprune's MACs include GPT-2's projections and MLP.
_oc.MODULES_MAPPING.setdefault(Conv1DLinear, _oc.linear_flops_counter_hook)


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every ``transformers`` ``Conv1D`` in ``model`` by a :class:`Conv1DLinear` (in place).

    Returns the names replaced. ``Conv1D(x) = x @ W + b`` with W of shape (in, out) is
    ``Linear(x)`` with weight ``W.T``; the parameters are new tensors (the caller's model, if it was
    copied, shares nothing).
    """
    cls = _conv1d_type()
    if cls is None:
        return []
    done = []
    for name, m in list(model.named_modules()):
        if type(m) is not cls:
            continue
        mod: Any = m
        w = mod.weight.detach()
        lin = Conv1DLinear(w.shape[0], w.shape[1], bias=mod.bias is not None)
        lin = lin.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.t())
            if mod.bias is not None:
                lin.bias.copy_(mod.bias.detach())
        lin.weight.requires_grad_(mod.weight.requires_grad)
        lin.train(mod.training)
        _set_submodule(model, name, lin)
        done.append(name)
    return done


def linear_to_conv1d(model: nn.Module) -> list[str]:
    """Turn every :class:`Conv1DLinear` back into a ``Conv1D`` with its (pruned) widths (in place)."""
    cls = _conv1d_type()
    if cls is None:
        return []
    done = []
    for name, mod in list(model.named_modules()):
        if type(mod) is not Conv1DLinear:
            continue
        c = cls(mod.out_features, mod.in_features)
        c = c.to(device=mod.weight.device, dtype=mod.weight.dtype)
        with torch.no_grad():
            c.weight.copy_(mod.weight.detach().t())
            if mod.bias is not None:
                c.bias.copy_(mod.bias.detach())
            else:
                c.bias.zero_()
        c.train(mod.training)
        _set_submodule(model, name, c)
        done.append(name)
    return done


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


SCOPES = ("auto", "all", "mlp")


def resolve_scope(model: nn.Module, scope: str) -> str:
    """``"auto"`` -> ``"mlp"`` for a Hugging Face model, ``"all"`` otherwise; names checked."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")
    if scope == "auto":
        return "mlp" if is_hf_model(model) else "all"
    return scope


# ---- MLP neuron groups -----------------------------------------------------------------------


def _elementwise_ok(node: Any) -> bool:
    if node.type != tp.ops.OPTYPE.ELEMENTWISE:
        return False
    name = str(getattr(node.module, "_grad_fn", "")).lower()
    if any(b in name for b in _ELEMENTWISE_BAD):
        return False
    return any(k in name for k in _ELEMENTWISE_OK)


def _is_linear(node: Any) -> bool:
    return node.type == tp.ops.OPTYPE.LINEAR and isinstance(node.module, nn.Linear)


def _linear_behind(node: Any) -> Any:
    """The Linear node that ``node`` is the input side of, or None.

    On an input of more than two dimensions a Linear runs as view -> mm -> view, and autograd shows
    Torch-Pruning the first view and the mm as nodes of their own before the Linear's node (its
    output). A chain of at most three such nodes, each with one output, ending at a Linear is that
    Linear's input. (A flatten written in the model that changed the width would give the consumer
    another in_features than the producers' width: refused by the width check.)
    """
    cur = node
    for _ in range(3):
        if _is_linear(cur):
            return cur
        op = str(getattr(cur.module, "_grad_fn", "")).lower()
        if not (
            cur.type == tp.ops.OPTYPE.RESHAPE or op.startswith(("mmbackward", "addmmbackward"))
        ):
            return None
        if len(cur.outputs) != 1:
            return None
        cur = cur.outputs[0]
    return cur if _is_linear(cur) else None


def _describe(node: Any, names: dict[Any, str]) -> str:
    mod = node.module
    if mod in names:
        return f"{names[mod]!r} ({type(mod).__name__})"
    if node.type == tp.ops.OPTYPE.OUTPUT:
        return "the model output"
    op = getattr(mod, "_grad_fn", None)
    return f"{node.type.name.lower()} op" + (f" {op}" if op else "")


def mlp_region(
    dg: tp.DependencyGraph, root: nn.Module, names: dict[Any, str], limit: int = REGION_LIMIT
) -> tuple[list[nn.Linear], list[nn.Linear]] | str:
    """The (producers, consumers) of the MLP region of a Linear ``root``, or why it is not one.

    Walks forward from the producers and backward into every element-wise node reached (its other
    inputs are co-producers or more element-wise nodes), never past a Linear. Anything else met --
    or more than ``limit`` nodes -- ends the walk with the reason.
    """
    start = dg.module2node.get(root)
    if start is None:
        return "not in the traced graph"
    producers = {start}
    consumers: set[Any] = set()
    elem: set[Any] = set()
    stack: list[tuple[str, Any]] = [("fwd", start)]
    while stack:
        direction, node = stack.pop()
        if len(producers) + len(consumers) + len(elem) > limit:
            return f"the region around it exceeds {limit} graph nodes"
        nbrs = node.outputs if direction == "fwd" else node.inputs
        for o in nbrs:
            if direction == "fwd" and not _is_linear(o):
                o = _linear_behind(o) or o
            if _is_linear(o):
                if direction == "fwd":
                    if o in producers:
                        return f"{_describe(o, names)} both produces and consumes its features"
                    consumers.add(o)
                elif o not in producers:
                    if o in consumers:
                        return f"{_describe(o, names)} both produces and consumes its features"
                    producers.add(o)
                    stack.append(("fwd", o))
            elif _elementwise_ok(o):
                if o not in elem:
                    elem.add(o)
                    stack.append(("fwd", o))
                    stack.append(("bwd", o))
            else:
                return f"its features reach {_describe(o, names)}"
    if not consumers:
        return "no Linear consumer"
    order = {m: k for k, m in enumerate(names)}
    prods: list[nn.Linear] = sorted(
        (n.module for n in producers), key=lambda m: order.get(m, 1 << 30)
    )
    cons: list[nn.Linear] = sorted(
        (n.module for n in consumers), key=lambda m: order.get(m, 1 << 30)
    )
    return prods, cons


def mlp_groups(
    dg: tp.DependencyGraph,
    model: nn.Module,
    ignored_layers: Sequence[nn.Module] = (),
) -> tuple[list[Any], list[tuple[str, str]]]:
    """The MLP-neuron groups of a traced transformer and the refused roots as (name, reason).

    One group per closed region (module docstring), rooted at its first producer in module order.
    Linear layers whose region is not closed (attention projections, the residual stream, heads)
    are not listed among the skipped ones unless they looked like an MLP producer (a Linear
    consumer reached through element-wise ops only is the usual sign).
    """
    from .groups import ChannelGroup, _channel_groups_of, following_norms, members_of, module_names

    names = module_names(model)
    ignored = set(map(id, ignored_layers))
    groups: list[ChannelGroup] = []
    skipped: list[tuple[str, str]] = []
    seen: set[int] = set()
    found = False
    for mod in model.modules():
        if not isinstance(mod, nn.Linear) or id(mod) in seen or mod not in dg.module2node:
            continue
        region = mlp_region(dg, mod, names)
        if isinstance(region, str):
            continue  # not an MLP producer: attention, residual stream, heads, classifier
        prods, cons = region
        found = True
        seen.update(id(p) for p in prods)
        root_name = names[prods[0]]
        widths = {int(p.out_features) for p in prods} | {int(c.in_features) for c in cons}
        if len(widths) != 1:
            skipped.append(
                (root_name, f"producers/consumers disagree on the width {sorted(widths)}")
            )
            continue
        if any(id(p) in ignored for p in prods):
            skipped.append((root_name, "ignored_layers"))
            continue
        n = int(prods[0].out_features)
        pruner = dg.get_pruner_of_module(prods[0])
        g = dg.get_pruning_group(prods[0], pruner.prune_out_channels, list(range(n)))
        members, bad = members_of(g, names)
        if bad:
            skipped.append((root_name, bad))
            continue
        allowed = {id(m) for m in prods} | {id(m) for m in cons}
        extra = [m.name for m in members if id(m.module) not in allowed]
        if extra:
            skipped.append((root_name, f"Torch-Pruning couples it with {extra[:3]}"))
            continue
        grp = ChannelGroup(len(groups), root_name, n, _channel_groups_of(members), members, g)
        grp.bn_of = following_norms(dg, grp)
        groups.append(grp)
    if not found:
        skipped.append(("(model)", "no MLP block found (Linear -> element-wise ops -> Linear)"))
    return groups, skipped


def check_mlp_roots(dg: tp.DependencyGraph, model: nn.Module, roots: Sequence[str]) -> None:
    """ValueError when a plan's root is not an MLP producer of ``model`` (before any traversal)."""
    from .groups import module_names

    names = module_names(model)
    for r in roots:
        try:
            mod = model.get_submodule(r)
        except AttributeError:
            raise ValueError(f"the model has no layer named {r!r}") from None
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"plan root {r!r} is a {type(mod).__name__}, not a Linear")
        region = mlp_region(dg, mod, names)
        if isinstance(region, str):
            raise ValueError(f"plan root {r!r} is not an MLP producer: {region}")


# ---- attention heads -------------------------------------------------------------------------
#
# A head is one pruning unit: its query, key and value rows and its columns of the output
# projection. With grouped-query attention several query heads share one key/value head; the unit is
# then the key/value head with all its query heads (so every remaining key/value head keeps the same
# number of query heads and the model's repeat of k/v stays valid). A head group is a ChannelGroup
# whose channels are the key/value features: channel j * n_kv + g is feature j of key/value head g,
# so that with ch_groups = head_dim a unit (channels u, u + n_kv, ...) is one key/value head. Its
# members: the value, key and query projections (producers; one query member per query head of a
# group) and the output projection (consumers, likewise). Descriptors, the cut, representatives and
# the merges (output-projection columns of a removed head folded into its representative's) are
# the channel pipeline's; the rewrite and its check are here: the heads' rows and columns are
# removed and the head counts of the module updated; the pruned model must equal the original whose
# output projections read the removed heads' inputs as the plan says (dropped or merged).


@dataclass
class AttentionSpec:
    """Where the heads of one attention module live."""

    name: str  # the attention module (the plan's root for its heads)
    kind: str  # "qkvo" (LLaMA/Mistral/Qwen2/ViT), "bert", "gpt2" (fused c_attn)
    q: str  # Linear names; q/k/v may be one fused Linear (rows offset by q_off/k_off/v_off)
    k: str
    v: str
    o: str
    q_off: int
    k_off: int
    v_off: int
    head_dim: int
    n_q: int
    n_kv: int

    @property
    def n_rep(self) -> int:
        return self.n_q // self.n_kv


def attention_spec(model: nn.Module, name: str) -> AttentionSpec | str | None:
    """The heads of the module ``name``: a spec, a reason it cannot be pruned, or None (not one)."""
    mod = model.get_submodule(name)
    lin = nn.Linear

    def child(path: str) -> nn.Linear | None:
        try:
            m = mod.get_submodule(path)
        except AttributeError:
            return None
        return m if isinstance(m, lin) else None

    def sub(path: str) -> str:
        return f"{name}.{path}" if name else path

    if all(child(p) is not None for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        q, k = child("q_proj"), child("k_proj")
        d = getattr(mod, "head_dim", None)
        assert q is not None and k is not None
        if not isinstance(d, int) or d < 1 or q.out_features % d or k.out_features % d:
            return "no usable head_dim attribute"
        n_q, n_kv = q.out_features // d, k.out_features // d
        if n_q % n_kv:
            return f"{n_q} query heads not a multiple of {n_kv} key/value heads"
        s = sub
        return AttentionSpec(
            name, "qkvo", s("q_proj"), s("k_proj"), s("v_proj"), s("o_proj"), 0, 0, 0, d, n_q, n_kv
        )
    if all(child(p) is not None for p in ("self.query", "self.key", "self.value", "output.dense")):
        d = getattr(mod.get_submodule("self"), "attention_head_size", None)
        q = child("self.query")
        assert q is not None
        if not isinstance(d, int) or d < 1 or q.out_features % d:
            return "no usable attention_head_size attribute"
        n = q.out_features // d
        return AttentionSpec(
            name, "bert", sub("self.query"), sub("self.key"), sub("self.value"),
            sub("output.dense"), 0, 0, 0, d, n, n,
        )  # fmt: skip
    if child("c_attn") is not None and child("c_proj") is not None and hasattr(mod, "split_size"):
        if getattr(mod, "is_cross_attention", False) or hasattr(mod, "q_attn"):
            return "cross-attention is not supported"
        c = child("c_attn")
        d, e = getattr(mod, "head_dim", None), getattr(mod, "split_size", None)
        assert c is not None
        if not isinstance(d, int) or not isinstance(e, int) or c.out_features != 3 * e or e % d:
            return "c_attn is not a fused (q, k, v) projection of split_size rows each"
        n = e // d
        return AttentionSpec(
            name, "gpt2", sub("c_attn"), sub("c_attn"), sub("c_attn"), sub("c_proj"),
            0, e, 2 * e, d, n, n,
        )  # fmt: skip
    return None


class HeadGroup(ChannelGroup):  # type: ignore[misc]
    """The heads of one attention module as a channel group (see the section comment)."""

    spec: AttentionSpec


def _query_head(g: int, n_rep: int, r: int) -> int:
    """Query head r of key/value head g."""
    return g * n_rep + r


def head_group(model: nn.Module, spec: AttentionSpec, index: int) -> HeadGroup:
    """The head group of ``spec`` in ``model``."""
    from .groups import Member

    d, n_kv, n_rep = spec.head_dim, spec.n_kv, spec.n_rep
    roots = [j * n_kv + g for g in range(n_kv) for j in range(d)]  # kv feature g*d+j -> channel

    def rows(off: int, head_of: Callable[[int], int]) -> list[int]:
        return [off + head_of(g) * d + j for g in range(n_kv) for j in range(d)]

    members = [
        Member(
            spec.v, model.get_submodule(spec.v), "producer", rows(spec.v_off, lambda g: g), roots
        ),
        Member(
            spec.k, model.get_submodule(spec.k), "producer", rows(spec.k_off, lambda g: g), roots
        ),
    ]
    for r in range(n_rep):
        q_rows = rows(spec.q_off, functools.partial(_query_head, n_rep=n_rep, r=r))
        members.append(Member(spec.q, model.get_submodule(spec.q), "producer", q_rows, roots))
    for r in range(n_rep):
        o_cols = rows(0, functools.partial(_query_head, n_rep=n_rep, r=r))
        members.append(Member(spec.o, model.get_submodule(spec.o), "consumer", o_cols, roots))
    grp = HeadGroup(index, spec.name, n_kv * d, d, members, None)
    grp.spec = spec
    return grp


def head_groups(
    model: nn.Module, start: int, ignored_layers: Sequence[nn.Module] = ()
) -> tuple[list[HeadGroup], list[tuple[str, str]]]:
    """Every prunable attention module's head group (indices from ``start``) and the refused ones."""
    ignored = set(map(id, ignored_layers))
    out: list[HeadGroup] = []
    skipped: list[tuple[str, str]] = []
    for name, _ in model.named_modules():
        spec = attention_spec(model, name)
        if spec is None:
            continue
        if isinstance(spec, str):
            skipped.append((name, f"attention heads: {spec}"))
            continue
        if any(id(model.get_submodule(n)) in ignored for n in (spec.q, spec.k, spec.v)):
            skipped.append((name, "attention heads: ignored_layers"))
            continue
        if spec.n_kv < 2:
            continue
        out.append(head_group(model, spec, start + len(out)))
    return out, skipped


def head_group_at(model: nn.Module, root: str, index: int) -> HeadGroup | None:
    """The head group rooted at the attention module ``root``, or None when it is not one."""
    try:
        spec = attention_spec(model, root)
    except AttributeError:
        return None
    if spec is None:
        return None
    if isinstance(spec, str):
        raise ValueError(f"plan group {root!r}: its attention heads cannot be pruned: {spec}")
    return head_group(model, spec, index)


def _keep_rows(lin: Any, keep: list[int], dim: int) -> None:
    idx = torch.tensor(keep, dtype=torch.long, device=lin.weight.device)
    with torch.no_grad():
        lin.weight = nn.Parameter(lin.weight.detach().index_select(dim, idx).contiguous())
        if dim == 0:
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach().index_select(0, idx).contiguous())
            lin.out_features = len(keep)
        else:
            lin.in_features = len(keep)


@torch.no_grad()
def remove_heads(model: nn.Module, grp: HeadGroup, removed_units: Sequence[int]) -> None:
    """Remove whole key/value heads (and their query heads) from one attention module, in place;
    the module's head counts follow (merges are applied before, by the channel pipeline)."""
    spec = grp.spec
    gone = set(int(u) for u in removed_units)
    if not gone:
        return
    d, n_rep = spec.head_dim, spec.n_rep
    kept_kv = [g for g in range(spec.n_kv) if g not in gone]
    kept_q = [g * n_rep + r for g in kept_kv for r in range(n_rep)]

    def rows(off: int, heads: list[int]) -> list[int]:
        return [off + h * d + j for h in heads for j in range(d)]

    q = model.get_submodule(spec.q)
    o = model.get_submodule(spec.o)
    if spec.kind == "gpt2":
        e = len(kept_kv) * d
        _keep_rows(q, rows(0, kept_q) + rows(spec.k_off, kept_kv) + rows(spec.v_off, kept_kv), 0)
    else:
        _keep_rows(q, rows(0, kept_q), 0)
        _keep_rows(model.get_submodule(spec.k), rows(0, kept_kv), 0)
        _keep_rows(model.get_submodule(spec.v), rows(0, kept_kv), 0)
    _keep_rows(o, rows(0, kept_q), 1)
    att: Any = model.get_submodule(spec.name)
    n_q = len(kept_q)
    if spec.kind == "gpt2":
        att.num_heads = n_q
        att.split_size = e
        att.embed_dim = e
    elif spec.kind == "bert":
        s = att.get_submodule("self")
        s.num_attention_heads = n_q
        s.all_head_size = n_q * d
    else:
        for attr, val in (
            ("num_heads", n_q), ("num_attention_heads", n_q),
            ("num_key_value_heads", len(kept_kv)), ("all_head_size", n_q * d),
        ):  # fmt: skip
            if isinstance(getattr(att, attr, None), int):
                setattr(att, attr, val)


def _edit_o_input(
    x: torch.Tensor, removed: list[int], merges: list[tuple[list[int], list[int], float]]
) -> torch.Tensor:
    """The output projection's input as the pruned model reads it: a removed head's features are
    0, or (merged) its representative's features times the coefficient."""
    y = x.clone()
    y[..., removed] = 0
    for src, dst, a in merges:
        y[..., src] += a * x[..., dst]
    return y


def check_heads(
    original: nn.Module,
    groups: Sequence[HeadGroup],
    plans: Sequence[Any],
    example_inputs: Any,
) -> tuple[nn.Module, dict[int, str]]:
    """The original with only its heads pruned, and the head groups (indices into ``groups``) whose
    rewrite does not compute what the plan says: the original, whose output projections read the
    removed heads' inputs as zeros (plus the merges), must give the same outputs."""
    from .groups import _run_forward
    from .merge import apply_merges

    ref = copy.deepcopy(original)
    failed: dict[int, str] = {}
    todo = [k for k, gp in enumerate(plans) if gp.removed]
    for k in todo:
        grp = head_group(ref, groups[k].spec, k)
        gp = plans[k]
        if gp.merges:
            apply_merges(grp, [(int(j), int(r), float(a)) for j, r, a in gp.merges])
        units = sorted({c % grp.n_units for c in gp.removed})
        remove_heads(ref, grp, units)

    def edits(ks: list[int]) -> dict[str, tuple[list[int], list]]:
        out: dict[str, tuple[list[int], list]] = {}
        for k in ks:
            grp, gp = groups[k], plans[k]
            cons = grp.consumers()
            maps = [m.layer_index_map() for m in cons]
            removed = [i for mp in maps for c in gp.removed for i in mp[c]]
            merges = [
                ([mp[int(j)][0] for mp in maps], [mp[int(r)][0] for mp in maps], float(a))
                for j, r, a in gp.merges
            ]
            out[grp.spec.o] = (removed, merges)
        return out

    def run(model: nn.Module, ed: dict[str, tuple[list[int], list]]) -> list[torch.Tensor]:
        hooks = []
        for name, (removed, merges) in ed.items():

            def pre(_m: nn.Module, args: Any, removed: Any = removed, merges: Any = merges) -> Any:
                return (_edit_o_input(args[0], removed, merges), *args[1:])

            hooks.append(model.get_submodule(name).register_forward_pre_hook(pre))
        training = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with torch.no_grad():
                return output_tensors(_run_forward(model, example_inputs))
        finally:
            for h in hooks:
                h.remove()
            for m, t in training.items():
                m.training = t

    if not todo:
        return ref, failed
    try:
        got = run(ref, {})
    except Exception as e:  # noqa: BLE001 - the rewrite broke the forward: every pruned group
        return ref, {k: f"the pruned attention crashes: {type(e).__name__}: {e}" for k in todo}

    def differs(ks: list[int]) -> str | None:
        want = run(original, edits(ks))
        if [t.shape for t in want] != [t.shape for t in got]:
            return "the outputs' shapes change"
        for a, b in zip(want, got, strict=True):
            tol = (1e-9 if a.dtype == torch.float64 else 1e-4) * max(1.0, float(a.abs().max()))
            err = float((a - b).abs().max()) if a.numel() else 0.0
            if not err <= tol:
                return f"the outputs differ by {err:.3g} (tolerance {tol:.3g})"
        return None

    why = differs(todo)
    if why is not None:
        # One group at a time against a model with only that group's heads pruned.
        for k in todo:
            sub = copy.deepcopy(original)
            grp = head_group(sub, groups[k].spec, k)
            gp = plans[k]
            if gp.merges:
                apply_merges(grp, [(int(j), int(r), float(a)) for j, r, a in gp.merges])
            remove_heads(sub, grp, sorted({c % grp.n_units for c in gp.removed}))
            got_k = run(sub, {})
            want_k = run(original, edits([k]))
            ok = [t.shape for t in got_k] == [t.shape for t in want_k] and all(
                float((a - b).abs().max() if a.numel() else 0.0)
                <= (1e-9 if a.dtype == torch.float64 else 1e-4) * max(1.0, float(a.abs().max()))
                for a, b in zip(want_k, got_k, strict=True)
            )
            if not ok:
                failed[k] = f"attention heads: {why}"
        if not failed:
            failed = {k: f"attention heads: {why}" for k in todo}
    return ref, failed


def probe_channels(model: nn.Module, example_inputs: Any, groups: Sequence[ChannelGroup]) -> Any:
    """:func:`simprune.pruning.verify.probe_positions` for the channel groups (head groups are
    checked by :func:`check_heads` instead)."""
    from .verify import probe_positions

    return probe_positions(
        model, example_inputs, [g for g in groups if not isinstance(g, HeadGroup)]
    )


def verify_all(
    original: nn.Module,
    work: nn.Module,
    groups: Sequence[ChannelGroup],
    plans: Sequence[Any],
    probe: Any,
    example_inputs: Any,
) -> Any:
    """:func:`simprune.pruning.verify.verify_rewrite` with head groups: the heads are checked by
    :func:`check_heads` against the original, the channel groups by ``verify_rewrite`` against the
    original with only its heads pruned (the two touch different layers). ``failed`` indexes
    ``groups``."""
    from .verify import verify_rewrite

    heads = [k for k, g in enumerate(groups) if isinstance(g, HeadGroup)]
    if not heads:
        return verify_rewrite(original, work, groups, plans, probe, example_inputs)
    chan = [k for k in range(len(groups)) if k not in set(heads)]
    ref, head_failed = check_heads(
        original, [cast(HeadGroup, groups[k]) for k in heads], [plans[k] for k in heads],
        example_inputs,
    )  # fmt: skip
    res = verify_rewrite(
        ref, work, [groups[k] for k in chan], [plans[k] for k in chan], probe, example_inputs
    )
    res.failed = {chan[k]: why for k, why in res.failed.items()}
    res.failed.update({heads[k]: why for k, why in head_failed.items()})
    return res
