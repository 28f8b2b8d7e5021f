"""simprune's similarity criterion inside Torch-Pruning: a one-line swap of the importance.

>>> import torch, torch_pruning as tp
>>> from torch import nn
>>> from simprune.integrations.torch_pruning import SimilarityImportance
>>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3))
>>> imp = SimilarityImportance()  # instead of tp.importance.GroupMagnitudeImportance(p=2)
>>> pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 8, 8), imp, pruning_ratio=0.5,
...                               ignored_layers=[model[3]])
>>> pruner.step()
>>> model[0].out_channels
8

Scores come from each group's dendrogram (lower = prune first): walking the merges in order, a
cluster is represented by its highest-energy channel, and the weaker representative of every merge is
removed and scores the merge's height; the group's last survivor scores ``+inf``. Torch-Pruning's
"remove the k lowest" is then exactly "cut the dendrogram into n - k clusters and keep each cluster's
representative", so ``pruning_ratio``, ``global_pruning``, ``pruning_ratio_dict``, ``round_to``,
``iterative_steps`` and ``max_pruning_ratio`` keep their meaning.

Merge compensation needs the interactive mode. :meth:`SimilarityImportance.prune` folds each removed
channel into its representative (in every consumer of the group), prunes, and verifies the rewrite
against the real forward as :func:`simprune.prune` does (a group Torch-Pruning rewrites wrongly is
corrected or restored, with a warning)::

    for group in pruner.step(interactive=True):
        imp.prune(group, example_inputs)

(:meth:`SimilarityImportance.merge` then ``group.prune()`` is the same without the verification.)
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..dendrogram import redundancy_scores
from ..engine import (
    channel_energy,
    check_metric_and_method,
    default_metric,
    dendrograms,
    scale_from_energy,
)
from ..pruning.calibrate import check_data_type
from ..pruning.descriptors import group_descriptors
from ..pruning.groups import (
    ChannelGroup,
    following_norms,
    members_of,
    module_names,
    reaches_output,
)
from ..pruning.merge import (
    MERGE_MODES,
    DenseMerge,
    apply_dense,
    apply_merges,
    apply_shifts,
    assign,
    data_merge_blocks,
    expand_units,
)
from ..pruning.stats import attach_stats, collect_stats
from ..pruning.verify import probe_positions, verify_rewrite

__all__ = ["SimilarityImportance", "representatives_of_removed"]

# Torch-Pruning's normalizer names (GroupMagnitudeImportance._normalize), plus simprune's "energy".
TP_NORMALIZERS = ("sum", "standarization", "mean", "max", "gaussian", "lamp")


@dataclass
class _Entry:
    """One group's engine results at scoring time."""

    group: ChannelGroup
    v: torch.Tensor  # (n_units, d) descriptors, on the weights' device
    z: np.ndarray  # (n_units - 1, 4) linkage
    energy: torch.Tensor  # (n_units,) float64 priority
    scores: torch.Tensor  # (n_units,) float64 raw heights, +inf for the survivor
    scale: float  # RMS descriptor norm (1 for cosine)


def _tp_channel_groups(dg: Any, g: Any) -> int:
    """Torch-Pruning's channel-group count of a group (BasePruner._get_channel_groups, auto part).

    MetaPruner averages the importance over ``ch_groups`` equal slices, so the scores must be
    periodic with exactly this period: a pruning unit is one position in every slice.
    """
    cgs = [1]
    for it in g:
        dep = it.dep
        m = dep.target.module
        # Depthwise convs carry no channel grouping in Torch-Pruning (they are skipped there too).
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None:
            continue
        if dg.is_out_channel_pruning_fn(dep.handler):
            c = pruner.get_out_channel_groups(m)
        else:
            c = pruner.get_in_channel_groups(m)
        cgs.append(int(c or 1))
    return max(cgs)


def _state_token(dg: Any) -> tuple:
    """Identity, storage, shape and in-place version of every parameter of the traced model.

    Torch-Pruning replaces a pruned layer's parameters and optimisers update them in place (which
    bumps ``_version``), so a changed token means the cached dendrograms are stale. Writes through
    ``.data`` are invisible to the version counter: call :meth:`SimilarityImportance.invalidate`.
    """
    items = []
    for m in dg.module2node:
        if isinstance(m, nn.Parameter):
            ps = [m]
        elif isinstance(m, nn.Module):
            ps = list(m.parameters(recurse=False))
        else:
            continue
        for p in ps:
            items.append((id(p), p._version, p.data_ptr(), tuple(p.shape)))
    return tuple(items)


