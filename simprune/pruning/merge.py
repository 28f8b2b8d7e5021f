"""Representatives and merge compensation (metric.md sections 4 and 6).

Before channel j of a cluster is removed, its consumers' input weights are folded into its
representative r: ``W_next[:, r] += a_j * W_next[:, j]``. With ``merge="ls"`` (default) a_j is the
least-squares coefficient <v_j, v_r> / <v_r, v_r> of j's descriptor on r's (1 for an exact duplicate,
the positive factor for a positively scaled Linear/Conv without BN); ``"sum"`` uses a_j = 1.
Consumers reached through a flatten own a block of inputs per channel (the whole block is folded);
grouped-conv consumers fold within each conv group; depthwise convolutions are not consumers (their
channel is removed with the group).

With calibration data, ``merge="data"`` (:func:`data_merges`) reconstructs each removed channel from
*all* kept channels of its group by ridge least squares on the statistics of
:mod:`simprune.pruning.stats`: several (removed, kept, coefficient) entries per removed channel, plus
a mean shift per removed channel that goes into every consumer's bias (:func:`apply_shifts`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dendrogram import representatives
from .groups import ChannelGroup, Member

MERGE_MODES = ("ls", "sum")


def choose_kept(
    v: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    keep_per_cluster: int,
    sqdist: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept units (sorted) of one group given its cluster labels."""
    if method == "energy":
        energy = (v * v).sum(1)
        return representatives(labels, energy=energy, keep_per_cluster=keep_per_cluster)
    if method == "medoid":
        if sqdist is None:
            sqdist = torch.cdist(v, v).pow(2)
        return representatives(
            labels, distances=sqdist, method="medoid", keep_per_cluster=keep_per_cluster
        )
    raise ValueError(f"unknown representative {method!r}; expected 'energy' or 'medoid'")


def assign(
    v: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor, mode: str | None
) -> list[tuple[int, int, float]]:
    """(removed unit, representative unit, coefficient) for every removed unit.

    The representative is the kept unit of the same cluster with the nearest descriptor (the only one
    when keep_per_cluster=1). ``mode=None`` gives coefficient 0 (no merge).
    """
    lab = labels.numpy()
    kept_np = kept.numpy()
    is_kept = np.zeros(len(lab), dtype=bool)
    is_kept[kept_np] = True
    out: list[tuple[int, int, float]] = []
    by_cluster: dict[int, list[int]] = {}
    for k in kept_np:
        by_cluster.setdefault(int(lab[k]), []).append(int(k))
    for j in np.flatnonzero(~is_kept):
        cands = by_cluster[int(lab[j])]
        if len(cands) == 1:
            r = cands[0]
        else:
            d = ((v[cands] - v[int(j)]) ** 2).sum(1)
            r = cands[int(torch.argmin(d))]
        if mode is None:
            a = 0.0
        elif mode == "sum":
            a = 1.0
        else:
            den = float(v[r] @ v[r])
            a = float(v[int(j)] @ v[r]) / den if den > 0 else 0.0
        out.append((int(j), r, a))
    return out


def expand_units(
    group: ChannelGroup, unit_merges: Sequence[tuple[int, int, float]]
) -> list[tuple[int, int, float]]:
    """Unit merges -> channel merges (a unit is one position in every conv group)."""
    gs = group.n_units
    return [(j + g * gs, r + g * gs, a) for g in range(group.ch_groups) for j, r, a in unit_merges]


