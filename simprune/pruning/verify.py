"""Verification of a rewrite against the real forward: verify, don't trust the dependency graph.

Torch-Pruning's dependency graph says which input features of each consumer layer a channel feeds.
It can be wrong without any error (a ``permute`` before a ``flatten`` into a Linear, a ``split`` with
hard-coded sizes, a reshape into attention heads), so :func:`simprune.prune` checks every rewrite:

1. **Probe** (:func:`probe_positions`, before the rewrite): where does each channel of each group land
   in each consumer's input? Every producer's output is replaced by a constant (+M, then -M, so that
   any ReLU-like gate is open in one of the two runs) that is a leaf of autograd, each Conv/Linear
   input is captured (and detached, so the graph stays local), and three backward passes per consumer
   with position codes 1, p + 1 and (p + 1)^2 tell, for every producer element that reaches the
   consumer, the one input position it feeds (the ratio of the second to the first gradient; the
   third checks it). A position fed by several channels -- a LayerNorm or an attention over the
   channels, a pixel shuffle -- is *mixed*: removing one channel there is not removing an input.
   This follows permutes, reshapes, flattens, pooling, concatenations and splits as they really run.
2. **Consumers rebuilt and compared** (:func:`verify_rewrite`): each consumer's expected weight is the
   original one with the plan's merges folded in (triples, and the dense blocks of a wide data merge
   as a matrix product) and the removed channels' input positions dropped,
   at the probed positions. Where the rewrite differs but has the right shape, it is **corrected**
   (Torch-Pruning removed the wrong features); where the shape differs, or the channels mix, the
   group **fails**.
3. **The real forward**: the pruned model runs on the example inputs, its outputs have the original's
   shapes, and equal the original model's outputs with every consumer's input edited as the plan
   says (a removed channel's positions read 0, or its representative's values times the merge
   coefficient) -- float64 to ~1e-9, float32 to ~1e-4 relative. A crash or a mismatch is attributed
   to the group(s) read by the first consumer that goes wrong.

``prune`` excludes failed groups, re-solves the cut without them (so the target is still met) and
warns; the report lists every excluded group with its reason and every corrected consumer.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .groups import ChannelGroup, _run_forward, output_tensors

NONE = -1  # the position reads no channel of a pruned group
MIXED = -2  # the position reads several channels (or one through a channel-mixing op)
PROBE_SCALE = 1e3


def _n_out(m: Any) -> int:
    """A Conv's out_channels or a Linear's out_features."""
    return int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))


def _channel_dim(m: nn.Module) -> int:
    """The dimension of a layer's output (and input) that holds its channels / features."""
    return -1 if isinstance(m, nn.Linear) else 1


@dataclass
class PositionMap:
    """The input positions of one Conv/Linear: which group channel (global id) each one reads."""

    name: str
    ids: np.ndarray  # (n_inputs,) int64: a global channel id, NONE or MIXED
    mixed_groups: set[int] = field(default_factory=set)  # groups whose channels mix here


@dataclass
class Probe:
    """Where every group's channels land (see the module docstring)."""

    offsets: list[int]  # global id of group g's channel c: offsets[g] + c
    maps: dict[str, PositionMap]
    inputs: Any = None  # the (possibly shrunk) inputs the probe ran on: the forward check uses them

    def group_of(self, gid: int) -> int:
        return int(np.searchsorted(self.offsets, gid, side="right") - 1)

    def groups_read(self, ids: np.ndarray) -> set[int]:
        """The groups whose channels the positions ``ids`` read (NONE / MIXED ignored)."""
        got = np.unique(np.searchsorted(self.offsets, ids[ids >= 0], side="right") - 1)
        return set(got.tolist())