def _group_key(dg: Any, g: Any) -> tuple[int, bool]:
    dep = g[0].dep
    return id(dep.target.module), bool(dg.is_out_channel_pruning_fn(dep.handler))


def representatives_of_removed(
    z: np.ndarray, removed: Sequence[int], priority: torch.Tensor
) -> dict[int, int]:
    """Representative (a kept channel) of every removed channel, for any removed set.

    Walks the merges of ``z`` in order. A cluster without a kept channel carries its removed
    channels along; when it meets a cluster with kept channels they are assigned to that cluster's
    highest-``priority`` kept channel (ties: lowest index). When ``removed`` is the set of the k
    lowest redundancy scores this is exactly "cut into n - k clusters, keep each cluster's
    representative". Channels of a tree with no kept channel at all get none.
    """
    n = z.shape[0] + 1
    rem = np.zeros(n, dtype=bool)
    rem[np.asarray(list(removed), dtype=np.int64)] = True
    pr = priority.detach().cpu().to(torch.float64).numpy()
    best: list[int] = [-1 if rem[i] else i for i in range(n)] + [-1] * (n - 1)
    pending: list[list[int]] = [[i] if rem[i] else [] for i in range(n)] + [
        [] for _ in range(n - 1)
    ]
    out: dict[int, int] = {}

    def better(a: int, b: int) -> int:
        if a < 0:
            return b
        if b < 0:
            return a
        return a if (pr[a] > pr[b] or (pr[a] == pr[b] and a < b)) else b

    for r in range(n - 1):
        a, b = int(z[r, 0]), int(z[r, 1])
        ka, kb = best[a], best[b]
        k = better(ka, kb)
        if k >= 0:
            # A kept channel now shares the cluster: everything still pending folds into it.
            for j in pending[a] + pending[b]:
                out[j] = k
            pending[n + r] = []
        else:
            pending[n + r] = pending[a] + pending[b]
        best[n + r] = k
        pending[a] = pending[b] = []
    return out