def _positions(m: Member, channels: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Layer input positions ``(len(channels), k)`` of ``channels`` in consumer ``m`` and a mask of
    the channels it can fold: every channel of a consumer reached through a flatten owns a block of
    k inputs (k = 1 otherwise). None when no channel has a usable block (Torch-Pruning's mapping
    points past the layer's inputs: a pixel shuffle, an einsum over the channels -- no fold; the
    rewrite's verification rejects the group)."""
    idx = m.layer_index_map()
    ks = [len(v) for v in idx.values()]
    if not ks:
        return None
    k = max(set(ks), key=ks.count)
    pos = np.full((len(channels), k), -1, dtype=np.int64)
    ok = np.zeros(len(channels), dtype=bool)
    for t, c in enumerate(channels.tolist()):
        li = idx.get(int(c))
        if li is None or len(li) != k or max(li) >= n_in:
            continue
        pos[t] = li
        ok[t] = True
    return (pos, ok) if ok.any() else None


def _in_view(mod: nn.Module) -> torch.Tensor:
    """The consumer's weight as (out, in, ...) (a view: ConvTranspose weights are (in, out, ...))."""
    w: torch.Tensor = mod.weight  # type: ignore[assignment]
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed:
        return w.transpose(0, 1)
    return w


def _n_in(mod: nn.Module) -> int:
    w: torch.Tensor = mod.weight  # type: ignore[assignment]
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed:
        return int(w.shape[0])
    return int(w.shape[1] * getattr(mod, "groups", 1))


def _conv_blocks(mod: nn.Module, n_in: int) -> list[tuple[slice, int, int]]:
    """(output rows, first input, inputs) of each conv group of a consumer (one for Linear and
    groups == 1, where the view of :func:`_in_view` spans all inputs)."""
    g = getattr(mod, "groups", 1)
    if g == 1:
        return [(slice(None), 0, n_in)]
    w = _in_view(mod)
    ipg, opg = n_in // g, w.shape[0] // g
    return [(slice(k * opg, (k + 1) * opg), k * ipg, ipg) for k in range(g)]


def _supported(mod: Any) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, nn.modules.conv._ConvNd):
        return not (mod.transposed and mod.groups > 1)
    return False


@torch.no_grad()
def _fold(m: Member, merges: Sequence[tuple[int, int, float]]) -> int:
    """Fold removed inputs into kept ones in one consumer: ``W[:, r] += a * W[:, j]`` for every
    (j, r, a), at every position of a flatten-reached block, within conv groups for grouped convs
    (pairs across conv groups are skipped). Returns the (input position) pairs folded.

    Several entries may share a removed channel (the data merge) or a kept one; sources (removed)
    and destinations (kept) are disjoint, so every read sees the original weights.
    """
    mod = m.module
    if not _supported(mod):
        return 0
    trip = [(j, r, a) for j, r, a in merges if a != 0.0]
    if not trip:
        return 0
    n_in = _n_in(mod)
    js = np.asarray([t[0] for t in trip], dtype=np.int64)
    rs = np.asarray([t[1] for t in trip], dtype=np.int64)
    chans = np.unique(np.concatenate([js, rs]))
    got = _positions(m, chans, n_in)
    if got is None:
        return 0
    pos, ok = got
    row = {int(c): t for t, c in enumerate(chans.tolist())}
    ti = np.asarray([row[int(j)] for j in js], dtype=np.int64)
    tr = np.asarray([row[int(r)] for r in rs], dtype=np.int64)
    coef = np.asarray([t[2] for t in trip], dtype=np.float64)
    use = ok[ti] & ok[tr]
    w = _in_view(mod)
    n = 0
    for rows, first, width in _conv_blocks(mod, n_in):
        # Pairs whose whole blocks lie in this conv group.
        pj, pr = pos[ti] - first, pos[tr] - first
        inside = (
            use & (pj >= 0).all(1) & (pj < width).all(1) & (pr >= 0).all(1) & (pr < width).all(1)
        )
        if not inside.any():
            continue
        uj, jj = np.unique(ti[inside], return_inverse=True)
        ur, rr = np.unique(tr[inside], return_inverse=True)
        a = torch.zeros(len(uj), len(ur), dtype=torch.float64)
        a.index_put_(
            (torch.from_numpy(jj.reshape(-1)), torch.from_numpy(rr.reshape(-1))),
            torch.from_numpy(coef[inside]),
            accumulate=True,
        )
        k = pos.shape[1]
        src = torch.from_numpy((pos[uj] - first).reshape(-1)).to(w.device)
        dst = torch.from_numpy((pos[ur] - first).reshape(-1)).to(w.device)
        wg = w[rows]
        taps = wg.shape[2:]
        ws = wg.index_select(1, src).reshape(wg.shape[0], len(uj), k, -1)
        add = torch.einsum("ojkt,jr->orkt", ws, a.to(device=w.device, dtype=w.dtype))
        wg.index_add_(1, dst, add.reshape(wg.shape[0], len(ur) * k, *taps))
        n += int(inside.sum()) * k
    return n


def apply_merges(group: ChannelGroup, channel_merges: Sequence[tuple[int, int, float]]) -> int:
    """Fold every removed channel into its representative(s) in every consumer of the group."""
    return sum(_fold(m, channel_merges) for m in group.consumers())


@torch.no_grad()
def _shift(m: Member, shifts: Sequence[tuple[int, float]]) -> int:
    """``bias += c * sum(W[:, positions of j])`` in one consumer for every (j, c): the contribution a
    removed channel's constant part c makes, summed over its flatten block and kernel taps (zero
    padding makes this approximate at a convolution's borders). A consumer without a bias gets a
    zero one first. Returns the channels shifted."""
    mod = m.module
    sh = [(j, c) for j, c in shifts if c != 0.0]
    if not _supported(mod) or not sh:
        return 0
    n_in = _n_in(mod)
    js = np.asarray([j for j, _ in sh], dtype=np.int64)
    got = _positions(m, js, n_in)
    if got is None:
        return 0
    pos, ok = got
    cs = np.asarray([c for _, c in sh], dtype=np.float64)
    w = _in_view(mod)
    delta = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    n = 0
    for rows, first, width in _conv_blocks(mod, n_in):
        p = pos - first
        inside = ok & (p >= 0).all(1) & (p < width).all(1)
        if not inside.any():
            continue
        src = torch.from_numpy(p[inside].reshape(-1)).to(w.device)
        wg = w[rows]
        # (out, channels, k * taps) summed over the block and the taps.
        ws = wg.index_select(1, src).reshape(wg.shape[0], int(inside.sum()), -1).sum(2)
        c = torch.from_numpy(cs[inside]).to(w.device)
        delta[rows] += ws.to(torch.float64) @ c
        n += int(inside.sum())
    if n == 0:
        return 0
    if mod.bias is None:
        mod.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    mod.bias.add_(delta.to(mod.bias.dtype))
    return n


def apply_shifts(group: ChannelGroup, shifts: Sequence[tuple[int, float]]) -> int:
    """Add every removed channel's constant part to the bias of every consumer of the group."""
    return sum(_shift(m, shifts) for m in group.consumers())


# ---- the data merge (metric.md section 6) -------------------------------------------------------

# Ridge lambda = eps * tr(S_KK) / |K| (the kept channels' mean variance): at the noise floor of the
# statistics (float64 or float32 products), so duplicated channels merge exactly.
DATA_RIDGE = {torch.float64: 1e-10, torch.float32: 1e-6}
# With no more samples than kept channels (a rank-deficient covariance): a real ridge.
FALLBACK_RIDGE = 1e-3
# The plan stores one [removed, kept, coefficient] entry per pair: a group needing more (7168 x 7168
# = 51M at C = 14336 half pruned: ~8 GB as Python lists) keeps its descriptor merge, with a warning.
MAX_MERGE_ENTRIES = 4_000_000


def _blocks(group_n: int, ch_groups: int) -> list[np.ndarray]:
    """The channels of each conv group (a merge stays within its conv group)."""
    gs = group_n // ch_groups
    return [np.arange(g * gs, (g + 1) * gs) for g in range(ch_groups)]


def ridge_solve_batched(
    problems: Sequence[tuple[torch.Tensor, torch.Tensor, float]], device: torch.device
) -> list[torch.Tensor]:
    """X = (A + lam I)^-1 R for each (A (k, k) PSD, R (k, m), lam), by batched Cholesky on ``device``.

    Problems are bucketed by size (the next power of two up to 128, then multiples of 64), padded
    with the identity and zero right-hand sides (the padded blocks do not touch the real ones). A factorisation that fails (an A that
    is not positive definite after the ridge: NaN, or lam = 0 with a singular A) is retried with the
    ridge grown 100x, up to 1e-2 of the mean diagonal, then gives X = 0.
    """
    out: list[torch.Tensor | None] = [None] * len(problems)
    buckets: dict[int, list[int]] = {}
    for i, (a, _, _) in enumerate(problems):
        k = int(a.shape[0])
        size = 1 << max(0, k - 1).bit_length() if k <= 128 else -(-k // 64) * 64
        buckets.setdefault(size, []).append(i)
    for size, idx in sorted(buckets.items()):
        mmax = max(int(problems[i][1].shape[1]) for i in idx)
        aa = torch.eye(size, dtype=torch.float64, device=device).repeat(len(idx), 1, 1)
        rr = torch.zeros(len(idx), size, mmax, dtype=torch.float64, device=device)
        lam = torch.zeros(len(idx), dtype=torch.float64, device=device)
        scale = torch.ones(len(idx), dtype=torch.float64, device=device)
        for t, i in enumerate(idx):
            a, r, lm = problems[i]
            k, m = a.shape[0], r.shape[1]
            aa[t, :k, :k] = a.to(device, torch.float64)
            rr[t, :k, :m] = r.to(device, torch.float64)
            lam[t] = lm
            d = float(a.diagonal().mean()) if k else 1.0
            scale[t] = d if d > 0 else 1.0
        eye = torch.eye(size, dtype=torch.float64, device=device)
        x = torch.zeros_like(rr)
        todo = torch.arange(len(idx), device=device)
        for _ in range(6):
            if todo.numel() == 0:
                break
            l_, info = torch.linalg.cholesky_ex(aa[todo] + lam[todo, None, None] * eye)
            good = info == 0
            if good.any():
                x[todo[good]] = torch.cholesky_solve(rr[todo[good]], l_[good])
            todo = todo[~good]
            lam[todo] = torch.maximum(lam[todo] * 100, 1e-10 * scale[todo])
            lam[todo] = torch.minimum(lam[todo], 1e-2 * scale[todo])
        for t, i in enumerate(idx):
            k, m = problems[i][0].shape[0], problems[i][1].shape[1]
            out[i] = x[t, :k, :m]
    return [o if o is not None else torch.zeros(0) for o in out]


def data_merges(
    items: Sequence[tuple[ChannelGroup, Any, Sequence[int]]],
    device: torch.device | None = None,
    ridge: float | None = None,
) -> list[tuple[list[list[Any]], list[list[Any]]] | None]:
    """The data merge of several groups: (merges, shifts) in root channel ids for each
    (group, :class:`~simprune.pruning.stats.GroupStats`, kept channels).

    Per conv group of channels, kept K, removed R, covariance S and mean mu (metric.md section 6):
    B = (S_KK + lam I)^-1 S_KR is the ridge least-squares reconstruction of the removed channels from
    the kept ones (centred), lam = ``ridge`` * tr(S_KK) / |K| (default :data:`DATA_RIDGE` for the
    statistics' precision; :data:`FALLBACK_RIDGE`, with a warning, when the group has no more samples
    than kept channels). Every consumer then gets W_K += W_R B^T -- the merges [j, r, B[r, j]] -- and
    bias += W_R c with c = mu_R - B^T mu_K -- the shifts [j, c_j]. Exact when the removed channels
    are linear functions of the kept ones on the data (duplicates: B = 1, c = 0); the identity when
    nothing is removed. All solves run batched on ``device`` (default: the statistics' device).
    A group whose merges would need more than :data:`MAX_MERGE_ENTRIES` plan entries gets None
    (with a warning): the caller keeps its descriptor merge.
    """
    from .stats import warn_rank_deficient

    problems: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    where: list[tuple[int, np.ndarray, np.ndarray]] = []
    skipped: list[int] = []
    for gi, (g, st, kept) in enumerate(items):
        keep = np.zeros(g.n_channels, dtype=bool)
        keep[np.asarray(list(kept), dtype=np.int64)] = True
        n_entries = sum(
            int(keep[b].sum()) * int((~keep[b]).sum()) for b in _blocks(g.n_channels, g.ch_groups)
        )
        if n_entries > MAX_MERGE_ENTRIES:
            warnings.warn(
                f"group {g.root_name!r}: the data merge needs {n_entries:,} plan entries (removed x "
                f"kept channels), more than {MAX_MERGE_ENTRIES:,}; this group keeps the descriptor "
                "merge ('ls')",
                stacklevel=3,
            )
            skipped.append(gi)
            continue
        eps = ridge
        if warn_rank_deficient(st, int(keep.sum())):
            eps = FALLBACK_RIDGE if ridge is None else ridge
        if eps is None:
            eps = DATA_RIDGE[torch.float64 if st.product_dtype == torch.float64 else torch.float32]
        for blk in _blocks(g.n_channels, g.ch_groups):
            k_ids, r_ids = blk[keep[blk]], blk[~keep[blk]]
            if len(r_ids) == 0 or len(k_ids) == 0:
                continue
            kt = torch.from_numpy(k_ids).to(st.cov.device)
            rt = torch.from_numpy(r_ids).to(st.cov.device)
            s_kk = st.cov.index_select(0, kt).index_select(1, kt)
            s_kr = st.cov.index_select(0, kt).index_select(1, rt)
            tr = float(s_kk.diagonal().sum())
            problems.append((s_kk, s_kr, eps * tr / len(k_ids)))
            where.append((gi, k_ids, r_ids))
    dev = device if device is not None else (items[0][1].cov.device if items else None)
    sols = ridge_solve_batched(problems, dev or torch.device("cpu")) if problems else []
    out: list[tuple[list[list[Any]], list[list[Any]]] | None] = [([], []) for _ in items]
    for gi in skipped:
        out[gi] = None
    for (gi, k_ids, r_ids), b in zip(where, sols, strict=True):
        st = items[gi][1]
        mu = st.mean.to(torch.float64)
        b = b.cpu()
        c = mu[torch.from_numpy(r_ids)].cpu() - b.T @ mu[torch.from_numpy(k_ids)].cpu()
        got = out[gi]
        assert got is not None
        merges, shifts = got
        merges += _triples(b.numpy(), k_ids, r_ids)
        shifts += [
            [int(j), float(v)] for j, v in zip(r_ids.tolist(), c.tolist(), strict=True) if v != 0.0
        ]
    return out


def _triples(b: np.ndarray, k_ids: np.ndarray, r_ids: np.ndarray) -> list[list[Any]]:
    """[removed, kept, coefficient] for the non-zero entries of B (|K|, |R|), by removed channel
    then kept channel (blocks come in channel order, so a group's list is sorted)."""
    cols, rows = np.nonzero(b.T)  # removed-major
    return [
        [j, r, a]
        for j, r, a in zip(
            r_ids[cols].tolist(), k_ids[rows].tolist(), b[rows, cols].tolist(), strict=True
        )
    ]


def data_merge_plans(
    groups: Sequence[ChannelGroup], plans: Sequence[Any], backend: str = "auto"
) -> list[str]:
    """Replace the merges of every pruned group that has statistics (``group.stats``) by its data
    merge and mean shifts (:func:`data_merges`, solved on the engine device of ``backend``), in
    place. Pruned groups without statistics keep the merges they have (the descriptor merge) with a
    warning; returns their root names."""
    from ..backends import engine_device

    items, targets, missing = [], [], []
    for g, gp in zip(groups, plans, strict=True):
        if not gp.removed:
            continue
        if g.stats is None:
            missing.append(g.root_name)
            continue
        items.append((g, g.stats, gp.kept))
        targets.append(gp)
    if missing:
        warnings.warn(
            f"merge='data': no consumer input of group(s) {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} holds all of their channels; their removed "
            "channels use the descriptor merge ('ls')",
            stacklevel=3,
        )
    device = engine_device(backend, items[0][1].cov.device) if items else None
    for gp, got in zip(targets, data_merges(items, device), strict=True):
        if got is not None:  # None: too many entries, the descriptor merge stays
            gp.merges, gp.shifts = got
    return missing


@torch.no_grad()
def _zero(m: Member, channels: Sequence[int]) -> None:
    """Zero the inputs of ``channels`` in one consumer (their removal, without rewriting it)."""
    mod = m.module
    if not _supported(mod) or not channels:
        return
    n_in = _n_in(mod)
    got = _positions(m, np.asarray(list(channels), dtype=np.int64), n_in)
    if got is None:
        return
    pos, ok = got
    w = _in_view(mod)
    idx = torch.from_numpy(pos[ok].reshape(-1))
    for rows, first, width in _conv_blocks(mod, n_in):
        local = idx - first
        local = local[(local >= 0) & (local < width)]
        if local.numel():
            w[rows].index_fill_(1, local.to(w.device), 0.0)


def _solve_paired(st: Any, g: ChannelGroup, kept: Sequence[int]) -> tuple[list[Any], list[Any]]:
    """The data merge of one group from joint statistics of [z_working, z_original] (2C)."""
    c = g.n_channels
    keep = np.zeros(c, dtype=bool)
    keep[np.asarray(list(kept), dtype=np.int64)] = True
    from .stats import warn_rank_deficient

    eps = FALLBACK_RIDGE if warn_rank_deficient(st, int(keep.sum())) else None
    if eps is None:
        eps = DATA_RIDGE[torch.float64 if st.product_dtype == torch.float64 else torch.float32]
    merges: list[list[Any]] = []
    shifts: list[list[Any]] = []
    mu = st.mean.to(torch.float64).cpu()
    cov = st.cov.to(torch.float64).cpu()
    for blk in _blocks(c, g.ch_groups):
        k_ids, r_ids = blk[keep[blk]], blk[~keep[blk]]
        if len(r_ids) == 0 or len(k_ids) == 0:
            continue
        kt, rt = torch.from_numpy(k_ids), torch.from_numpy(r_ids)
        s_kk = cov[kt][:, kt]
        s_kr = cov[kt][:, rt + c]
        lam = eps * float(s_kk.diagonal().sum()) / len(k_ids)
        (b,) = ridge_solve_batched([(s_kk, s_kr, lam)], torch.device("cpu"))
        sh = mu[rt + c] - b.T @ mu[kt]
        merges += _triples(b.numpy(), k_ids, r_ids)
        shifts += [[int(j), float(v)] for j, v in zip(r_ids.tolist(), sh.tolist(), strict=True)]
    return merges, [s for s in shifts if s[1] != 0.0]


def sequential_data_merge_plans(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    plans: Sequence[Any],
    data: Any,
    example_inputs: Any,
) -> list[str]:
    """The layer-by-layer data merge (in place on ``plans``): groups in the order the forward
    reaches their consumers; each group's removed channels *of the original model* are regressed
    on its kept channels *in the model pruned so far* (earlier groups merged, shifted and their
    removed inputs zeroed), one pass over ``data`` per group, so errors of earlier groups are
    compensated instead of compounding. ``model`` is not modified. Returns the pruned groups
    without usable statistics (they keep the descriptor merge)."""
    import copy

    from .stats import collect_paired_stats, execution_order

    working = copy.deepcopy(model)
    order = execution_order(model, example_inputs)

    def first_read(g: ChannelGroup) -> int:
        return min((order.get(m.name, 1 << 30) for m in g.consumers()), default=1 << 30)

    missing = []
    for gi in sorted(range(len(groups)), key=lambda i: first_read(groups[i])):
        g, gp = groups[gi], plans[gi]
        if not gp.removed:
            continue
        wg = copy.copy(g)
        wg.members = [
            Member(m.name, working.get_submodule(m.name), m.kind, m.idxs, m.root_idxs)
            if m.kind == "consumer"
            else m
            for m in g.members
        ]
        st = collect_paired_stats(model, working, g, data, example_inputs)
        if st is None:
            missing.append(g.root_name)
        else:
            gp.merges, gp.shifts = _solve_paired(st, g, gp.kept)
        apply_shifts(wg, [(int(j), float(c)) for j, c in gp.shifts])
        apply_merges(wg, [(int(j), int(r), float(a)) for j, r, a in gp.merges])
        for m in wg.consumers():
            _zero(m, gp.removed)
    if missing:
        warnings.warn(
            f"merge='data': no consumer input of group(s) {missing[:5]} holds all of their "
            "channels; their removed channels use the descriptor merge ('ls')",
            stacklevel=3,
        )
    return missing
