"""The engine pass of :func:`simprune.prune`, streamed and spread over ranks (torch.distributed).

**Streaming.** Groups go to the engine device in bounded batches: a group's descriptors are computed
on the model's device, copied to the engine device with as many following groups as fit in
``batch_bytes`` (the working set of :func:`simprune.engine.working_set_bytes`; default
:data:`BATCH_BYTES`, on a GPU a quarter of its free memory when that is more; a group larger than
the budget goes alone), clustered, and only their dendrograms come back. The descriptors of a model
bigger than the engine device never sit on it all at once. The peak engine memory is reported
(``report.engine``): measured with ``torch.cuda.max_memory_allocated`` on a GPU, estimated from
sizes on the CPU (the largest batch's working set).

**Across ranks.** Under ``torchrun`` (the default process group initialised) or with
``prune(..., process_group=...)``, the groups are spread over the ranks by cost (n^2 * d, greedy:
largest first onto the least loaded rank, ties to the lower index; deterministic), each rank runs the
engine pass on its groups, the dendrograms and height scales are gathered
(``torch.distributed.all_gather_object``), every rank solves the same global cut, each group's
representatives and merges are computed by its owner and gathered, and every rank rewrites its own
copy of the model. The plan is identical to the single-process plan. The model must be the same on
every rank (checked: group structure, settings and a sample of the weights). Tracing, the probe, the
rewrite and its verification run on every rank.

With calibration data, each rank measures its share and :func:`all_reduce_stats` combines the
statistics over the ranks (every rank then plans with those of all the data);
:func:`broadcast_buffers` copies rank 0's re-estimated BatchNorm statistics to every rank.

An error on one rank (a bad layer, an internal failure) is gathered with the results and raised on
every rank, so no rank waits for a peer that has failed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from .. import engine
from ..backends import engine_device
from .descriptors import group_descriptors
from .groups import ChannelGroup
from .stats import GroupStats

# The default bound of one streamed batch on the engine device (a larger group goes alone).
BATCH_BYTES = 512 * 2**20

T = TypeVar("T")


def resolve_process_group(process_group: Any = None) -> Any:
    """The process group the engine pass is spread over, or None for a single process.

    ``None``: the default group when ``torch.distributed`` is initialised (``torchrun``) with more
    than one rank; ``False``: never distributed; a process group: that group (a group of one rank
    is a single process).
    """
    if process_group is False:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise ValueError(
                "process_group given but torch.distributed is not initialised "
                "(call torch.distributed.init_process_group first, or run under torchrun)"
            )
        return None
    pg: Any = dist.group.WORLD if process_group is None else process_group
    if isinstance(pg, int) and pg == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"process_group: rank {dist.get_rank()} is not a member of this group")
    return pg if dist.get_world_size(pg) > 1 else None


def rank_of(process_group: Any) -> int:
    """This process's rank in a group from :func:`resolve_process_group` (0 for None)."""
    if process_group is None:
        return 0
    import torch.distributed as dist

    return int(dist.get_rank(process_group))


def group_cost(group: ChannelGroup) -> int:
    """n^2 * d of a group's engine pass (n units, d descriptor columns estimated from the weights'
    shapes: each producer row is its weight's per-channel size plus one)."""
    d = 0
    for m in group.producers():
        w = m.module.weight
        n_out = (
            int(w.shape[1] * m.module.groups) if getattr(m.module, "transposed", False) else None
        )
        per = w.numel() // (n_out or int(w.shape[0]))
        d += int(per) + 1
    return group.n_units**2 * max(d * group.ch_groups, 1)


