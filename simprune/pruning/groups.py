"""Channel groups from Torch-Pruning's ``DependencyGraph``.

A *channel group* is a set of channels that must be removed together: the output channels of one
Conv/Linear layer plus everything coupled to them (the following BatchNorm, depthwise convolutions,
residual adds, concatenations, and the input channels of every consumer). Torch-Pruning traces the
model and builds these groups; we only classify the members:

* producers: Conv/Linear layers whose *output* channels are in the group (descriptor sources);
* depthwise convolutions (both produce and consume the channel; never a merge target);
* norms: BatchNorm and friends whose channels are in the group;
* consumers: Conv/Linear layers whose *input* channels are in the group (merge targets).

Each member keeps Torch-Pruning's layer indices and the matching root indices, so a channel of the
group (a root index) maps to one or more indices of every member (several for a consumer reached
through a flatten).
"""

from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

_F = tp.pruner.function
PRODUCER_FNS = (_F.prune_conv_out_channels, _F.prune_linear_out_channels)
CONSUMER_FNS = (_F.prune_conv_in_channels, _F.prune_linear_in_channels)
DEPTHWISE_FNS = (_F.prune_depthwise_conv_out_channels,)
NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass
class Member:
    """One layer of a channel group."""

    name: str
    module: Any  # nn.Module, or nn.Parameter for unwrapped parameters
    kind: str  # "producer" | "depthwise" | "norm" | "consumer" | "other"
    idxs: list[int]  # indices in this layer
    root_idxs: list[int]  # the group channel (root index) of each entry of idxs

    def layer_index_map(self) -> dict[int, list[int]]:
        """root index -> layer indices (in order; several for flatten-reached consumers)."""
        out: dict[int, list[int]] = {}
        for i, r in zip(self.idxs, self.root_idxs, strict=True):
            out.setdefault(int(r), []).append(int(i))
        return out


@dataclass
class ChannelGroup:
    """Channels pruned together, with their producers, norms and consumers."""

    index: int
    root_name: str
    n_channels: int
    ch_groups: int  # >1 when a grouped conv forces the same positions in every conv group
    members: list[Member]
    tp_group: Any = field(repr=False)
    bn_of: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    # simprune.pruning.stats.GroupStats from calibration data (metric="activation", merge="data")
    stats: Any = field(default=None, repr=False)

    @property
    def n_units(self) -> int:
        """Number of independent pruning units (channels / ch_groups)."""
        return self.n_channels // self.ch_groups

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.kind in ("producer", "depthwise")]

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.kind == "consumer"]

    def unit_channels(self, units: Sequence[int]) -> list[int]:
        """Root channels of pruning units (a unit is one position in every channel group)."""
        gs = self.n_units
        return sorted(int(u) + g * gs for u in units for g in range(self.ch_groups))


# Torch-Pruning's index-mapping stages and the tensor operations they handle (for error messages).
_TP_STAGE_OPS = {
    "reshape": "a view/reshape/flatten (e.g. a channel shuffle)",
    "concat": "a torch.cat",
    "split": "a split/chunk",
    "unbind": "an unbind",
    "expand": "an expand",
    "slice": "a slice",
}


class TracingError(RuntimeError):
    """The model could not be traced into a dependency graph."""


def module_names(model: nn.Module) -> dict[Any, str]:
    names: dict[Any, str] = {m: n for n, m in model.named_modules()}
    for n, p in model.named_parameters():
        names.setdefault(p, n)
    return names


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output, in order: nested tuples/lists/dicts (Hugging Face's
    ModelOutput is one), and the tensor attributes of other objects (a dataclass of outputs)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return [v for v in getattr(out, "__dict__", {}).values() if isinstance(v, torch.Tensor)]