class SimilarityImportance(tp.importance.Importance):
    """Torch-Pruning importance from simprune's channel-similarity dendrograms (lower = prune first).

    Parameters
    ----------
    metric : str, optional
        "gaussian", "wasserstein", "linear", "cosine", "euclidean", "sqeuclidean" or
        "activation" (needs ``data``); None (default): "activation" when ``data`` is given, else
        "gaussian" (as :func:`simprune.prune` chooses; groups the data cannot measure are then
        scored with "gaussian", with a warning). Descriptor metric, as in :func:`simprune.prune`
        (``gaussian``, the probabilistic channel-similarity metric derived from the paper's stated
        model, for Conv/Linear + BN; producers without a following BN use ``linear``). Coupled
        groups concatenate the descriptors of every producer.
    method : scipy linkage method ("average" default, on sqrt(D); "ward", "complete", ...).
    normalizer : how scores are scaled per group (matters for ``global_pruning`` only; all of them
        preserve the order within a group). ``"energy"`` (default): heights divided by the group's
        RMS descriptor norm, the scale-free heights that :func:`simprune.prune`'s global cut ranks
        (cosine heights are left as they are). Torch-Pruning's names: ``None``, ``"mean"``,
        ``"max"``, ``"sum"``, ``"standarization"``, ``"gaussian"``, ``"lamp"``, ``"sentinel_<q>"``,
        or a callable; they are applied to the finite scores of the group's pruning units (the
        survivor keeps ``+inf``).
    merge : {"ls", "sum", "data"}, optional
        How :meth:`merge` folds removed channels (see :mod:`simprune.pruning.merge`): into their
        representative with the descriptor coefficient ("ls", "sum"), or, "data", each removed
        channel reconstructed from all kept channels of its group by ridge least squares on the
        statistics of ``data``, with the mean shift into the consumers' biases (as
        :func:`simprune.prune`'s ``merge="data"``; a group the data cannot measure uses "ls", with a
        warning). None (default): "data" when ``data`` is given, else "ls".
    data : Tensor or iterable of batches, optional
        Calibration inputs for ``metric="activation"`` and ``merge="data"`` (required there): every
        time the scores are computed, one forward pass over ``data`` measures each group's channels
        at its consumers' inputs (:func:`simprune.pruning.stats.collect_stats`; the model as it is
        at that step): the distances are D_ij = Var(z_i - z_j), the merge is fitted on them.
    backend : engine backend ("auto", "torch", "cpu", "triton", "cuda").
    root_module_types : layer types whose output channels root the groups scored in one batch
        (Torch-Pruning's default roots, minus LSTM, which has no descriptor).

    Notes
    -----
    On the first call of a pruning step the importance scores *every* group of the dependency graph
    in one engine pass (one batched distance call, then the linkages) and caches the results; the
    cache is rebuilt when any parameter is replaced (Torch-Pruning's ``step()``) or updated in place
    (fine-tuning between iterative steps). ``passes`` counts the batched passes.

    Grouped (non-depthwise) convolutions: Torch-Pruning removes the same positions in every conv
    group and averages the importance over the groups; the descriptor of a position concatenates
    its channels in every group and the returned scores repeat the position's score in every group.

    A group without a Conv/Linear producer (e.g. LSTM) scores ``None``: Torch-Pruning skips it.
    Attention-head pruning (``num_heads``) is not supported.
    """

    def __init__(
        self,
        metric: str | None = None,
        method: str = "average",
        normalizer: str | Callable[[torch.Tensor], torch.Tensor] | None = "energy",
        merge: str | None = None,
        backend: str = "auto",
        root_module_types: Sequence[type] = (nn.modules.conv._ConvNd, nn.Linear),
        data: Any = None,
    ) -> None:
        self._metric_by_default = metric is None
        metric = default_metric(metric, data is not None)
        check_metric_and_method(metric, method)
        if metric == "activation" and data is None:
            raise ValueError("metric='activation' needs data= (calibration inputs)")
        if data is not None:
            check_data_type(data)
        self.data = data
        if not (
            normalizer is None
            or callable(normalizer)
            or normalizer == "energy"
            or normalizer in TP_NORMALIZERS
            or (isinstance(normalizer, str) and _is_sentinel(normalizer))
        ):
            raise ValueError(
                f"unknown normalizer {normalizer!r}; expected 'energy', None, a callable or one of "
                f"Torch-Pruning's {TP_NORMALIZERS + ('sentinel_<q>',)}"
            )
        if merge is None:
            merge = "data" if data is not None else "ls"
        if merge not in (*MERGE_MODES, "data"):
            raise ValueError(f"merge must be one of {(*MERGE_MODES, 'data')}, got {merge!r}")
        if merge == "data" and data is None:
            raise ValueError("merge='data' needs data= (calibration inputs)")
        self.metric = metric
        self.method = method
        self.normalizer = normalizer
        self.merge_mode = merge
        self.backend = backend
        self.root_module_types = tuple(root_module_types)
        self.passes = 0
        self._dg: Any = None
        self._token: tuple | None = None
        self._entries: dict[tuple[int, bool], _Entry] = {}
        # Torch-Pruning's own normalisation code, so its vocabulary means exactly the same thing.
        self._tp_norm = tp.importance.GroupMagnitudeImportance(normalizer=None)

    # ----------------------------------------------------------------------------- scoring
    def invalidate(self) -> None:
        """Forget the cached dendrograms (after editing weights through ``.data``)."""
        self._token = None
        self._entries = {}

    def _build(self, dg: Any, g: Any, names: dict[Any, str]) -> ChannelGroup | None:
        members, bad = members_of(g, names)
        if bad or not any(m.kind in ("producer", "depthwise") for m in members):
            return None
        n = len(g[0].idxs)
        cg = _tp_channel_groups(dg, g)
        if cg < 1 or n % cg:
            return None
        root = g[0].dep.target.module
        grp = ChannelGroup(0, names.get(root, str(root)), n, cg, members, g)
        grp.bn_of = following_norms(dg, grp)
        return grp

    def _compute(self, groups: list[ChannelGroup], model: nn.Module) -> list[_Entry]:
        if self.metric == "activation" or self.merge_mode == "data":
            attach_stats(groups, collect_stats(model, groups, self.data))
        vs, unmeasured = [], []
        for grp in groups:
            metric = self.metric
            if metric == "activation" and grp.stats is None and self._metric_by_default:
                metric = "gaussian"  # same engine settings (metric_info), scale-free heights
                unmeasured.append(grp.root_name)
            try:
                vs.append(group_descriptors(grp, metric))
            except ValueError as e:
                raise ValueError(f"group {grp.root_name!r}: {e}") from e
        if unmeasured:
            warnings.warn(
                f"SimilarityImportance: no consumer input of group(s) {unmeasured[:5]}"
                f"{' ...' if len(unmeasured) > 5 else ''} holds all of their channels, so the data "
                "cannot measure them; they are scored with the 'gaussian' metric (pass "
                "metric='activation' to refuse instead)",
                stacklevel=3,
            )
        zs = dendrograms(vs, self.metric, self.method, self.backend)
        self.passes += 1
        out = []
        for grp, v, z in zip(groups, vs, zs, strict=True):
            # Descriptors stay where they were computed (copied to the host only by merge()).
            vc = v.detach()
            energy = channel_energy(vc).cpu()
            if z.shape[0]:
                s = redundancy_scores(torch.from_numpy(z), energy)
            else:
                s = torch.full((1,), math.inf, dtype=torch.float64)
            out.append(_Entry(grp, vc, z, energy, s, scale_from_energy(energy, self.metric)))
        return out

    def _refresh(self, dg: Any) -> None:
        """Score every group of ``dg`` in one engine pass when the cache is stale."""
        token = _state_token(dg)
        if dg is self._dg and token == self._token:
            return
        names = module_names(dg.model)
        built = []
        for g in dg.get_all_groups(root_module_types=list(self.root_module_types)):
            if any(reaches_output(it) for it in g):
                # A classifier's classes: pruners ignore these layers in practice, so they are
                # left out of the batch and scored on demand (by _entry) if ever asked for.
                continue
            grp = self._build(dg, g, names)
            if grp is not None:
                built.append((_group_key(dg, g), grp))
        entries = self._compute([grp for _, grp in built], dg.model) if built else []
        self._entries = {key: e for (key, _), e in zip(built, entries, strict=True)}
        self._dg, self._token = dg, token

    def _entry(self, group: Any) -> _Entry | None:
        dg = getattr(group, "_DG", None)
        if dg is None:
            raise ValueError(
                "the group has no dependency graph (expected a group made by "
                "torch_pruning.DependencyGraph)"
            )
        self._refresh(dg)
        key = _group_key(dg, group)
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        # A root outside the batch (another root type, an attention re-rooting): score it alone.
        dep = group[0].dep
        mod = dep.target.module
        if dg.is_out_channel_pruning_fn(dep.handler):
            n = dg.get_out_channels(mod)
        else:
            n = dg.get_in_channels(mod)
        if n is None:
            return None
        full = dg.get_pruning_group(mod, dep.handler, list(range(n)))
        grp = self._build(dg, full, module_names(dg.model))
        if grp is None:
            return None
        (entry,) = self._compute([grp], dg.model)
        self._entries[key] = entry
        return entry

    def _normalize(self, e: _Entry) -> torch.Tensor:
        s = e.scores.clone()
        fin = torch.isfinite(s)
        x = s[fin]
        if x.numel() == 0 or self.normalizer is None:
            return s
        if self.normalizer == "energy":
            s[fin] = x / e.scale
            return s
        if float(x.abs().max()) == 0.0:
            # All redundant channels are exact duplicates: every normalisation would give 0 (or
            # 0/0); keep the zeros.
            return s
        # Torch-Pruning's LAMP code allocates float32 buffers: give it the float32 it expects.
        xin = x.float() if self.normalizer == "lamp" else x
        y = self._tp_norm._normalize(xin, self.normalizer)
        s[fin] = torch.as_tensor(y, dtype=torch.float64)
        return s

    @torch.no_grad()
    def __call__(self, group: Any, **kwargs: Any) -> torch.Tensor | None:
        """Scores (float64, CPU) of the group's root channels, in ``group[0].idxs`` order."""
        entry = self._entry(group)
        if entry is None:
            return None
        units = self._normalize(entry)
        scores = units.repeat(entry.group.ch_groups)  # channel u + k * n_units -> unit u
        idxs = torch.as_tensor([int(i) for i in group[0].root_idxs], dtype=torch.int64)
        if idxs.numel() and (int(idxs.min()) < 0 or int(idxs.max()) >= scores.numel()):
            raise ValueError(
                f"group root indices out of range for {entry.group.root_name!r} "
                f"({scores.numel()} channels)"
            )
        return scores[idxs]

    # ----------------------------------------------------------------------------- merging
    @torch.no_grad()
    def merge(self, group: Any) -> int:
        """Fold each channel the group removes into the kept ones, before ``group.prune()``.

        ``group`` is a group yielded by ``pruner.step(interactive=True)`` (its root indices are the
        channels to remove). For every consumer of the group (the layers that read these channels),
        ``W[:, r] += a_j * W[:, j]`` with r the kept representative of j's cluster in this step's
        dendrogram and a_j the ``merge`` coefficient; with ``merge="data"``, ``W_K += W_R B^T`` and
        ``bias += W_R c`` from the group's statistics on ``data``. Returns the number of folded
        input slices and shifted channels (0 when nothing is folded). Torch-Pruning's index bookkeeping is trusted here:
        :meth:`prune` merges, prunes and checks the rewrite against the real forward.

        Raises ValueError when the group's channels changed since scoring (stale scores) or when a
        grouped-conv group does not remove the same positions in every conv group.
        """
        got = self._channel_merges(group)
        return _apply(got) if got is not None else 0

    def prune(self, group: Any, example_inputs: Any) -> bool:
        """Merge (:meth:`merge`), prune, and verify the rewrite of one interactive group.

        ``for group in pruner.step(interactive=True): imp.prune(group, example_inputs)``. Before
        the rewrite, where the group's channels land in every consumer's input is probed on the
        model (:func:`simprune.pruning.verify.probe_positions`); after ``group.prune()`` each
        consumer's weights are compared with the original's at those positions (corrected where
        Torch-Pruning removed the wrong features) and the pruned model must equal a copy of the
        model taken before, with the removed channels' inputs dropped (merged), on
        ``example_inputs`` (as :func:`simprune.prune`'s ``verify=True``). A group that fails is
        **restored** (its layers as they were; the model computes what it computed before) with a
        warning naming the group and why, and ``False`` is returned; ``True``: pruned and verified.
        Costs a copy of the model and three small forwards per group.
        """
        dg = getattr(group, "_DG", None)
        model = getattr(dg, "model", None)
        if model is None:
            raise ValueError("the group has no dependency graph (not a Torch-Pruning group)")
        entry = self._lookup(group)
        if entry is None:
            raise ValueError("SimilarityImportance.prune: the group has no channels it scores")
        got = self._channel_merges(group)
        grp = entry.group
        removed = sorted({int(i) for i in group[0].root_idxs})
        original = copy.deepcopy(model)
        probe = probe_positions(model, example_inputs, [grp])
        if got is not None:
            _apply(got)
        group.prune()
        plan = got if got is not None else _Fold(grp, removed, [], [], [])
        res = verify_rewrite(original, model, [grp], [plan], probe, example_inputs)
        if res.ok:
            for name, why in res.corrected:
                warnings.warn(
                    f"SimilarityImportance.prune: consumer {name!r} corrected: {why}", stacklevel=2
                )
            return True
        _restore(model, original)
        warnings.warn(
            f"SimilarityImportance.prune: group {grp.root_name!r} not pruned (restored): "
            f"{res.failed[0]}",
            stacklevel=2,
        )
        self.invalidate()
        return False

    def _lookup(self, group: Any) -> _Entry | None:
        """The scored entry of an interactive group (computed now if the step did not score it)."""
        dg = getattr(group, "_DG", None)
        if dg is None:
            raise ValueError("the group has no dependency graph (not a Torch-Pruning group)")
        entry = self._entries.get(_group_key(dg, group)) if dg is self._dg else None
        return entry if entry is not None else self._entry(group)

    def _channel_merges(self, group: Any) -> _Fold | None:
        """The group's ChannelGroup and what folds the removed channels into the kept ones (descriptor
        merges (removed, kept, coefficient), or the data merge's dense blocks and bias shifts), or
        None when there is nothing to fold."""
        entry = self._lookup(group)
        if entry is None:
            return None
        dg = group._DG
        grp = entry.group
        dep = group[0].dep
        mod = dep.target.module
        if dg.is_out_channel_pruning_fn(dep.handler):
            n_now = dg.get_out_channels(mod)
        else:
            n_now = dg.get_in_channels(mod)
        if n_now != grp.n_channels:
            raise ValueError(
                f"group {grp.root_name!r} has {n_now} channels but was scored with "
                f"{grp.n_channels}: score it again (call the pruner's step) before merging"
            )
        removed = sorted({int(i) for i in group[0].root_idxs})
        if not removed:
            return None
        gs = grp.n_units
        units = sorted({c % gs for c in removed})
        if sorted(u + k * gs for u in units for k in range(grp.ch_groups)) != removed:
            raise ValueError(
                f"group {grp.root_name!r}: a grouped layer needs the same positions removed in "
                f"each of its {grp.ch_groups} channel groups"
            )
        if len(units) >= gs or entry.z.shape[0] == 0:
            return None  # the whole group goes: nothing to fold into
        if self.merge_mode == "data":
            if grp.stats is not None:
                kept_ch = sorted(set(range(grp.n_channels)) - set(removed))
                ((blocks, shifts),) = data_merge_blocks([(grp, grp.stats, kept_ch)])
                return _Fold(grp, removed, [], [(int(j), float(c)) for j, c in shifts], blocks)
            warnings.warn(
                f"SimilarityImportance: no consumer input of group {grp.root_name!r} holds all of "
                "its channels; its removed channels use the descriptor merge ('ls')",
                stacklevel=3,
            )
        rep = representatives_of_removed(entry.z, units, entry.energy)
        labels = torch.arange(gs, dtype=torch.int64)
        for j, r in rep.items():
            labels[j] = r
        is_kept = torch.ones(gs, dtype=torch.bool)
        is_kept[torch.as_tensor(units)] = False
        kept = torch.nonzero(is_kept).flatten()
        mode = "ls" if self.merge_mode == "data" else self.merge_mode
        unit_merges = assign(entry.v.cpu().to(torch.float64), labels, kept, mode)
        return _Fold(grp, removed, expand_units(grp, unit_merges), [], [])


