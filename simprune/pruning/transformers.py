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
* Attention is never touched: its projections feed a reshape into heads, which ends the search.
  (Pruning whole heads is not implemented yet.)

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

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter as _oc

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


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (nested tuples/lists/dicts/ModelOutputs); others ignored."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return []


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
    for mod in model.modules():
        if not isinstance(mod, nn.Linear) or id(mod) in seen or mod not in dg.module2node:
            continue
        region = mlp_region(dg, mod, names)
        if isinstance(region, str):
            continue  # not an MLP producer: attention, residual stream, heads, classifier
        prods, cons = region
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
    if not groups:
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