def _run_forward(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def build_dependency_graph(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Sequence[nn.Module] = (),
    output_transform: Any = None,
) -> tp.DependencyGraph:
    """Trace ``model`` with Torch-Pruning; failures name the module or op that broke the trace.

    ``output_transform`` (simprune.pruning.transformers.output_transform_of): None traces every
    tensor the model returns (ModelOutputs and nested containers included; cache objects ignored),
    a string one named output, a callable whatever it returns.

    The graph's channel-index propagation is bounded: a group whose indices run away through a
    reshape (swin_t) raises TracingError when it is built instead of exhausting memory.
    """
    from .transformers import output_transform_of  # transformers.py builds on this module

    transform = output_transform_of(output_transform)  # TypeError on a bad one, before tracing
    current: list[str] = []
    names = module_names(model)

    def pre(mod: nn.Module, _inp: Any) -> None:
        if mod is model:  # a new top-level call: forget modules of a failed earlier attempt
            current.clear()
        current.append(names.get(mod) or type(mod).__name__)

    def post(mod: nn.Module, _inp: Any, _out: Any) -> None:
        if current:
            current.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()]
    hooks += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.enable_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # ignored_layers are honoured when groups are collected, not here: a layer left
                # out of the trace would disconnect the graph around it.
                # Our own forward_fn: Torch-Pruning's default tries model(*example_inputs) first
                # (a bare tensor would be unpacked along the batch dimension) and retries on any
                # error, which hides the real one.
                dg = tp.DependencyGraph().build_dependency(
                    model,
                    example_inputs,
                    forward_fn=_run_forward,
                    output_transform=transform,
                    verbose=True,
                )
            except Exception as e:  # noqa: BLE001 - re-raised with the failing module named
                if current:
                    where = f"while running {current[-1]!r}"
                else:
                    frames = [
                        f
                        for f in traceback.extract_tb(e.__traceback__)
                        if "torch_pruning" in f.filename
                    ]
                    fn = frames[-1].name if frames else ""
                    op = next((v for k, v in _TP_STAGE_OPS.items() if k in fn), None)
                    where = (
                        f"in Torch-Pruning's {fn}" + (f", at {op}" if op else "")
                        if fn
                        else "after forward"
                    )
                raise TracingError(
                    f"could not trace the model with Torch-Pruning: {type(e).__name__}: {e} "
                    f"({where}). Check that example_inputs fit the model and that its forward "
                    "uses autograd-traceable tensor ops."
                ) from e
    finally:
        for h in hooks:
            h.remove()
    unknown = [str(w.message) for w in caught if "Unknown operation" in str(w.message)]
    if unknown:
        raise TracingError(
            "Torch-Pruning met an operation it cannot trace (it would be treated as element-wise "
            f"and could corrupt the channel groups): {unknown[0]}"
        )
    for w in caught:
        if "Unknown operation" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    # Memory guard. Torch-Pruning builds a group by pushing the root's channel indices through the
    # graph (get_pruning_group); a reshape's index mapping (_FlattenIndexMapping) multiplies them by
    # its stride, and a node is visited again whenever it is reached with a different index list.
    # Where a path loops back through such a reshape (torchvision's swin_t: the attention scores,
    # the relative position bias and the window reshapes of every block), each lap multiplies the
    # list again (32x: 768 -> 24,576 -> 786,432 -> ... indices at 224x224, copied onto every node
    # reached) and the process is killed past 24 GB (maxvit_t and swin_v2_t alike). The indices
    # themselves grow: no genuine one exceeds twice the widest dimension of a parameter or buffer
    # (a flatten feeds a Linear whose in_features is the flattened width), so a mapping that
    # produces one raises TracingError at once, naming the layers around that reshape. (A bounded
    # loop, e.g. a depth-to-space reshape, repeats indices with other root channels: lists grow a
    # few times, index values do not.)
    tensors = [*model.parameters(), *model.buffers()]
    dims = [max(t.shape) for t in tensors if t.dim()]
    if not dims:
        return dg
    limit = 2 * max(dims)
    flatten_cls = tp.dependency.index_mapping._FlattenIndexMapping

    def nearby(node: Any, k: int = 3) -> list[str]:
        seen, queue = {id(node)}, [node]
        found: list[str] = []
        while queue and len(found) < k and len(seen) < 10_000:
            n = queue.pop(0)
            name = names.get(n.module)
            if name and isinstance(n.module, (nn.Module, nn.Parameter)):
                found.append(name)
            for m in list(n.inputs) + list(n.outputs):
                if id(m) not in seen:
                    seen.add(id(m))
                    queue.append(m)
        return found

    class _BoundedFlatten(flatten_cls):  # type: ignore[misc, valid-type]
        dep: Any = None

        def __call__(self, idxs: Any) -> Any:
            out = super().__call__(idxs)
            if any(i.idx >= limit for i in out):
                where = ", ".join(nearby(self.dep.target)) if self.dep is not None else "?"
                raise TracingError(
                    "Torch-Pruning's channel-index propagation runs away at a reshape near "
                    f"{where}: the index mapping of a view/reshape/flatten maps {len(idxs)} "
                    f"channel indices to indices up to {max(i.idx for i in out)} (the widest "
                    f"parameter dimension is {max(dims)}), on a path that loops back through the "
                    "reshape and multiplies them on every lap (window partition / attention "
                    "products, as in Swin transformers). Torch-Pruning cannot build this model's "
                    "channel groups in bounded memory, so it is not supported."
                )
            return out

    def bound(v: Any, dep: Any) -> Any:
        if type(v) is flatten_cls:
            v.__class__ = _BoundedFlatten
            v.dep = dep
        return v

    class _Mappings(list):  # type: ignore[type-arg]
        # get_pruning_group re-creates the reshape mappings (dep.index_mapping[i] = ...) first
        dep: Any = None

        def __setitem__(self, i: Any, v: Any) -> None:
            super().__setitem__(i, bound(v, self.dep))

    for node in dg.module2node.values():
        for dep in node.dependencies:
            guarded = _Mappings(bound(v, dep) for v in dep.index_mapping)
            guarded.dep = dep
            dep.index_mapping = guarded
    return dg