def assign_ranks(costs: Sequence[int], world_size: int) -> list[int]:
    """Owner rank of each group: largest cost first onto the least loaded rank (ties: lower group
    index first, lower rank first). Deterministic, so every rank computes the same assignment."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    load = [0] * world_size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-int(costs[i]), i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += int(costs[i])
    return owner


def all_reduce_sums(tensors: Sequence[torch.Tensor], process_group: Any = None) -> None:
    """Sum accumulated statistics (e.g. calibration sums and counts) over the ranks, in place.

    The hook for statistics passes: each rank accumulates over its share of the calibration data,
    then calls this on its sums; afterwards every rank holds the totals. A no-op for a single
    process (``resolve_process_group`` semantics for ``process_group``). Tensors are summed in
    their own dtype on their own device (float64 sums stay exact to rounding).
    """
    pg = resolve_process_group(process_group)
    if pg is None:
        return
    import torch.distributed as dist

    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"all_reduce_sums takes tensors, got {type(t).__name__}")
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=pg)


def all_reduce_stats(
    stats: dict[str, GroupStats] | Callable[[], dict[str, GroupStats]], process_group: Any = None
) -> dict[str, GroupStats]:
    """Calibration statistics of every rank's share of the data -> those of all the data, on every
    rank (a single process: unchanged).

    ``stats`` may be the statistics pass itself (a function of no argument): an error it raises on
    one rank is then raised on every rank instead of leaving the others waiting.

    The parallel combination of means and covariances, with deviations about the global mean (no
    cancellation): n = sum n_r, mean = sum n_r m_r / n, cov = sum n_r (C_r + (m_r - m)(m_r - m)^T) / n;
    two :func:`all_reduce_sums` of float64 sums. Every rank must hold the same groups (checked).
    """
    pg = resolve_process_group(process_group)
    if pg is None:
        return stats() if callable(stats) else stats
    err: BaseException | None = None
    if callable(stats):
        try:
            stats = stats()
        except Exception as e:  # raised on every rank after the gather
            err, stats = e, {}
    keys = sorted(stats)
    shapes = [(k, stats[k].n_channels) for k in keys]
    parts = _gather(pg, (shapes, err))
    _raise_first(parts)
    if any(p != shapes for p, _ in parts):
        raise ValueError("calibration statistics: the ranks measured different channel groups")
    if not keys:
        return stats
    first = []
    for k in keys:
        st = stats[k]
        mean = st.mean.to(torch.float64)
        if st.n == 0:
            mean = torch.zeros_like(mean)
        first += [
            torch.full((1,), float(st.n), dtype=torch.float64, device=mean.device),
            mean * st.n,
        ]
    all_reduce_sums(first, pg)
    second, means = [], []
    for j, k in enumerate(keys):
        st = stats[k]
        n, total = float(first[2 * j].item()), first[2 * j + 1]
        mean = total / n if n > 0 else total
        means.append((n, mean))
        if st.n == 0:
            second.append(torch.zeros_like(st.cov, dtype=torch.float64))
            continue
        d = st.mean.to(torch.float64) - mean
        second.append(st.n * (st.cov.to(torch.float64) + torch.outer(d, d)))
    all_reduce_sums(second, pg)
    out = {}
    for k, (n, mean), m2 in zip(keys, means, second, strict=True):
        st = stats[k]
        cov = m2 / n if n > 0 else m2
        cov = (cov + cov.T) / 2
        out[k] = dataclasses.replace(st, n=int(round(n)), mean=mean, cov=cov)
    return out


def broadcast_buffers(module: torch.nn.Module, process_group: Any = None, src: int = 0) -> None:
    """Every floating-point buffer of ``module`` (e.g. BatchNorm running statistics re-estimated on
    each rank's share of the data) made equal to rank ``src``'s (of the group), in place."""
    pg = resolve_process_group(process_group)
    if pg is None:
        return
    import torch.distributed as dist

    root = dist.get_global_rank(pg, src) if pg is not dist.group.WORLD else src
    for b in module.buffers():
        if b.is_floating_point():
            dist.broadcast(b.data, src=root, group=pg)


@dataclass
class EnginePass:
    """What the engine pass produced: dendrograms and height scales of every group (gathered from
    their owners), descriptors of this rank's groups, and memory/launch statistics."""

    zs: list[np.ndarray]  # scipy Z per group, raw heights
    scales: list[float]  # height_scale per group
    vs: list[torch.Tensor | None]  # descriptors (on the CPU) of the groups this rank owns
    owner: list[int]
    rank: int = 0
    world_size: int = 1
    process_group: Any = field(default=None, repr=False)
    stats: dict[str, Any] = field(default_factory=dict)

    def map_groups(self, fn: Callable[[int], T]) -> list[T]:
        """``[fn(i) for every group i]``, each computed by the group's owner and gathered."""
        if self.process_group is None:
            return [fn(i) for i in range(len(self.owner))]
        mine: dict[int, T] = {}
        err: BaseException | None = None
        try:
            for i, r in enumerate(self.owner):
                if r == self.rank:
                    mine[i] = fn(i)
        except Exception as e:  # raised on every rank after the gather
            err = e
        parts = _gather(self.process_group, (mine, err))
        _raise_first(parts)
        out: dict[int, T] = {}
        for part, _ in parts:
            out.update(part)
        return [out[i] for i in range(len(self.owner))]


def _gather(pg: Any, obj: Any) -> list[Any]:
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size(pg)
    dist.all_gather_object(parts, obj, group=pg)
    return parts


def _raise_first(parts: list[Any]) -> None:
    for r, (_, err) in enumerate(parts):
        if err is not None:
            if isinstance(err, Exception):
                raise err
            raise RuntimeError(f"rank {r} failed: {err!r}")


def _fingerprint(groups: Sequence[ChannelGroup], context: dict[str, Any]) -> Any:
    digest = []
    for g in groups:
        for m in g.producers():
            w = m.module.weight.detach().reshape(-1)
            step = max(1, w.numel() // 1024)
            digest.append(float(w[::step].to(torch.float64).sum()))
    return (
        [(g.root_name, g.n_channels, g.ch_groups) for g in groups],
        repr(sorted(context.items())),
        digest,
    )


def _check_same(pg: Any, groups: Sequence[ChannelGroup], context: dict[str, Any]) -> None:
    prints = _gather(pg, _fingerprint(groups, context))
    names = ("channel groups", "settings", "weights")
    for r, fp in enumerate(prints[1:], start=1):
        for what, a, b in zip(names, prints[0], fp, strict=True):
            if a != b:
                raise ValueError(
                    f"simprune.prune across ranks: rank {r}'s {what} differ from rank 0's; every "
                    "rank must prune the same model with the same settings"
                )


def _batch_budget(dev: torch.device) -> int:
    """The default bound of a streamed batch: :data:`BATCH_BYTES`, or on a GPU a quarter of its
    free memory when that is more (many small groups in one launch)."""
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return max(BATCH_BYTES, int(free) // 4)
    return BATCH_BYTES


def engine_pass(
    groups: Sequence[ChannelGroup],
    metric: str,
    method: str,
    backend: str = "auto",
    *,
    process_group: Any = None,
    batch_bytes: int | None = None,
    timings: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    context: dict[str, Any] | None = None,
) -> EnginePass:
    """Descriptors -> distances -> linkage for every group, streamed in bounded batches and spread
    over the ranks of ``process_group`` (see the module docstring).

    ``timings`` gets the seconds of "descriptors", "distances", "linkage" (this rank's) and
    "gather" (waiting for and exchanging with the other ranks); ``progress(k, total)`` is called
    after each of this rank's groups; ``context`` (the settings) must agree across ranks.
    """
    if batch_bytes is not None and not (isinstance(batch_bytes, int) and batch_bytes >= 1):
        raise ValueError(f"batch_bytes must be None or a positive int, got {batch_bytes!r}")
    pg = resolve_process_group(process_group)
    rank, world = 0, 1
    if pg is not None:
        import torch.distributed as dist

        rank, world = dist.get_rank(pg), dist.get_world_size(pg)
    t_all = timings if timings is not None else {}
    for stage in ("descriptors", "distances", "linkage"):
        t_all.setdefault(stage, 0.0)
    if pg is not None:
        t0 = time.perf_counter()
        _check_same(pg, groups, context or {})
        t_all["gather"] = t_all.get("gather", 0.0) + time.perf_counter() - t0
    owner = assign_ranks([group_cost(g) for g in groups], world)
    mine = [i for i, r in enumerate(owner) if r == rank]

    vs: list[torch.Tensor | None] = [None] * len(groups)
    zs: dict[int, np.ndarray] = {}
    scales: dict[int, float] = {}
    stats: dict[str, Any] = {"peak_bytes": 0, "launches": 0, "groups": len(mine)}
    err: BaseException | None = None
    batch: list[int] = []
    used = 0
    dev: torch.device | None = None
    budget: int | None = None
    pending: list[torch.Tensor] = []  # the batch's descriptors, still on the model's device

    def flush() -> None:
        nonlocal batch, used, pending
        if not batch:
            return
        assert dev is not None
        t: dict[str, float] = {}
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        # Only this batch's descriptors go to the engine device (the copy counts as "distances");
        # they are freed with the batch.
        t0 = time.perf_counter()
        on_dev = [v.to(dev) for v in pending]
        t_all["distances"] += time.perf_counter() - t0
        for i, z in zip(batch, engine.dendrograms(on_dev, metric, method, backend, t), strict=True):
            zs[i] = z
        del on_dev
        if cuda:
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - base
        else:
            peak = used
        stats["peak_bytes"] = max(stats["peak_bytes"], int(peak))
        stats["launches"] += 1
        t_all["distances"] += t.get("distances", 0.0)
        t_all["linkage"] += t.get("linkage", 0.0)
        batch, used, pending = [], 0, []

    try:
        for k, i in enumerate(mine):
            t0 = time.perf_counter()
            v = group_descriptors(groups[i], metric)
            scales[i] = engine.height_scale(v, metric)
            t_all["descriptors"] += time.perf_counter() - t0
            if v.shape[0] >= 2:
                dev = engine_device(backend, v.device)
                need = engine.working_set_bytes(
                    int(v.shape[0]), int(v.shape[1]), v.element_size(), dev.type
                )
                if budget is None:
                    budget = _batch_budget(dev) if batch_bytes is None else batch_bytes
                if batch and used + need > budget:
                    flush()
                batch.append(i)
                used += need
                pending.append(v)
            else:
                zs[i] = np.zeros((0, 4))
            vs[i] = v.detach().cpu()
            if progress is not None:
                progress(k + 1, len(mine))
        flush()
    except Exception as e:  # raised on every rank after the gather
        if pg is None:
            raise
        err = e
    stats["measured"] = (
        "torch.cuda.max_memory_allocated" if dev is not None and dev.type == "cuda" else None
    )
    stats["device"] = str(dev) if dev is not None else None
    if pg is None:
        stats.update(
            rank=0, world_size=1, per_rank=[stats["peak_bytes"]], per_rank_groups=[len(mine)]
        )
        if stats["measured"] is None:
            stats["measured"] = "estimate from sizes"
        return EnginePass(
            [zs[i] for i in range(len(groups))],
            [scales[i] for i in range(len(groups))],
            vs,
            owner,
            stats=stats,
        )
    t0 = time.perf_counter()
    parts = _gather(pg, ((zs, scales, dict(stats)), err))
    t_all["gather"] = t_all.get("gather", 0.0) + time.perf_counter() - t0
    _raise_first(parts)
    all_z: dict[int, np.ndarray] = {}
    all_s: dict[int, float] = {}
    for (z_r, s_r, _), _ in parts:
        all_z.update(z_r)
        all_s.update(s_r)
    per_rank = [int(p[0][2]["peak_bytes"]) for p in parts]
    per_rank_groups = [int(p[0][2]["groups"]) for p in parts]
    kinds = {p[0][2]["measured"] for p in parts} - {None}
    stats.update(
        rank=rank,
        world_size=world,
        per_rank=per_rank,
        per_rank_groups=per_rank_groups,
        peak_bytes=max(per_rank),
        launches=sum(int(p[0][2]["launches"]) for p in parts),
        groups=len(groups),
        measured=(kinds.pop() if len(kinds) == 1 else "estimate from sizes"),
    )
    return EnginePass(
        [all_z[i] for i in range(len(groups))],
        [all_s[i] for i in range(len(groups))],
        vs,
        owner,
        rank,
        world,
        pg,
        stats,
    )
