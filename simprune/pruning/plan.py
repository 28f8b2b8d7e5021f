"""``PruningPlan``: what to keep and how to merge, as JSON; replayable on a fresh model.

A plan lists, per channel group, the root layer's name, the group's members (to detect a different
architecture), the kept channels and the merges (removed channel, representative, coefficient) --
for a wide data merge, dense coefficient matrices instead (``GroupPlan.dense``, base64 in the JSON:
:class:`~simprune.pruning.merge.DenseMerge`) -- and the data merge's bias shifts. The
rewrite (merge, then Torch-Pruning's prune functions) is the same code for :func:`simprune.prune` and
:func:`apply_plan`, so replaying a plan on the original architecture reproduces the pruned model
exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibrate import check_data_type, recalibrate_bn
from .groups import MEMBER_KINDS, ChannelGroup, build_dependency_graph, group_at
from .merge import DenseMerge, apply_dense, apply_merges, apply_shifts
from .transformers import (
    HeadGroup,
    check_mlp_roots,
    conv1d_to_linear,
    head_group_at,
    linear_to_conv1d,
    probe_channels,
    remove_heads,
    set_use_cache,
    verify_all,
)

# 1: triples only; 2: a group may hold dense merge blocks ("dense"). A plan is written as format 1
# when it has none (readable by every version), as 2 otherwise (an older simprune refuses it by
# its format number; PruningPlan.format); both are read.
PLAN_FORMATS = (1, 2)


@dataclass
class GroupPlan:
    """One channel group of a plan."""

    root: str
    n_channels: int
    ch_groups: int
    members: list[list[str]]  # [name, kind] of every member, for architecture checks
    kept: list[int]  # root channels kept (sorted)
    # [removed, kept, coefficient]: W[:, kept] += coefficient * W[:, removed] in every consumer. The
    # descriptor merges ("ls", "sum") give one entry per removed channel; the data merge ("data")
    # one per (removed, kept) pair of its least-squares reconstruction -- as triples up to
    # merge.DENSE_MERGE_ENTRIES pairs in the group, else in ``dense``.
    merges: list[list[Any]] = field(default_factory=list)
    # [removed, constant c]: every consumer's bias += c * (the weights reading ``removed``), summed
    # over its positions (data merge: c = mu_removed - sum_kept coefficient * mu_kept).
    shifts: list[list[Any]] = field(default_factory=list)
    # The data merge of a wide group, one dense block per conv group: W[:, kept] += W[:, removed] @
    # coef in every consumer (merge.DenseMerge; the same fold as the triples). In the JSON only when
    # non-empty: {"removed": [...], "kept": [...], "coef": {"dtype", "shape", "base64"}} per block.
    dense: list[DenseMerge] = field(default_factory=list)

    @property
    def removed(self) -> list[int]:
        keep = set(self.kept)
        return [c for c in range(self.n_channels) if c not in keep]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``dense`` appears only when non-empty (small plans are as before)."""
        d = asdict(replace(self, dense=[]))
        del d["dense"]
        if self.dense:
            d["dense"] = [dm.to_json() for dm in self.dense]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupPlan:
        """The inverse of :meth:`to_dict` (checked: ValueError naming the first inconsistency)."""
        d = dict(d)
        dense = d.pop("dense", [])
        if not isinstance(dense, list):
            raise ValueError("dense must be a list of dense merges")
        gp = cls(**copy.deepcopy(d))  # the plan owns its lists
        try:
            gp.dense = [DenseMerge.from_json(b) for b in dense]
        except ValueError as e:
            raise ValueError(f"plan group {gp.root!r}: {e}") from None
        gp.check()
        return gp

    def check(self) -> None:
        """ValueError naming the first inconsistency of a (possibly hand-edited) group plan."""
        where = f"plan group {self.root!r}"
        n = self.n_channels
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"{where}: n_channels must be an int >= 1, got {n!r}")
        if not (
            isinstance(self.ch_groups, int) and self.ch_groups >= 1 and n % self.ch_groups == 0
        ):
            raise ValueError(
                f"{where}: ch_groups must divide n_channels={n}, got {self.ch_groups!r}"
            )
        kept = self.kept
        if not kept or any(not isinstance(c, int) or isinstance(c, bool) for c in kept):
            raise ValueError(f"{where}: kept must be a non-empty list of channel indices")
        bad = [c for c in kept if not 0 <= c < n]
        if bad:
            raise ValueError(f"{where}: kept channel(s) {bad[:5]} out of range [0, {n})")
        if len(set(kept)) != len(kept):
            dup = sorted({c for c in kept if kept.count(c) > 1})
            raise ValueError(f"{where}: kept lists channel(s) {dup[:5]} more than once")
        if kept != sorted(kept):
            raise ValueError(f"{where}: kept must be sorted ascending")
        for m in self.members:
            if not (isinstance(m, (list, tuple)) and len(m) == 2 and m[1] in MEMBER_KINDS):
                raise ValueError(
                    f"{where}: member {m!r} must be [name, kind] with kind in {MEMBER_KINDS}"
                )
        removed, keep = set(self.removed), set(kept)
        seen: set[tuple[int, int]] = set()
        for mg in self.merges:
            if not (isinstance(mg, (list, tuple)) and len(mg) == 3):
                raise ValueError(f"{where}: merge {mg!r} must be [removed, representative, coef]")
            j, r, a = mg
            if j not in removed or (j, r) in seen:
                raise ValueError(
                    f"{where}: merge {mg!r}: channel {j!r} is not a removed channel, or is merged "
                    f"twice (into {r!r})"
                )
            if r not in keep:
                raise ValueError(f"{where}: merge {mg!r}: representative {r!r} is not kept")
            if not (isinstance(a, (int, float)) and math.isfinite(a)):
                raise ValueError(f"{where}: merge {mg!r}: coefficient must be a finite number")
            seen.add((j, r))
        merged = {j for j, _ in seen}
        for k, dm in enumerate(self.dense):
            what = f"{where}: dense merge {k}"
            if not isinstance(dm, DenseMerge):
                raise ValueError(f"{what} must be a DenseMerge, got {type(dm).__name__}")
            rm, kp, cf = dm.removed, dm.kept, dm.coef
            if not (
                isinstance(rm, np.ndarray) and rm.ndim == 1 and rm.dtype.kind == "i"
                and isinstance(kp, np.ndarray) and kp.ndim == 1 and kp.dtype.kind == "i"
            ):  # fmt: skip
                raise ValueError(f"{what}: removed and kept must be 1-d integer arrays")
            if not (
                isinstance(cf, np.ndarray)
                and cf.dtype in (np.float32, np.float64)
                and cf.shape == (len(rm), len(kp))
            ):
                raise ValueError(
                    f"{what}: coef must be a float32/float64 array of shape |removed| x |kept| = "
                    f"({len(rm)}, {len(kp)})"
                )
            rl, kl = rm.tolist(), kp.tolist()
            if rl != sorted(set(rl)) or kl != sorted(set(kl)):
                raise ValueError(f"{what}: removed and kept must be sorted without repeats")
            bad_r = [j for j in rl if j not in removed or j in merged]
            if bad_r:
                raise ValueError(
                    f"{what}: channel(s) {bad_r[:5]} not removed channels, or merged twice"
                )
            bad_k = [r for r in kl if r not in keep]
            if bad_k:
                raise ValueError(f"{what}: channel(s) {bad_k[:5]} are not kept channels")
            if not np.isfinite(cf).all():
                raise ValueError(f"{what}: coefficients must be finite")
            merged.update(rl)
        shifted: set[int] = set()
        for sh in self.shifts:
            if not (isinstance(sh, (list, tuple)) and len(sh) == 2):
                raise ValueError(f"{where}: shift {sh!r} must be [removed, constant]")
            j, c = sh
            if j not in removed or j in shifted:
                raise ValueError(
                    f"{where}: shift {sh!r}: channel {j!r} is not a removed channel, or is shifted "
                    "twice"
                )
            if not (isinstance(c, (int, float)) and math.isfinite(c)):
                raise ValueError(f"{where}: shift {sh!r}: the constant must be a finite number")
            shifted.add(j)