@contextlib.contextmanager
def _evaluating(*models: nn.Module, handles: Sequence[Any] = ()) -> Iterator[None]:
    """Every module of ``models`` in eval mode for the block; on exit each one's own training flag
    is restored and the hook ``handles`` are removed."""
    modes = [[m.training for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for h in handles:
            h.remove()
        for model, flags in zip(models, modes, strict=True):
            for mod, t in zip(model.modules(), flags, strict=True):
                mod.training = t


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def _complete(
    groups: Sequence[ChannelGroup],
    offsets: list[int],
    pairs: dict[str, list[np.ndarray]],
    mixed: dict[str, set[int]],
) -> bool:
    """Whether every Conv/Linear consumer of every group has as many decoded positions of the
    group's channels as Torch-Pruning maps there (or the group mixes there): the probe saw it all."""
    for gi, g in enumerate(groups):
        lo, hi = offsets[gi], offsets[gi] + g.n_channels
        for mem in g.consumers():
            if not isinstance(mem.module, nn.Module) or not _is_layer(mem.module):
                continue
            if gi in mixed.get(mem.name, ()) or -1 in mixed.get(mem.name, ()):
                continue
            pp = pairs.get(mem.name)
            if not pp:
                return False
            got = np.concatenate(pp)
            got = got[(got[:, 1] >= lo) & (got[:, 1] < hi)]
            if len(np.unique(got[:, 0])) < len(set(mem.idxs)):
                return False
    return True


def _unique_rows(pp: np.ndarray) -> np.ndarray:
    """np.unique(pp, axis=0) for (position >= 0, id >= MIXED) int64 pairs, through one int64 key
    (several times faster than the structured sort of axis=0)."""
    if not len(pp):
        return pp.reshape(0, 2)
    span = int(pp[:, 1].max()) - MIXED + 1
    key = np.unique(pp[:, 0] * span + (pp[:, 1] - MIXED))
    return np.stack([key // span, key % span + MIXED], axis=1)


def probe_positions(model: nn.Module, example_inputs: Any, groups: Sequence[ChannelGroup]) -> Probe:
    """Probe where each group's channels land in every Conv/Linear input (module docstring, 1)."""
    offsets = list(np.cumsum([0] + [g.n_channels for g in groups])[:-1].tolist())
    # producer module -> (group index, local channel -> root channel)
    producers: dict[nn.Module, tuple[int, np.ndarray]] = {}
    bn_after: dict[nn.Module, nn.Module] = {}
    for gi, g in enumerate(groups):
        for mem in g.producers():
            bn = g.bn_of.get(mem.name)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and isinstance(
                mem.module, nn.Module
            ):
                bn_after[mem.module] = bn
            if not isinstance(mem.module, nn.Module) or not _is_layer(mem.module):
                continue
            n_local = _n_out(mem.module)
            local_root = np.full(n_local, -1, dtype=np.int64)
            local_root[np.asarray(mem.idxs, dtype=np.int64)] = np.asarray(mem.root_idxs)
            producers[mem.module] = (gi, local_root)
    layers = {m: n for n, m in model.named_modules() if _is_layer(m)}
    pairs: dict[str, list[np.ndarray]] = {}  # consumer -> [(position, global id)] arrays
    mixed: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}

    candidates = probe_candidates(example_inputs)
    for ci, small in enumerate(candidates):
        pairs.clear()
        mixed.clear()
        sizes.clear()
        try:
            # The +-PROBE_SCALE levels first; the BatchNorm levels (saturating activations) only
            # when some consumer has fewer decoded positions of a group than Torch-Pruning maps.
            for level_runs in (RUNS[: 2 * len(CODES)], RUNS[2 * len(CODES) :]):
                got = _probe_runs(model, small, layers, producers, offsets, bn_after, level_runs)
                for name, per_run in got.items():
                    sizes[name] = per_run[0].shape[0]
                    for k in range(0, len(level_runs), len(CODES)):  # one level at a time
                        _decode(name, per_run[k : k + len(CODES)], pairs, mixed)
                if _complete(groups, offsets, pairs, mixed):
                    break
        except Exception:  # noqa: BLE001 - the model does not run on these: the next, larger
            if ci == len(candidates) - 1:
                raise
            continue
        break

    maps: dict[str, PositionMap] = {}
    for name, size in sizes.items():
        ids = np.full(size, NONE, dtype=np.int64)
        groups_here = set(mixed.get(name, set()))
        if pairs.get(name):
            pp = _unique_rows(np.concatenate(pairs[name]))
            pos, cnt = np.unique(pp[:, 0], return_counts=True)
            ids[pp[:, 0]] = pp[:, 1]
            multi = pos[cnt > 1]
            ids[multi] = MIXED
            # several channels feed one position (a pixel shuffle, a channel-mixing op): theirs
            both = pp[np.isin(pp[:, 0], multi) & (pp[:, 1] >= 0), 1]
            groups_here.update(
                int(np.searchsorted(offsets, g, side="right") - 1) for g in np.unique(both)
            )
        maps[name] = PositionMap(name, ids, groups_here)
    return Probe(offsets, maps, small)


# The values the probe gives every producer output (each run's primal): +-PROBE_SCALE (any
# ReLU-like gate open in one of the two), and the values that make the BatchNorm right after the
# producer output 0.5 and 2 -- without one, the channel's mean + 0.5 and + 2 std on the example
# inputs -- so that saturating activations (ReLU6, hardtanh, sigmoid) are live in one of the runs.
# A position is decoded from any run in which a tangent reaches it. The BatchNorm levels run only
# when the +-PROBE_SCALE runs leave a consumer with fewer positions than Torch-Pruning maps
# (``_complete``): a ReLU network needs one stacked forward of 8 runs, not 16.
LEVELS = [("scale", 1.0), ("scale", -1.0), ("bn", 0.5), ("bn", 2.0)]
CODES = (0, 1, 2, -1)  # tangent (channel id + 1) ** code; -1: group index + 1
RUNS = [(level, code) for level in LEVELS for code in CODES]
# Spatial sizes the probe and the forward check try, smallest first (the first the model runs on).
PROBE_SIZES = (16, 32)
PROBE_SIZE = PROBE_SIZES[-1]


def probe_candidates(example_inputs: Any) -> list[Any]:
    """The inputs the probe tries, smallest first: images (N, C, H, W) shrunk to 16 x 16, then
    32 x 32, then the example inputs themselves (a Conv/Linear's input positions -- its channels or
    features -- do not depend on the image size; the probe and the forward check then cost a
    fraction of a full forward). The first the model runs on is used."""
    xs = _as_tuple(example_inputs)
    if not any(_shrinkable(x) for x in xs):
        return [example_inputs]
    out = []
    for size in PROBE_SIZES:
        small = tuple(
            nn.functional.interpolate(x, size=(min(x.shape[2], size), min(x.shape[3], size)))
            if _shrinkable(x)
            else x
            for x in xs
        )
        out.append(small if isinstance(example_inputs, tuple) else small[0])
    return [*out, example_inputs]


def _shrinkable(x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.is_floating_point()
        and x.dim() == 4
        and (x.shape[2] > PROBE_SIZE or x.shape[3] > PROBE_SIZE)
    )


def _probe_runs(
    model: nn.Module,
    example_inputs: Any,
    layers: dict[nn.Module, str],
    producers: dict[nn.Module, tuple[int, np.ndarray]],
    offsets: list[int],
    bn_after: dict[nn.Module, nn.Module],
    runs: Sequence[tuple[tuple[str, float], int]],
) -> dict[str, list[np.ndarray]]:
    """All ``runs`` (of RUNS) in one forward when the inputs stack along dim 0 (eval mode keeps the
    samples independent), else one forward per run. Returns, per Conv/Linear that a tangent
    reaches, one (n_positions, n_elements) float64 array of tangents per run."""
    needs_stats = any(kind != "scale" for (kind, _), _ in runs)
    stats = _producer_stats(model, example_inputs, producers, bn_after) if needs_stats else {}
    k = len(runs)
    stacked = _stacked(example_inputs, k)
    if stacked is not None:
        inputs, batch = stacked
        try:
            out = _probe_forward(
                model, inputs, layers, producers, offsets, stats, batch, runs=runs,
                bn_after=bn_after,
            )  # fmt: skip
            if out is not None:
                return out
        except Exception:  # noqa: BLE001 - a model that does not batch: one run at a time
            pass
    merged: dict[str, list[np.ndarray]] = {}
    per_run = [
        _probe_forward(
            model, example_inputs, layers, producers, offsets, stats, None, [run], bn_after
        )
        for run in runs
    ]
    for name in per_run[0] or {}:
        merged[name] = [r[name][0] for r in per_run if r is not None and name in r]
    return merged


def _stacked(example_inputs: Any, k: int) -> tuple[Any, int] | None:
    """The inputs repeated k times along dim 0 (a tensor, a tuple of tensors, or a dict of keyword
    arguments whose tensors share their first dimension; other values are passed as they are) and
    the batch size, or None when they do not stack."""
    if isinstance(example_inputs, dict):
        ts = [v for v in example_inputs.values() if isinstance(v, torch.Tensor)]
        if not ts or any(v.dim() < 1 or v.shape[0] != ts[0].shape[0] for v in ts):
            return None
        out = {
            key: torch.cat([v] * k) if isinstance(v, torch.Tensor) else v
            for key, v in example_inputs.items()
        }
        return out, int(ts[0].shape[0])
    xs = _as_tuple(example_inputs)
    if not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in xs):
        return None
    st = tuple(torch.cat([x] * k) for x in xs)
    return (st if isinstance(example_inputs, tuple) else st[0]), int(xs[0].shape[0])


def _bn_inverse(bn: Any) -> Any:
    """t -> the per-channel input that makes the (eval-mode) BatchNorm ``bn`` output t."""
    mean = bn.running_mean.detach().double() if bn.running_mean is not None else 0.0
    var = bn.running_var.detach().double() if bn.running_var is not None else 1.0
    sd = torch.sqrt(torch.as_tensor(var) + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(sd)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(sd)
    gamma = torch.where(gamma.abs() > 1e-12, gamma, torch.full_like(gamma, 1e-12))
    return lambda t: mean + sd * (t - beta) / gamma


def _producer_stats(
    model: nn.Module,
    example_inputs: Any,
    producers: dict[nn.Module, tuple[int, np.ndarray]],
    bn_after: dict[nn.Module, nn.Module],
) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor, Any]]:
    """Per producer: the mean and std of each output channel on the example inputs, and the inverse
    of the BatchNorm right after it (or None)."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, Any]] = {}
    handles = []

    def post(mod: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point() and mod not in stats:
            dim = _channel_dim(mod) % out.dim()
            flat = out.detach().movedim(dim, 0).reshape(out.shape[dim], -1).double()
            std = flat.std(1, correction=0) if flat.shape[1] > 1 else flat.abs().mean(1)
            bn = bn_after.get(mod)
            inv = _bn_inverse(bn) if bn is not None and bn.track_running_stats else None
            stats[mod] = (flat.mean(1), std.clamp_min(1e-6), inv)

    for m in producers:
        handles.append(m.register_forward_hook(post))
    with _evaluating(model, handles=handles), torch.no_grad():
        _run_forward(model, example_inputs)
    return stats


def _probe_forward(
    model: nn.Module,
    inputs: Any,
    layers: dict[nn.Module, str],
    producers: dict[nn.Module, tuple[int, np.ndarray]],
    offsets: list[int],
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, Any]],
    batch: int | None,
    runs: Sequence[tuple[tuple[str, float], int]] = RUNS,
    bn_after: dict[nn.Module, nn.Module] | None = None,
) -> dict[str, list[np.ndarray]] | None:
    """One probe forward. ``batch``: inputs hold the ``runs`` stacked along dim 0 (``batch``
    samples each); else ``runs`` is the one run. Every producer output becomes sign * PROBE_SCALE with the
    forward-mode tangent (global channel id + 1) ** code on each channel (code -1: group index + 1).
    A producer followed by its eval-mode BatchNorm (``bn_after``) is probed at the BatchNorm's
    output instead -- the same positions (the BN is per-channel), the "bn" levels set directly, and
    no forward-mode AD through the BatchNorm.
    Returns None when a layer's batch is not the stacked one (the model mixes samples)."""
    got: dict[str, list[np.ndarray]] = {}
    ok = [True]
    handles = []

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> Any:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return None
        primal, tangent = fwAD.unpack_dual(x)
        if tangent is not None:
            dim = _channel_dim(mod) % x.dim()
            parts = [tangent]
            if batch is not None:
                if dim == 0 or x.shape[0] != batch * len(runs):
                    ok[0] = False
                    return (primal, *args[1:])
                parts = list(tangent.chunk(len(runs), dim=0))
            arrays = [
                t.detach().movedim(dim, 0).reshape(x.shape[dim], -1).double().cpu().numpy()
                for t in parts
            ]
            name = layers[mod]
            if name in got:  # a layer called more than once: positions seen in any call
                arrays = [
                    np.concatenate([a, b], axis=1) for a, b in zip(got[name], arrays, strict=True)
                ]
            got[name] = arrays
        return (primal, *args[1:])

    def post(mod: nn.Module, _args: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        prod, at_bn = hooked[mod]
        gi, local_root = producers[prod]
        dim = (1 if at_bn else _channel_dim(mod)) % out.dim()
        gid = np.where(local_root >= 0, offsets[gi] + local_root + 1, 0).astype(np.float64)
        shape = [1] * out.dim()
        shape[dim] = out.shape[dim]
        primals, tangents = [], []
        chunks = out.chunk(len(runs), dim=0) if batch is not None else [out]
        mean, std, bn_in = stats.get(prod, (torch.zeros(out.shape[dim]), torch.ones(1), None))
        if at_bn:  # the BatchNorm's output itself: the level is the value
            n_ch = out.shape[dim]

            def bn_in(t: float) -> torch.Tensor:
                return torch.full((n_ch,), t, dtype=torch.float64)

        for ((kind, k), code), o in zip(runs, chunks, strict=True):
            val = np.where(local_root >= 0, gi + 1.0, 0.0) if code < 0 else gid**code
            t = torch.as_tensor(val, dtype=out.dtype, device=out.device).reshape(shape)
            if kind == "scale":
                primals.append(torch.full_like(o.detach(), k * PROBE_SCALE))
            else:
                level = bn_in(k) if kind == "bn" and bn_in is not None else mean + k * std
                level = level.to(dtype=out.dtype, device=out.device).reshape(shape)
                primals.append(level.expand_as(o).contiguous())
            tangents.append(t.expand_as(o))
        return fwAD.make_dual(torch.cat(primals), torch.cat(tangents).contiguous())

    hooked: dict[nn.Module, tuple[nn.Module, bool]] = {}
    for m in producers:
        bn = (bn_after or {}).get(m)
        if bn is not None and bn.track_running_stats and bn.running_mean is not None:
            hooked[bn] = (m, True)
        else:
            hooked[m] = (m, False)
    for m in layers:
        handles.append(m.register_forward_pre_hook(pre))
    for m in hooked:
        handles.append(m.register_forward_hook(post))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    patched = _affine_norms(model)
    try:
        # nn.MultiheadAttention off its fused fast path and the math attention kernel: the fused
        # kernels have no forward-mode AD.
        torch.backends.mha.set_fastpath_enabled(False)
        with _evaluating(model, handles=handles), torch.no_grad(), \
                sdpa_kernel([SDPBackend.MATH]), fwAD.dual_level(), \
                warnings.catch_warnings():  # fmt: skip
            # torch's forward AD scripts its decompositions on first use (torch.jit deprecation).
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
            _run_forward(model, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for bn in patched:
            del bn.forward
    return got if ok[0] else None


def _affine_norms(model: nn.Module) -> list[nn.Module]:
    """Give every eval-mode BatchNorm with running statistics a plain affine forward for the probe:
    the same function, but forward-mode AD through elementwise ops instead of batch_norm's Python
    decomposition (a third of the probe's time on a ResNet-50). Returns the patched modules (the
    caller deletes the instance attribute to restore them)."""
    patched: list[nn.Module] = []
    for bn in model.modules():
        if (
            not isinstance(bn, nn.modules.batchnorm._BatchNorm)
            or bn.training
            or bn.running_mean is None
            or bn.running_var is None
            or "forward" in bn.__dict__
        ):
            continue

        def forward(x: torch.Tensor, bn: Any = bn) -> torch.Tensor:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            shape = [1, -1] + [1] * (x.dim() - 2)
            return x * scale.to(x.dtype).reshape(shape) + shift.to(x.dtype).reshape(shape)

        bn.__dict__["forward"] = forward  # an instance attribute: nn.Module.__call__ uses it
        patched.append(bn)
    return patched


def _decode(
    name: str,
    ts: list[np.ndarray],
    pairs: dict[str, list[np.ndarray]],
    mixed: dict[str, set[int]],
) -> None:
    """Positions whose tangents decode to one channel id: t2 / t1 = id + 1, t3 / t1 = (id + 1)^2;
    the others are MIXED, and tg / t1 = group + 1 names the group whose channels mix there."""
    t1, t2, t3, tg = ts
    if not t1.size:
        return
    # Reached by a tangent in any code. A position fed by one channel has t1 != 0; one where the
    # uniform code cancels (t1 = 0, t2 != 0: a LayerNorm/GroupNorm subtracting the channel mean)
    # is mixed.
    reached = np.zeros(t1.shape, bool)
    for t in (t1, t2, tg):
        sc = float(np.abs(t).max())
        if sc > 0.0:
            reached |= np.abs(t) > 1e-6 * sc
    if not reached.any():
        return
    scale = float(np.abs(t1).max())
    alive = reached & (np.abs(t1) > 1e-6 * scale) if scale > 0.0 else np.zeros_like(reached)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(alive, t2 / np.where(alive, t1, 1.0), 0.0)
        q = np.where(alive, t3 / np.where(alive, t1, 1.0), 0.0)
    ri = np.round(r)
    ok = (
        alive
        & (np.abs(r - ri) < 1e-3 * np.maximum(ri, 1))
        & (np.abs(q - ri * ri) <= 1e-3 * ri * ri)
        & (ri >= 1)
    )
    pos, el = np.nonzero(ok)
    if pos.size:
        pairs.setdefault(name, []).append(
            _unique_rows(np.stack([pos, ri[pos, el].astype(np.int64) - 1], axis=1))
        )
    bad = reached & ~ok
    if bad.any():
        pp = np.unique(np.nonzero(bad)[0])
        pairs.setdefault(name, []).append(np.stack([pp, np.full_like(pp, MIXED)], axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            g = tg[bad] / t1[bad]
            gi = np.round(g)
            one = np.isfinite(g) & (np.abs(g - gi) < 1e-3 * np.maximum(gi, 1))
        groups = mixed.setdefault(name, set())
        groups.update(int(v) - 1 for v in np.unique(gi[one]) if v >= 1)
        if not one.all():
            groups.add(-1)  # several groups mix here


@dataclass
class VerifyResult:
    """What :func:`verify_rewrite` found: ``failed`` group index -> reason, and the corrections."""

    failed: dict[int, str] = field(default_factory=dict)
    corrected: list[tuple[str, str]] = field(default_factory=list)  # (consumer, what was wrong)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _PlanIds:
    """The plan in global channel ids: the removed mask, the merges as (removed, kept, coefficient)
    triples sorted by the removed id (a removed channel may be rebuilt from several kept ones: the
    data merge), the dense blocks of wide data merges (removed ids, kept ids, coefficients
    (|R|, |K|): removed channel i reads sum_k coef[i, k] x kept channel k), and the constant each
    removed channel adds to its consumers' biases (``shifts``)."""

    removed: np.ndarray  # bool (n_ids,)
    src: np.ndarray  # int64 (n_merges,) removed id, sorted
    dst: np.ndarray  # int64 (n_merges,) kept id
    coef: np.ndarray  # float64 (n_merges,)
    shift: np.ndarray  # float64 (n_ids,)
    dense: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


def _plan_ids(probe: Probe, groups: Sequence[ChannelGroup], plans: Sequence[Any]) -> _PlanIds:
    n = probe.offsets[-1] + groups[-1].n_channels if groups else 0
    removed, shift = np.zeros(n, bool), np.zeros(n)
    trip: list[tuple[int, int, float]] = []
    dense: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for gi, gp in enumerate(plans):
        off = probe.offsets[gi]
        removed[np.asarray(gp.removed, dtype=np.int64) + off] = True
        trip += [(off + int(j), off + int(r), float(a)) for j, r, a in gp.merges if a != 0.0]
        for j, c in getattr(gp, "shifts", None) or ():
            shift[off + int(j)] += float(c)
        for b in getattr(gp, "dense", None) or ():
            dense.append((np.asarray(b.removed) + off, np.asarray(b.kept) + off, b.coef))
    t = np.asarray(trip, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(t[:, 0], kind="stable")
    t = t[order]
    return _PlanIds(
        removed, t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2], shift, dense
    )


@dataclass
class _Edit:
    """What the plan does to one consumer's input positions."""

    keep: np.ndarray  # positions that stay
    gone: np.ndarray  # removed positions: they read 0 ...
    dst: np.ndarray  # ... plus, at these (removed) positions (repeats allowed) ...
    src: np.ndarray  # ... coef x the value at the kept channel's matching position
    coef: np.ndarray
    shift_pos: np.ndarray  # removed positions whose channel adds a constant to the bias ...
    shift: np.ndarray  # ... this constant times the weights of the position
    # Dense blocks: (removed positions (|R|, k), kept positions (|K|, k), coef (|R|, |K|)): the
    # removed position [i, t] also reads sum_c coef[i, c] x the value at kept position [c, t].
    dense: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.gone.size or self.dst.size or self.dense)


def _edit_of(ids: np.ndarray, plan: _PlanIds) -> _Edit | str:
    """The edit of a consumer whose positions read ``ids``, or why it cannot be expressed. A channel
    feeding several positions (a flatten) is matched position by position, in order."""
    valid = ids >= 0
    gid = np.where(valid, ids, 0)
    gone = valid & plan.removed[gid]
    pos = np.flatnonzero(valid)
    order = np.lexsort((pos, ids[pos]))  # by id, then position
    spos, sid = pos[order], ids[pos][order]
    start = np.searchsorted(sid, sid, side="left")
    rank = np.empty(len(ids), np.int64)
    rank[spos] = np.arange(len(spos)) - start
    # every removed position, once per merge triple of its channel
    gpos = np.flatnonzero(gone)
    lo_t = np.searchsorted(plan.src, ids[gpos], side="left")
    n_t = np.searchsorted(plan.src, ids[gpos], side="right") - lo_t
    dst = np.repeat(gpos, n_t)
    t = np.repeat(lo_t - np.cumsum(n_t) + n_t, n_t) + np.arange(int(n_t.sum()))
    tgt = plan.dst[t]
    lo = np.searchsorted(sid, tgt, side="left")
    hi = np.searchsorted(sid, tgt, side="right")
    cnt_j = np.searchsorted(sid, ids[dst], side="right") - np.searchsorted(sid, ids[dst], "left")
    if (hi - lo != cnt_j).any():
        k = int(np.flatnonzero(hi - lo != cnt_j)[0])
        return f"channels {ids[dst[k]]} and {tgt[k]} feed different numbers of inputs"
    src = spos[lo + rank[dst]]
    dense = []
    for rid, kid, cf in plan.dense:
        got = _dense_edit(sid, spos, rid, kid, cf)
        if isinstance(got, str):
            return got
        if got is not None:
            dense.append(got)
    sh = plan.shift[ids[gpos]] if gpos.size else np.zeros(0)
    nz = sh != 0.0
    return _Edit(np.flatnonzero(~gone), gpos, dst, src, plan.coef[t], gpos[nz], sh[nz], dense)


def _dense_edit(
    sid: np.ndarray, spos: np.ndarray, rid: np.ndarray, kid: np.ndarray, cf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str | None:
    """One dense block at a consumer whose valid positions, sorted by (channel id, position), are
    ``spos`` reading ``sid``: (removed positions (|R'|, k), kept positions (|K'|, k), coef
    (|R'|, |K'|)) for the removed channels the consumer reads and the kept channels they need (a
    non-zero coefficient), matched position by position in order as the triples are; None when
    the consumer reads none; why, when the channels feed different numbers of inputs."""
    lo_r = np.searchsorted(sid, rid, side="left")
    cnt_r = np.searchsorted(sid, rid, side="right") - lo_r
    rows = np.flatnonzero(cnt_r > 0)
    if not rows.size:
        return None
    sub = cf[rows] if rows.size < len(rid) else cf
    cols = np.flatnonzero((sub != 0).any(0))
    if not cols.size:
        return None
    if cols.size < len(kid):
        sub = sub[:, cols]
    lo_k = np.searchsorted(sid, kid[cols], side="left")
    cnt_k = np.searchsorted(sid, kid[cols], side="right") - lo_k
    k = int(cnt_r[rows[0]])
    if (cnt_r[rows] != k).any() or (cnt_k != k).any():
        bad_r = rows[cnt_r[rows] != k]
        bad_k = cols[cnt_k != k]
        j = int(rid[bad_r[0]] if bad_r.size else rid[rows[0]])
        r = int(kid[bad_k[0]] if bad_k.size else kid[cols[0]])
        return f"channels {j} and {r} feed different numbers of inputs"
    t = np.arange(k)
    return spos[lo_r[rows][:, None] + t], spos[lo_k[:, None] + t], sub


def _weights_close(have: torch.Tensor, want: torch.Tensor) -> bool:
    tol = _tolerance(have.dtype)
    scale = float(want.abs().max()) if want.numel() else 0.0
    return bool(torch.allclose(have, want, rtol=tol, atol=tol * scale))


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-4


def _kept_rows_by_name(
    groups: Sequence[ChannelGroup], plans: Sequence[Any], mods: dict[str, nn.Module]
) -> dict[str, list[int]]:
    """Producer name -> the output rows (local channel indices) it keeps, for pruned producers
    (``mods``: the unpruned model's modules by name)."""
    out: dict[str, list[int]] = {}
    for g, gp in zip(groups, plans, strict=True):
        removed = set(gp.removed)
        if not removed:
            continue
        for mem in g.producers():
            if mem.kind not in ("producer", "depthwise") or mem.name not in mods:
                continue
            gone = {int(i) for i, r in zip(mem.idxs, mem.root_idxs, strict=True) if r in removed}
            n = _n_out(mods[mem.name])
            out[mem.name] = [i for i in range(n) if i not in gone]
    return out


def verify_rewrite(
    original: nn.Module,
    pruned: nn.Module,
    groups: Sequence[ChannelGroup],
    plans: Sequence[Any],
    probe: Probe,
    example_inputs: Any,
) -> VerifyResult:
    """Check (and where possible correct) ``pruned`` against ``original`` (module docstring, 2-3).

    ``groups`` are the channel groups traced on ``original`` (or an identical copy; matched by module
    name), ``plans`` their GroupPlans (same order). Corrections are applied to ``pruned`` in place.
    """
    res = VerifyResult()
    plan_ids = _plan_ids(probe, groups, plans)
    edits = {name: _edit_of(pm.ids, plan_ids) for name, pm in probe.maps.items()}
    pruned_groups = {gi for gi, gp in enumerate(plans) if gp.removed}
    orig_mods = dict(original.named_modules())
    new_mods = dict(pruned.named_modules())
    rows_of = _kept_rows_by_name(groups, plans, orig_mods)
    consumer_of: dict[str, set[int]] = {}
    produces: dict[str, set[int]] = {}
    for gi, g in enumerate(groups):
        for mem in g.members:
            if mem.kind == "consumer":
                consumer_of.setdefault(mem.name, set()).add(gi)
            elif mem.kind in ("producer", "depthwise"):
                produces.setdefault(mem.name, set()).add(gi)

    # Where channels mix before a consumer (a LayerNorm / GroupNorm over them), positions are not
    # one channel's: the edit the forward check applies there is Torch-Pruning's own mapping, taken
    # as a hypothesis -- the real forward accepts it or not (exact duplicates under a norm keep its
    # statistics: removing them is dropping their positions).
    for name, pm in probe.maps.items():
        if (pm.ids == MIXED).any() or (pm.mixed_groups & pruned_groups):
            tp_ids = _tp_position_ids(name, len(pm.ids), groups, probe.offsets)
            if tp_ids is not None:
                edits[name] = _edit_of(tp_ids, plan_ids)
    mixed_at: dict[int, str] = {}  # group -> a consumer where its channels mix
    # 2. consumers rebuilt from the original weights at the probed positions, and compared.
    for name, pm in probe.maps.items():
        read = probe.groups_read(pm.ids)
        if -1 in pm.mixed_groups:  # several groups mix here: those Torch-Pruning says feed it
            read |= consumer_of.get(name, set())
        touched = (read | pm.mixed_groups) & pruned_groups
        if not touched:
            continue
        if (pm.ids == MIXED).any() or (pm.mixed_groups & pruned_groups):
            # Not expressible as dropped inputs: only the forward check can accept the rewrite
            # (e.g. exact duplicates under a LayerNorm keep its statistics); if it fails, this is why.
            for gi in touched:
                mixed_at.setdefault(gi, name)
            continue
        mod0, mod1 = orig_mods.get(name), new_mods.get(name)
        if mod0 is None or mod1 is None:
            continue
        if isinstance(mod0, nn.modules.conv._ConvNd) and (mod0.groups != 1 or mod0.transposed):
            continue  # grouped / transposed consumers: left to the forward check
        edit = edits[name]
        if isinstance(edit, str):
            for gi in touched:
                res.failed.setdefault(gi, f"{edit} of {name!r}")
            continue
        w0 = mod0.weight.detach()
        rows = rows_of.get(name)
        if rows is not None:  # the consumer's own output rows first: less to copy
            w0 = w0.index_select(0, torch.as_tensor(rows, device=w0.device))
        wf = w0
        if edit.dst.size:
            wf = w0.clone()
            shape = [1] * w0.dim()
            shape[1] = edit.dst.size
            c = torch.as_tensor(edit.coef, dtype=w0.dtype, device=w0.device).reshape(shape)
            src = w0.index_select(1, torch.as_tensor(edit.dst, device=w0.device)) * c
            wf.index_add_(1, torch.as_tensor(edit.src, device=w0.device), src)
        if edit.dense:
            wf = wf.clone() if wf is w0 else wf
            for rpos, kpos, cf in edit.dense:
                _fold_dense(wf, w0, rpos, kpos, cf)
        keep = edit.keep
        want = wf.index_select(1, torch.as_tensor(keep, device=w0.device))
        have = mod1.weight.detach()
        if tuple(have.shape) != tuple(want.shape):
            # Right inputs, wrong outputs: the group(s) this layer produces are at fault.
            rows_wrong = have.shape[1:] == want.shape[1:]
            why = (
                f"the rewrite of {name!r} has weight {tuple(have.shape)}, the plan's "
                + ("output channels" if rows_wrong else "channels it reads")
                + f" need {tuple(want.shape)}"
            )
            blamed = (produces.get(name, set()) & pruned_groups) if rows_wrong else set()
            for gi in blamed or touched:
                res.failed.setdefault(gi, why)
            continue
        want = want.to(have.dtype)
        if not torch.equal(have, want) and not _weights_close(have, want):
            with torch.no_grad():
                mod1.weight.copy_(want)
            wrong = np.setdiff1d(np.arange(len(pm.ids)), keep).tolist()
            res.corrected.append(
                (
                    name,
                    f"Torch-Pruning removed other input features than the channels of group(s) "
                    f"{sorted(groups[gi].root_name for gi in touched)} feed; rebuilt at the probed "
                    f"positions ({len(wrong)} inputs removed: {wrong[:6]}"
                    f"{' ...' if len(wrong) > 6 else ''})",
                )
            )
    if res.failed:
        return res
    # 3. the real forward.
    inputs = probe.inputs if probe.inputs is not None else example_inputs
    produced_by = {gi: {m.name for m in g.producers()} for gi, g in enumerate(groups)}
    consumer_names = {gi: {m.name for m in g.consumers()} for gi, g in enumerate(groups)}
    _forward_check(
        original, pruned, probe, edits, pruned_groups, rows_of, produced_by, consumer_names,
        inputs, res,
    )  # fmt: skip
    for gi in list(res.failed):
        if gi in mixed_at:
            res.failed[gi] = (
                f"its channels mix before they reach {mixed_at[gi]!r} (a LayerNorm/GroupNorm, an "
                "attention or a reshape across channels): removing one is not removing inputs, "
                f"and the pruned model differs ({res.failed[gi]})"
            )
    return res


def _tp_position_ids(
    name: str, size: int, groups: Sequence[ChannelGroup], offsets: list[int]
) -> np.ndarray | None:
    """The global channel id of each input position of consumer ``name`` by Torch-Pruning's index
    mapping (NONE where no group maps), or None when a position is mapped twice or out of range."""
    ids = np.full(size, NONE, dtype=np.int64)
    for gi, g in enumerate(groups):
        for mem in g.consumers():
            if mem.name != name:
                continue
            for c, pos in mem.layer_index_map().items():
                p = np.asarray(pos, dtype=np.int64)
                if p.size and (p.max() >= size or (ids[p] != NONE).any()):
                    return None
                ids[p] = offsets[gi] + c
    return ids


def _edit_input(x: torch.Tensor, dim: int, edit: _Edit) -> torch.Tensor:
    """A consumer's input as the plan makes it read: a removed position reads 0 plus the sum of its
    merge coefficients (triples and dense blocks) times the kept channels' values at the matching
    positions."""
    y = x.clone()
    if edit.gone.size:
        y.index_fill_(dim, torch.as_tensor(edit.gone, device=x.device), 0.0)
    if edit.dst.size:
        shape = [1] * x.dim()
        shape[dim] = edit.dst.size
        c = torch.as_tensor(edit.coef, dtype=x.dtype, device=x.device).reshape(shape)
        vals = x.index_select(dim, torch.as_tensor(edit.src, device=x.device)) * c
        y.index_add_(dim, torch.as_tensor(edit.dst, device=x.device), vals)
    for rpos, kpos, cf in edit.dense:  # removed [i, t] += sum_c cf[i, c] x kept [c, t]
        k, nr, nk = rpos.shape[1], rpos.shape[0], kpos.shape[0]
        xm = x.movedim(dim, -1)
        xk = xm.index_select(-1, torch.as_tensor(kpos.T.reshape(-1), device=x.device))
        c = torch.as_tensor(cf, device=x.device).to(x.dtype)
        rec = (xk.reshape(*xm.shape[:-1], k, nk) @ c.T).reshape(*xm.shape[:-1], k * nr)
        y.index_add_(
            dim, torch.as_tensor(rpos.T.reshape(-1), device=x.device), rec.movedim(-1, dim)
        )
    return y


def _fold_dense(
    wf: torch.Tensor, w0: torch.Tensor, rpos: np.ndarray, kpos: np.ndarray, cf: np.ndarray
) -> None:
    """``wf[:, kpos[:, t]] += w0[:, rpos[:, t]] @ cf`` for every t (a dense block of the plan folded
    into a consumer's expected weight, (out, in, *taps))."""
    k, nr, nk = rpos.shape[1], rpos.shape[0], kpos.shape[0]
    dev = w0.device
    wr = w0.index_select(1, torch.as_tensor(rpos.T.reshape(-1), device=dev))
    wr = wr.reshape(w0.shape[0], k, nr, -1)
    c = torch.as_tensor(cf, device=dev).to(w0.dtype)
    add = torch.einsum("otrx,rc->otcx", wr, c).reshape(w0.shape[0], k * nk, *w0.shape[2:])
    wf.index_add_(1, torch.as_tensor(kpos.T.reshape(-1), device=dev), add)


def _shift_bias(mod: nn.Module, edit: _Edit) -> torch.Tensor | None:
    """The bias change of a consumer from the plan's shifts: sum over the shifted positions p of
    shift_p x (p's weights summed over the kernel) -- what the merge folds into the bias. None for a
    layer kind it is not defined for (the reference then lacks the shift: the forward check fails
    and the group is excluded)."""
    if not edit.shift_pos.size:
        return None
    assert isinstance(mod.weight, torch.Tensor)
    w = mod.weight.detach()
    pos = torch.as_tensor(edit.shift_pos, device=w.device)
    c = torch.as_tensor(edit.shift, dtype=w.dtype, device=w.device)
    if isinstance(mod, nn.Linear):
        return w.index_select(1, pos) @ c
    if isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed:
        ipg = mod.in_channels // mod.groups
        opg = mod.out_channels // mod.groups
        ws = w.flatten(2).sum(2)  # (out, in / groups)
        out = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        for p, v in zip(edit.shift_pos.tolist(), edit.shift.tolist(), strict=True):
            g, lp = divmod(int(p), ipg)
            out[g * opg : (g + 1) * opg] += v * ws[g * opg : (g + 1) * opg, lp]
        return out
    return None


def _forward_check(
    original: nn.Module,
    pruned: nn.Module,
    probe: Probe,
    edits: dict[str, _Edit | str],
    pruned_groups: set[int],
    rows_of: dict[str, list[int]],
    produced_by: dict[int, set[str]],
    consumer_of: dict[int, set[str]],
    example_inputs: Any,
    res: VerifyResult,
) -> None:
    order: list[str] = []
    finished: set[str] = set()
    outs0: dict[str, torch.Tensor] = {}
    outs1: dict[str, torch.Tensor] = {}
    handles = []
    mods0 = dict(original.named_modules())
    mods1 = dict(pruned.named_modules())

    def reads(name: str) -> set[int]:
        pm = probe.maps.get(name)
        if pm is None:
            return set()
        got = probe.groups_read(pm.ids)
        got |= {g for g in pm.mixed_groups if g >= 0}
        if -1 in pm.mixed_groups:
            got |= {gi for gi, names in consumer_of.items() if name in names}
        return got & pruned_groups

    for name, m in mods0.items():
        if not _is_layer(m):
            continue
        edit = edits.get(name)
        dim = _channel_dim(m)

        def pre0(mod: nn.Module, args: Any, edit: Any = edit, dim: int = dim) -> Any:
            if not isinstance(edit, _Edit) or not args or not isinstance(args[0], torch.Tensor):
                return None
            if not edit.changes:
                return None
            return (_edit_input(args[0], dim % args[0].dim(), edit), *args[1:])

        shift = _shift_bias(m, edit) if isinstance(edit, _Edit) else None

        def post0(
            mod: nn.Module, _a: Any, out: Any, name: str = name, shift: Any = shift, dim: int = dim
        ) -> Any:
            if not isinstance(out, torch.Tensor):
                return None
            if shift is not None:
                shape = [1] * out.dim()
                shape[dim % out.dim()] = -1
                out = out + shift.to(out.dtype).reshape(shape)
            outs0[name] = out.detach()
            return out

        handles += [m.register_forward_pre_hook(pre0), m.register_forward_hook(post0)]
    for name, m in mods1.items():
        if not _is_layer(m):
            continue

        def pre1(mod: nn.Module, _a: Any, name: str = name) -> None:
            order.append(name)

        def post1(mod: nn.Module, _a: Any, out: Any, name: str = name) -> None:
            finished.add(name)
            if isinstance(out, torch.Tensor):
                outs1[name] = out.detach()

        handles += [m.register_forward_pre_hook(pre1), m.register_forward_hook(post1)]
    with _evaluating(original, pruned, handles=handles), torch.no_grad():
        ref = _run_forward(original, example_inputs)
        try:
            got = _run_forward(pruned, example_inputs)
        except Exception as e:  # noqa: BLE001 - any failure of the rewritten forward
            where = order[-1] if order else "?"
            if where in finished:
                # It failed after this layer, in an operation on its output: its own channels.
                why = f"the pruned model fails after {where!r}: {type(e).__name__}: {str(e)[:200]}"
                gis = {gi for gi in pruned_groups if where in produced_by.get(gi, set())}
            else:
                # In the layer itself: the groups it reads, or (a malformed layer) produces.
                why = f"the pruned model fails in {where!r}: {type(e).__name__}: {str(e)[:200]}"
                gis = reads(where) or {
                    gi for gi in pruned_groups if where in produced_by.get(gi, set())
                }
            gis = gis or set(pruned_groups)
            for gi in gis:
                res.failed.setdefault(gi, why)
            return
    a, b = output_tensors(ref), output_tensors(got)
    shapes_a = [tuple(t.shape) for t in a]
    shapes_b = [tuple(t.shape) for t in b]
    if shapes_a != shapes_b:
        why = f"the pruned model's outputs have shapes {shapes_b}, the original's {shapes_a}"
        for gi in pruned_groups:
            res.failed.setdefault(gi, why)
        return
    tol = _tolerance(a[0].dtype if a else torch.float32)
    if all(_close(x, y, tol) for x, y in zip(a, b, strict=True)):
        return
    # Attribute: the first layer (in execution order) whose output differs.
    for name in order:
        o0, o1 = outs0.get(name), outs1.get(name)
        if o0 is None or o1 is None:
            continue
        if name in rows_of and o0.shape != o1.shape:
            dim = _channel_dim(mods0[name]) % o0.dim()
            o0 = o0.index_select(dim, torch.as_tensor(rows_of[name], device=o0.device))
        if not _close(o0, o1, tol):
            gis = reads(name)
            why = (
                f"the pruned model's {name!r} computes something else than the original with the "
                "removed channels' inputs dropped (an operation between the layers depends on "
                "the channel count or order)"
            )
            for gi in gis or set(pruned_groups):
                res.failed.setdefault(gi, why)
            return
    for gi in pruned_groups:
        res.failed.setdefault(gi, "the pruned model's output differs (not attributable to a layer)")


def _close(x: torch.Tensor, y: torch.Tensor, tol: float) -> bool:
    if x.shape != y.shape:
        return False
    if not (x.is_floating_point() and y.is_floating_point()):
        return bool(torch.equal(x, y))
    scale = float(x.abs().max()) if x.numel() else 0.0
    if not math.isfinite(scale):
        return bool(torch.equal(x, y))
    return bool(((x - y.to(x.dtype)).abs() <= tol * max(scale, 1e-30)).all())