@torch.no_grad()
def _restore(model: nn.Module, original: nn.Module) -> None:
    """Give every module of ``model`` the parameters, buffers and plain attributes (channel counts)
    of its namesake in ``original`` (a copy taken before a rewrite), keeping the module and
    Parameter objects themselves: Torch-Pruning's graph (and the pruner) still hold them."""
    mods0 = dict(original.named_modules())
    for name, mod in model.named_modules():
        orig = mods0.get(name)
        if orig is None:
            continue
        for k, p0 in orig._parameters.items():
            p = mod._parameters.get(k)
            if p is None or p0 is None:
                mod._parameters[k] = p0
            else:
                p.data = p0.data
        for k, b0 in orig._buffers.items():
            mod._buffers[k] = b0
        for k, v in orig.__dict__.items():
            if not k.startswith("_") and not isinstance(v, (nn.Module, torch.Tensor)):
                mod.__dict__[k] = v


@dataclass
class _Fold:
    """How one interactive group's removed channels are folded into its kept ones; also what
    verify_rewrite reads as the group's plan (removed, merges, shifts, dense)."""

    group: ChannelGroup
    removed: list[int]
    merges: list[tuple[int, int, float]]  # descriptor merges (removed, kept, coefficient)
    shifts: list[tuple[int, float]]  # data merge: bias shifts
    dense: list[DenseMerge]  # data merge: W_K += W_R coef per block


def _apply(f: _Fold) -> int:
    """Fold (shifts first: they read the removed channels' weights, which no merge changes)."""
    n = apply_shifts(f.group, f.shifts) if f.shifts else 0
    n += apply_merges(f.group, f.merges) if f.merges else 0
    return n + (apply_dense(f.group, f.dense) if f.dense else 0)


def _is_sentinel(name: str) -> bool:
    if not name.startswith("sentinel_"):
        return False
    try:
        q = float(name.split("_", 1)[1])
    except ValueError:
        return False
    return 0.0 <= q < 1.0