def check_connected(
    dg: tp.DependencyGraph,
    model: nn.Module,
    ran: Sequence[nn.Module],
    ignored_layers: Sequence[nn.Module] = (),
) -> None:
    """TracingError when a Conv/Linear that ran in forward is missing from the traced graph.

    Such a layer was computed outside autograd (torch.no_grad, .detach(), a numpy round-trip), so
    Torch-Pruning cannot see what consumes it and would prune around it inconsistently.
    """
    names = module_names(model)
    ignored = set(map(id, ignored_layers))
    for mod in ran:
        if not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        if mod not in dg.module2node and id(mod) not in ignored:
            raise TracingError(
                f"layer {names.get(mod, '?')!r} ({type(mod).__name__}) runs in forward but is not "
                "connected to the output through autograd (torch.no_grad / detach / non-tensor op?); "
                "it cannot be traced. Add it to ignored_layers or make the forward differentiable."
            )


# The kinds of group member (what a plan records for its architecture check).
MEMBER_KINDS = ("producer", "depthwise", "consumer", "norm", "other")


def _kind(dep: Any) -> str:
    fn = dep.handler
    mod = dep.target.module
    if fn in DEPTHWISE_FNS:
        return "depthwise"
    if fn in PRODUCER_FNS:
        return "producer"
    if fn in CONSUMER_FNS:
        return "consumer"
    if isinstance(mod, NORM_TYPES):
        return "norm"
    return "other"


def reaches_output(item: Any) -> bool:
    """True when pruning this member changes a tensor the model returns.

    The traced graph ends at the model outputs: a node without outputs (or an explicit output
    node) is an output. A consumer's output channels are not in the group, so consumers are exempt.
    """
    if item.dep.handler in CONSUMER_FNS:
        return False
    node = item.dep.target
    return (
        node.type == tp.ops.OPTYPE.OUTPUT
        or not node.outputs
        or any(o.type == tp.ops.OPTYPE.OUTPUT for o in node.outputs)
    )


def _channel_groups_of(members: list[Member]) -> int:
    """Blocks whose channels must lose the same positions: the conv groups of a grouped conv and the
    groups of a GroupNorm (removing channels unevenly would regroup, or break, its statistics)."""
    cg = 1
    for m in members:
        mod = m.module
        if (
            isinstance(mod, nn.modules.conv._ConvNd)
            and mod.groups > 1
            and not (mod.groups == mod.in_channels == mod.out_channels)
        ):
            cg = math.lcm(cg, mod.groups)
        elif isinstance(mod, nn.GroupNorm) and mod.num_groups > 1:
            cg = math.lcm(cg, mod.num_groups)
    return cg


def _unprunable(members: list[Member]) -> str | None:
    """Why Torch-Pruning cannot rewrite a group, or None."""
    for m in members:
        mod = m.module
        if (
            isinstance(mod, nn.modules.conv._ConvNd)
            and mod.transposed
            and mod.groups > 1
            and m.kind != "depthwise"
        ):
            # Torch-Pruning slices a grouped ConvTranspose's weight (in, out/groups, ...) as if it
            # were a Conv's: the result has the wrong shape.
            return f"grouped ConvTranspose {m.name!r} (Torch-Pruning cannot prune its channels)"
        n = _extent(m)
        if n is not None and m.idxs and (max(m.idxs) >= n or min(m.idxs) < 0):
            # e.g. a Linear over a transposed tensor (a token-mixing MLP): Torch-Pruning's index
            # mapping points past the layer's features.
            side = "outputs" if m.kind in ("producer", "depthwise") else "inputs"
            return (
                f"Torch-Pruning maps the group's channels to index {max(m.idxs)} of {m.name!r}, "
                f"which has {n} {side} (an operation between the layers moves or mixes the "
                "channels: a transpose, a pixel shuffle, an einsum)"
            )
    return None