@dataclass
class PruningPlan:
    """The decisions of one :func:`simprune.prune` call; JSON round-trip with save/load."""

    groups: list[GroupPlan]
    example_inputs: list[dict[str, Any]]  # shape and dtype of each example input tensor
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def format(self) -> int:
        """The format the plan is written in: 2 when a group holds dense merge blocks, else 1."""
        return 2 if any(gp.dense for gp in self.groups) else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, groups=[]))
        d["groups"] = [gp.to_dict() for gp in self.groups]
        d["format"] = self.format
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruningPlan:
        if d.get("format") not in PLAN_FORMATS:
            raise ValueError(
                f"unsupported plan format {d.get('format')!r}; this simprune reads {PLAN_FORMATS} "
                "(a newer simprune wrote it?)"
            )
        if d.get("format") == 1 and any(g.get("dense") for g in d["groups"]):
            raise ValueError("malformed plan: format 1 cannot hold dense merge blocks")
        groups = []
        for k, g in enumerate(d["groups"]):
            try:
                gp = GroupPlan.from_dict(g)
            except TypeError as e:
                raise ValueError(f"malformed plan group {k}: {e}") from None
            groups.append(gp)
        return cls(groups, d["example_inputs"], d.get("settings", {}), d.get("versions", {}))

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        with open(path) as f:
            return cls.from_json(f.read())

    @property
    def n_removed(self) -> int:
        return sum(g.n_channels - len(g.kept) for g in self.groups)