def _extent(m: Member) -> int | None:
    """The size of the dimension of ``m``'s layer its indices address (None: not checked)."""
    mod = m.module
    if not isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
        return None
    if m.kind in ("producer", "depthwise"):
        return int(mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels)
    if m.kind == "consumer":
        return int(mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels)
    return None


def collect_groups(
    dg: tp.DependencyGraph,
    model: nn.Module,
    ignored_layers: Sequence[nn.Module] = (),
    root_module_types: Sequence[type] = (nn.modules.conv._ConvNd, nn.Linear),
) -> tuple[list[ChannelGroup], list[tuple[str, str]]]:
    """The prunable channel groups of a traced model, and the skipped ones as (root, reason).

    Groups whose channels reach the model's output (a classifier's classes, a feature extractor's
    output channels) are never pruned: that would change what the model returns.
    """
    names = module_names(model)
    groups: list[ChannelGroup] = []
    skipped: list[tuple[str, str]] = []
    for g in dg.get_all_groups(
        ignored_layers=list(ignored_layers), root_module_types=list(root_module_types)
    ):
        root = g[0].dep.target.module
        root_name = names.get(root, str(root))
        n = len(g[0].idxs)
        if any(reaches_output(it) for it in g):
            skipped.append((root_name, "its channels reach the model output"))
            continue
        members, bad = members_of(g, names)
        if bad:
            skipped.append((root_name, bad))
            continue
        if not members:
            continue
        if not any(m.kind in ("producer", "depthwise") for m in members):
            skipped.append((root_name, "no Conv/Linear producer"))
            continue
        why = _unprunable(members)
        if why:
            skipped.append((root_name, why))
            continue
        cg = _channel_groups_of(members)
        if n % cg:
            skipped.append((root_name, f"{n} channels not divisible by {cg} conv groups"))
            continue
        grp = ChannelGroup(len(groups), root_name, n, cg, members, g)
        grp.bn_of = following_norms(dg, grp)
        groups.append(grp)
    return groups, skipped


def members_of(g: Any, names: dict[Any, str]) -> tuple[list[Member], str | None]:
    """The classified members of a Torch-Pruning group (element-wise/reshape nodes dropped)."""
    members: list[Member] = []
    for it in g:
        dep = it.dep
        mod = dep.target.module
        if dep.target.type in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE):
            continue
        if any(r is None for r in it.root_idxs):
            return [], f"index mapping of {names.get(mod, '?')} is unknown"
        members.append(
            Member(
                name=names.get(mod, str(mod)),
                module=mod,
                kind=_kind(dep),
                idxs=list(map(int, it.idxs)),
                root_idxs=list(map(int, it.root_idxs)),
            )
        )
    return members, None


def following_norms(dg: tp.DependencyGraph, grp: ChannelGroup) -> dict[str, nn.Module]:
    """producer name -> the BatchNorm that directly follows it (when that BN is in the group)."""
    bns = {
        id(m.module) for m in grp.members if isinstance(m.module, nn.modules.batchnorm._BatchNorm)
    }
    out: dict[str, nn.Module] = {}
    for m in grp.producers():
        node = dg.module2node.get(m.module)
        if node is None:
            continue
        nxt = [o for o in node.outputs if isinstance(o.module, nn.modules.batchnorm._BatchNorm)]
        if len(node.outputs) == 1 and nxt and id(nxt[0].module) in bns:
            out[m.name] = nxt[0].module
    return out


def group_at(dg: tp.DependencyGraph, model: nn.Module, root_name: str, index: int) -> ChannelGroup:
    """Rebuild the full channel group rooted at the output channels of ``root_name``."""
    try:
        mod = model.get_submodule(root_name)
    except AttributeError:
        raise ValueError(f"the model has no layer named {root_name!r}") from None
    if mod not in dg.module2node:
        raise ValueError(f"layer {root_name!r} is not part of the traced graph")
    pruner = dg.get_pruner_of_module(mod)
    n = pruner.get_out_channels(mod) if pruner is not None else None
    if n is None:
        raise ValueError(
            f"layer {root_name!r} ({type(mod).__name__}) has no prunable output channels"
        )
    g = dg.get_pruning_group(mod, pruner.prune_out_channels, list(range(n)))
    names = module_names(model)
    members, bad = members_of(g, names)
    if bad:
        raise ValueError(f"group {root_name!r}: {bad}")
    grp = ChannelGroup(index, root_name, n, _channel_groups_of(members), members, g)
    grp.bn_of = following_norms(dg, grp)
    return grp