def describe_inputs(example_inputs: Any) -> list[dict[str, Any]]:
    """Shape and dtype of each example input tensor; keyword inputs (a dict) also record their
    ``name``. Empty when an input is not a tensor (apply_plan then needs example_inputs)."""
    if isinstance(example_inputs, dict):
        items = list(example_inputs.items())
    elif isinstance(example_inputs, (tuple, list)):
        items = [(None, x) for x in example_inputs]
    else:
        items = [(None, example_inputs)]
    out = []
    for name, x in items:
        if not isinstance(x, torch.Tensor):
            return []  # not reproducible from shapes: apply_plan then needs example_inputs
        d: dict[str, Any] = {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
        if name is not None:
            d["name"] = str(name)
        out.append(d)
    return out


def _inputs_from(desc: list[dict[str, Any]]) -> Any:
    """Zeros of the recorded shapes: a tensor, a tuple, or a dict for keyword inputs (an integer
    ``*mask*`` keyword gets ones: a mask of zeros would hide every token)."""
    if not desc:
        raise ValueError("this plan does not record its example inputs; pass example_inputs=")
    xs = [
        (torch.ones if "mask" in d.get("name", "") else torch.zeros)(
            d["shape"], dtype=getattr(torch, d["dtype"])
        )
        for d in desc
    ]
    if all("name" in d for d in desc):
        return {d["name"]: x for d, x in zip(desc, xs, strict=True)}
    return xs[0] if len(xs) == 1 else tuple(xs)


def _to_device(example_inputs: Any, dev: torch.device) -> Any:
    if isinstance(example_inputs, dict):
        return {k: _to_device(v, dev) for k, v in example_inputs.items()}
    if isinstance(example_inputs, tuple):
        return tuple(_to_device(v, dev) for v in example_inputs)
    return example_inputs.to(dev) if isinstance(example_inputs, torch.Tensor) else example_inputs


def _check_group(gp: GroupPlan, grp: ChannelGroup) -> None:
    if grp.n_channels != gp.n_channels:
        raise ValueError(
            f"plan does not match the model: layer {gp.root!r} has {grp.n_channels} output "
            f"channels, the plan expects {gp.n_channels}"
        )
    have = [[m.name, m.kind] for m in grp.members]
    for k, (want, got) in enumerate(zip(gp.members, have, strict=False)):
        if list(want) != got:
            raise ValueError(
                f"plan does not match the model: member {k} of group {gp.root!r} is {got[0]!r} "
                f"({got[1]}), the plan expects {want[0]!r} ({want[1]})"
            )
    if len(have) != len(gp.members):
        raise ValueError(
            f"plan does not match the model: group {gp.root!r} has {len(have)} members, the plan "
            f"expects {len(gp.members)}"
        )


def plan_groups(model: nn.Module, dg: Any, group_plans: list[GroupPlan]) -> list[ChannelGroup]:
    """The channel group of every plan group in a traced ``model``, checked against the plan."""
    for gp in group_plans:
        gp.check()
    groups: list[ChannelGroup] = []
    for k, gp in enumerate(group_plans):
        heads = head_group_at(model, gp.root, k)  # an attention module: its heads
        groups.append(heads if heads is not None else group_at(dg, model, gp.root, k))
    for gp, grp in zip(group_plans, groups, strict=True):
        _check_group(gp, grp)
    return groups


@torch.no_grad()
def execute(
    model: nn.Module,
    dg: Any,
    group_plans: list[GroupPlan],
    groups: list[ChannelGroup] | None = None,
) -> None:
    """Merge, then prune, every group of the plan in ``model`` (in place). ``groups``: the result of
    :func:`plan_groups` when the caller has it."""
    if groups is None:
        groups = plan_groups(model, dg, group_plans)
    # Mean shifts of the data merge: they read the removed channels' consumer weights, which no
    # merge changes (merges add to the kept channels' weights only).
    for gp, grp in zip(group_plans, groups, strict=True):
        if gp.shifts:
            apply_shifts(grp, [(int(j), float(c)) for j, c in gp.shifts])
    # All merges first: they read the original consumer weights of every group.
    for gp, grp in zip(group_plans, groups, strict=True):
        if gp.dense:
            apply_dense(grp, gp.dense)
        if gp.merges:
            apply_merges(grp, [(int(j), int(r), float(a)) for j, r, a in gp.merges])
    for gp, grp in zip(group_plans, groups, strict=True):
        removed = gp.removed
        if not removed:
            continue
        if isinstance(grp, HeadGroup):  # whole heads: rows, columns and head counts
            remove_heads(model, grp, sorted({c % grp.n_units for c in removed}))
            continue
        mod = model.get_submodule(gp.root)
        pruner = dg.get_pruner_of_module(mod)
        dg.get_pruning_group(mod, pruner.prune_out_channels, removed).prune()


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: Any = None,
    *,
    inplace: bool = False,
    calibration_data: Any = None,
    verify: bool = True,
    output_transform: Any = None,
) -> nn.Module:
    """Reproduce a pruned model from a fresh model of the same architecture and a plan.

    Parameters
    ----------
    model : the unpruned model (same architecture and weights as when the plan was made, for an
        identical result; other weights give the same widths with these merges).
    plan : a :class:`PruningPlan` (or a path to its JSON file).
    example_inputs : inputs for tracing (a tensor, a tuple, or a dict of keyword arguments);
        default: zeros of the shapes (and keyword names) recorded in the plan.
    inplace : modify ``model`` itself instead of a copy.
    calibration_data : inputs to re-estimate the BatchNorm statistics on afterwards, as in
        :func:`simprune.prune` (:func:`simprune.recalibrate_bn`); None leaves them as they are.
    verify : check the rewrite against the real forward as :func:`simprune.prune` does
        (:mod:`simprune.pruning.verify`): consumers Torch-Pruning rewired wrongly are corrected
        (as ``prune`` corrected them, so the replay equals the pruned model); a group that fails
        raises ValueError (a replay cannot re-solve the cut: prune again).
    output_transform : which outputs to trace, as in :func:`simprune.prune`; default: the output
        name the plan records (a callable given to ``prune`` must be given again).

    Raises ValueError naming the first mismatch when the architecture differs from the plan's.
    """
    if calibration_data is not None:
        check_data_type(calibration_data)
    if isinstance(plan, (str, os.PathLike)):
        plan = PruningPlan.load(plan)
    recorded = plan.settings.get("output_transform")
    if output_transform is None and recorded is not None:
        if recorded == "<callable>":
            raise ValueError(
                "this plan was made with a callable output_transform; pass it again "
                "(output_transform=...)"
            )
        output_transform = recorded
    if example_inputs is None:
        example_inputs = _inputs_from(plan.example_inputs)
        dev = next((p.device for p in model.parameters()), None)
        if dev is not None:
            example_inputs = _to_device(example_inputs, dev)
    work = model if inplace else copy.deepcopy(model)
    training = work.training
    use_cache = set_use_cache(work, False)  # as prune traced it: no key/value cache
    converted = conv1d_to_linear(work)  # GPT-2's Conv1D, as prune rewrote it
    dg = build_dependency_graph(work, example_inputs, output_transform=output_transform)
    if plan.settings.get("scope") == "mlp":
        # Only MLP roots are traversed: an edited root elsewhere could run away (transformers.py).
        roots = [gp.root for gp in plan.groups if head_group_at(work, gp.root, 0) is None]
        check_mlp_roots(dg, work, roots)
    groups = plan_groups(work, dg, plan.groups)
    probe = probe_channels(work, example_inputs, groups) if verify else None
    original = None
    if verify:
        original = copy.deepcopy(work) if inplace or converted else model
    execute(work, dg, plan.groups, groups)
    if original is not None and probe is not None:
        res = verify_all(original, work, groups, plan.groups, probe, example_inputs)
        if not res.ok:
            why = "; ".join(f"group {plan.groups[gi].root!r}: {r}" for gi, r in res.failed.items())
            raise ValueError(f"the plan does not verify on this model ({why}); prune it again")
    work.train(training)
    if converted:
        linear_to_conv1d(work)
    set_use_cache(work, use_cache)
    if calibration_data is not None:
        recalibrate_bn(work, calibration_data)
    return work
