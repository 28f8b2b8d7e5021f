"""Representatives and merge compensation (metric.md sections 4 and 6).

Before channel j of a cluster is removed, its consumers' input weights are folded into its
representative r: ``W_next[:, r] += a_j * W_next[:, j]``. With ``merge="ls"`` (default) a_j is the
least-squares coefficient <v_j, v_r> / <v_r, v_r> of j's descriptor on r's (1 for an exact duplicate,
the positive factor for a positively scaled Linear/Conv without BN); ``"sum"`` uses a_j = 1.
Consumers reached through a flatten own a block of inputs per channel (the whole block is folded);
grouped-conv consumers fold within each conv group; depthwise convolutions are not consumers (their
channel is removed with the group).

With calibration data, ``merge="data"`` (:func:`data_merge_plans`) reconstructs each removed channel
from *all* kept channels of its group by ridge least squares on the statistics of
:mod:`simprune.pruning.stats` (:func:`data_merge_blocks`): a coefficient per (removed, kept) pair,
plus a mean shift per removed channel that goes into every consumer's bias (:func:`apply_shifts`).
The plan stores the coefficients of a small group as (removed, kept, coefficient) triples
(``GroupPlan.merges``, folded by :func:`apply_merges`) and those of a group with more than
:data:`DENSE_MERGE_ENTRIES` pairs as one dense |R| x |K| matrix per conv group (:class:`DenseMerge`,
``GroupPlan.dense``, folded by :func:`apply_dense` as a matrix product W_K += W_R coef): the data
merge applies at any width whose matrices fit in memory. Both forms go through the same per-consumer
fold (:func:`_fold_matrix`).
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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
    when keep_per_cluster=1). ``mode=None`` gives coefficient 0 (no merge). The "ls" coefficients
    are float64 dot products computed by numpy, one thread, so a plan does not depend on torch's
    thread count (torch's BLAS dot splits long vectors across threads: at 8192 neurons of d = 4096
    the coefficients differed by 1e-16 between 1 and 2 threads).
    """
    lab = labels.numpy()
    kept_np = kept.numpy()
    is_kept = np.zeros(len(lab), dtype=bool)
    is_kept[kept_np] = True
    out: list[tuple[int, int, float]] = []
    by_cluster: dict[int, list[int]] = {}
    for k in kept_np:
        by_cluster.setdefault(int(lab[k]), []).append(int(k))
    js = np.flatnonzero(~is_kept)
    reps = []
    for j in js:
        cands = by_cluster[int(lab[j])]
        if len(cands) == 1:
            reps.append(cands[0])
        else:
            d = ((v[cands] - v[int(j)]) ** 2).sum(1)
            reps.append(cands[int(torch.argmin(d))])
    if mode is None or mode == "sum" or len(js) == 0:
        coef = np.full(len(js), 0.0 if mode is None else 1.0)
    else:
        rows = torch.from_numpy(js)
        vj = v.index_select(0, rows.to(v.device)).detach().cpu().double().numpy()
        vr = v.index_select(0, torch.tensor(reps, device=v.device)).detach().cpu().double().numpy()
        num, den = np.einsum("ij,ij->i", vj, vr), np.einsum("ij,ij->i", vr, vr)
        coef = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    for j, r, a in zip(js, reps, coef, strict=True):
        out.append((int(j), int(r), float(a)))
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
def _fold_matrix(m: Member, js: np.ndarray, rs: np.ndarray, coef: torch.Tensor) -> int:
    """Fold removed inputs into kept ones in one consumer: ``W[:, rs] += W[:, js] @ coef`` (coef
    (len(js), len(rs)); js and rs disjoint and sorted), at every position of a flatten-reached block,
    within conv groups for grouped convs (pairs across conv groups are skipped). Rows and columns
    of ``coef`` without a non-zero entry inside a conv group are left out. Returns the (input
    position) pairs folded. Every read sees the original weights (sources and destinations are
    disjoint). The one fold of both plan forms: triples (:func:`_fold`) and dense blocks
    (:func:`apply_dense`)."""
    mod = m.module
    if not _supported(mod) or not len(js) or not len(rs):
        return 0
    n_in = _n_in(mod)
    got = _positions(m, np.concatenate([js, rs]), n_in)
    if got is None:
        return 0
    pos, ok = got
    nj = len(js)
    w = _in_view(mod)
    k = pos.shape[1]
    n = 0
    for rows, first, width in _conv_blocks(mod, n_in):
        p = pos - first
        inside = ok & (p >= 0).all(1) & (p < width).all(1)
        ij, ir = np.flatnonzero(inside[:nj]), np.flatnonzero(inside[nj:])
        if not (ij.size and ir.size):
            continue
        a = coef
        if ij.size < nj or ir.size < len(rs):
            a = a.index_select(0, torch.from_numpy(ij)).index_select(1, torch.from_numpy(ir))
        nz = a != 0
        uj, ur = torch.nonzero(nz.any(1)).flatten(), torch.nonzero(nz.any(0)).flatten()
        if not uj.numel():
            continue
        if uj.numel() < a.shape[0] or ur.numel() < a.shape[1]:
            a = a.index_select(0, uj).index_select(1, ur)
            ij, ir = ij[uj.numpy()], ir[ur.numpy()]
        src = torch.from_numpy(p[ij].reshape(-1)).to(w.device)
        dst = torch.from_numpy(p[nj + ir].reshape(-1)).to(w.device)
        wg = w[rows]
        taps = wg.shape[2:]
        ws = wg.index_select(1, src).reshape(wg.shape[0], len(ij), k, -1)
        add = torch.einsum("ojkt,jr->orkt", ws, a.to(device=w.device, dtype=w.dtype))
        wg.index_add_(1, dst, add.reshape(wg.shape[0], len(ir) * k, *taps))
        n += int(torch.count_nonzero(a)) * k
    return n


def _fold(m: Member, merges: Sequence[tuple[int, int, float]]) -> int:
    """Fold removed inputs into kept ones in one consumer: ``W[:, r] += a * W[:, j]`` for every
    (j, r, a) (:func:`_fold_matrix` on the matrix of the triples). Returns the (input position)
    pairs folded.

    Several entries may share a removed channel (the data merge) or a kept one; sources (removed)
    and destinations (kept) are disjoint, so every read sees the original weights.
    """
    trip = [(j, r, a) for j, r, a in merges if a != 0.0]
    if not trip or not _supported(m.module):
        return 0
    js = np.asarray([t[0] for t in trip], dtype=np.int64)
    rs = np.asarray([t[1] for t in trip], dtype=np.int64)
    uj, jj = np.unique(js, return_inverse=True)
    ur, rr = np.unique(rs, return_inverse=True)
    a = torch.zeros(len(uj), len(ur), dtype=torch.float64)
    a.index_put_(
        (torch.from_numpy(jj.reshape(-1)), torch.from_numpy(rr.reshape(-1))),
        torch.tensor([t[2] for t in trip], dtype=torch.float64),
        accumulate=True,
    )
    return _fold_matrix(m, uj, ur, a)


def apply_merges(group: ChannelGroup, channel_merges: Sequence[tuple[int, int, float]]) -> int:
    """Fold every removed channel into its representative(s) in every consumer of the group."""
    return sum(_fold(m, channel_merges) for m in group.consumers())


def apply_dense(group: ChannelGroup, blocks: Sequence[DenseMerge]) -> int:
    """Fold the dense data-merge blocks of a group in every consumer: ``W[:, kept] += W[:, removed]
    @ coef`` per block (the same fold as the triples [removed[i], kept[k], coef[i, k]])."""
    n = 0
    for b in blocks:
        coef = torch.from_numpy(np.ascontiguousarray(b.coef))
        n += sum(_fold_matrix(m, b.removed, b.kept, coef) for m in group.consumers())
    return n


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
# The plan form of a group's data merge, by its |R| x |K| coefficients (summed over its conv groups):
# up to DENSE_MERGE_ENTRIES, [removed, kept, coefficient] triples in ``GroupPlan.merges`` (the plan
# JSON of small models, readable, as before); above, dense matrices in ``GroupPlan.dense`` (about
# 5.3 bytes of JSON per coefficient in float32 against about 50 for a triple, and a matrix product
# to apply). 65,536 = a 512-channel group half pruned.
DENSE_MERGE_ENTRIES = 65_536
# The most triples :func:`data_merges` (the triple view of the solve, for analysis and tests) builds
# for one group: ~150 bytes of Python objects each. The plans are not limited by it (dense above
# DENSE_MERGE_ENTRIES).
MAX_MERGE_ENTRIES = 4_000_000
# Device memory of one batched ridge solve (the problems of one size are split into solves that fit;
# a single larger problem is solved alone if the device has the memory, else refused).
SOLVE_BUDGET = 1 << 30

_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


@dataclass(eq=False)
class DenseMerge:
    """One conv group's data merge as a dense matrix: every consumer gets
    ``W[:, kept] += W[:, removed] @ coef`` -- the triples ``[removed[i], kept[k], coef[i, k]]``.

    ``removed`` and ``kept`` are sorted root channel ids (int64) of one conv group of channels;
    ``coef`` is (len(removed), len(kept)), float64 as solved, or float32 when every consumer of the
    group holds float32 weights (the fold converts the coefficients to the weights' dtype, so the
    pruned model is the same). In the plan JSON (:meth:`to_json`)::

        {"removed": [ids], "kept": [ids],
         "coef": {"dtype": "float32" | "float64", "shape": [|R|, |K|],
                  "base64": base64 of the little-endian bytes of coef in row-major (C) order}}

    lossless (the bytes themselves) and about 4/3 x 4 (float32) or 4/3 x 8 (float64) bytes per
    coefficient.
    """

    removed: np.ndarray
    kept: np.ndarray
    coef: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DenseMerge)
            and np.array_equal(self.removed, other.removed)
            and np.array_equal(self.kept, other.kept)
            and self.coef.dtype == other.coef.dtype
            and np.array_equal(self.coef, other.coef)
        )

    @property
    def n_entries(self) -> int:
        return int(self.coef.size)

    def triples(self) -> list[list[Any]]:
        """[removed, kept, coefficient] for the non-zero coefficients, by removed then kept id."""
        rows, cols = np.nonzero(self.coef)
        return [
            [j, r, a]
            for j, r, a in zip(
                self.removed[rows].tolist(),
                self.kept[cols].tolist(),
                self.coef[rows, cols].astype(np.float64).tolist(),
                strict=True,
            )
        ]

    def astype(self, dtype: Any) -> DenseMerge:
        return DenseMerge(self.removed, self.kept, self.coef.astype(dtype, copy=False))

    def to_json(self) -> dict[str, Any]:
        name = str(self.coef.dtype)
        if name not in _DTYPES:
            raise ValueError(f"dense merge coefficients must be float32 or float64, not {name}")
        raw = np.ascontiguousarray(self.coef, dtype=_DTYPES[name]).tobytes()
        return {
            "removed": self.removed.tolist(),
            "kept": self.kept.tolist(),
            "coef": {
                "dtype": name,
                "shape": [int(v) for v in self.coef.shape],
                "base64": base64.b64encode(raw).decode("ascii"),
            },
        }

    @classmethod
    def from_json(cls, d: Any) -> DenseMerge:
        """The inverse of :meth:`to_json`; ValueError naming what is malformed."""
        if not (isinstance(d, dict) and set(d) == {"removed", "kept", "coef"}):
            raise ValueError(
                'a dense merge must be {"removed": [...], "kept": [...], "coef": {...}}'
            )
        c = d["coef"]
        if not (isinstance(c, dict) and set(c) == {"dtype", "shape", "base64"}):
            raise ValueError('dense merge "coef" must be {"dtype", "shape", "base64"}')
        if c["dtype"] not in _DTYPES:
            raise ValueError(f"dense merge dtype {c['dtype']!r}: expected float32 or float64")
        ids = []
        for key in ("removed", "kept"):
            v = d[key]
            if not (isinstance(v, list) and all(type(i) is int for i in v)):
                raise ValueError(f"dense merge {key!r} must be a list of channel indices")
            ids.append(np.asarray(v, dtype=np.int64))
        shape = c["shape"]
        if shape != [len(ids[0]), len(ids[1])]:
            raise ValueError(
                f"dense merge shape {shape!r} does not match |removed| x |kept| = "
                f"{len(ids[0])} x {len(ids[1])}"
            )
        try:
            raw = base64.b64decode(c["base64"], validate=True)
        except (ValueError, TypeError) as e:
            raise ValueError(f"dense merge coefficients: bad base64 ({e})") from None
        dt = _DTYPES[c["dtype"]]
        if len(raw) != shape[0] * shape[1] * dt.itemsize:
            raise ValueError(
                f"dense merge coefficients: {len(raw)} bytes for shape {shape} {c['dtype']}"
            )
        coef = np.frombuffer(raw, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
        return cls(ids[0], ids[1], coef)


def _blocks(group_n: int, ch_groups: int) -> list[np.ndarray]:
    """The channels of each conv group (a merge stays within its conv group)."""
    gs = group_n // ch_groups
    return [np.arange(g * gs, (g + 1) * gs) for g in range(ch_groups)]


def _bucket(k: int) -> int:
    """The padded size of a (k, k) problem: the next power of two up to 128, then multiples of 64."""
    return 1 << max(0, k - 1).bit_length() if k <= 128 else -(-k // 64) * 64


def _solve_bytes(size: int, m: int) -> int:
    """Device bytes of one padded problem: A, its selected copy, A + lam I and its factor (size^2),
    right-hand sides, solution and the solve's output (size x m), float64."""
    return 8 * (4 * size * size + 3 * size * m)


def check_solve_memory(need: int, device: torch.device, n: int, what: str) -> None:
    """Raise ``torch.OutOfMemoryError`` naming the bytes needed and available when ``need`` bytes
    of ``device`` memory (the host for a CPU device) are not available for the data merge."""
    op = "simprune data merge"
    if device.type != "cuda":
        from .._checks import check_host_memory

        check_host_memory(need, op, n, what)
        return
    free, _ = torch.cuda.mem_get_info(device)
    avail = int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if need > avail:
        raise torch.OutOfMemoryError(
            f"{op}: n = {n} needs {need} bytes of {device} memory ({what}), but only {avail} bytes "
            "are available"
        )


def ridge_solve_batched(
    problems: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    device: torch.device,
    out_device: torch.device | None = None,
) -> list[torch.Tensor]:
    """X = (A + lam I)^-1 R for each (A (k, k) PSD, R (k, m), lam), by batched Cholesky on ``device``.

    Problems are bucketed by size (the next power of two up to 128, then multiples of 64), padded
    with the identity and zero right-hand sides (the padded blocks do not touch the real ones), and
    each bucket is solved in batches of at most :data:`SOLVE_BUDGET` bytes (one problem at least: a
    problem whose solve needs more memory than ``device`` has is refused with
    ``torch.OutOfMemoryError`` naming both). A factorisation that fails (an A that
    is not positive definite after the ridge: NaN, or lam = 0 with a singular A) is retried with the
    ridge grown 100x, up to 1e-2 of the mean diagonal, then gives X = 0. ``out_device``: where the
    solutions go (default: views on ``device``).
    """
    out: list[torch.Tensor | None] = [None] * len(problems)
    buckets: dict[int, list[int]] = {}
    for i, (a, _, _) in enumerate(problems):
        buckets.setdefault(_bucket(int(a.shape[0])), []).append(i)
    batches: list[tuple[int, list[int]]] = []
    for size, idx in sorted(buckets.items()):
        cur: list[int] = []
        cur_m = 0
        for i in idx:
            m = int(problems[i][1].shape[1])
            if cur and (len(cur) + 1) * _solve_bytes(size, max(cur_m, m)) > SOLVE_BUDGET:
                batches.append((size, cur))
                cur, cur_m = [], 0
            cur.append(i)
            cur_m = max(cur_m, m)
        batches.append((size, cur))
    for size, idx in batches:
        mmax = max(int(problems[i][1].shape[1]) for i in idx)
        need = len(idx) * _solve_bytes(size, mmax)
        if need > SOLVE_BUDGET:  # one problem alone, larger than the budget: is there the memory?
            check_solve_memory(
                need, device, int(problems[idx[0]][0].shape[0]),
                f"the ridge solve of {int(problems[idx[0]][0].shape[0])} kept x {mmax} removed "
                "channels, float64",
            )  # fmt: skip
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
            del l_
            todo = todo[~good]
            lam[todo] = torch.maximum(lam[todo] * 100, 1e-10 * scale[todo])
            lam[todo] = torch.minimum(lam[todo], 1e-2 * scale[todo])
        del aa, rr
        for t, i in enumerate(idx):
            k, m = problems[i][0].shape[0], problems[i][1].shape[1]
            sol = x[t, :k, :m]
            out[i] = sol if out_device is None else sol.to(out_device, copy=True)
    return [o if o is not None else torch.zeros(0) for o in out]


def _entries(g: ChannelGroup, kept: Sequence[int]) -> int:
    """|R| x |K| summed over the conv groups of ``g``: the coefficients of its data merge."""
    keep = np.zeros(g.n_channels, dtype=bool)
    keep[np.asarray(list(kept), dtype=np.int64)] = True
    return sum(
        int(keep[b].sum()) * int((~keep[b]).sum()) for b in _blocks(g.n_channels, g.ch_groups)
    )


def data_merge_blocks(
    items: Sequence[tuple[ChannelGroup, Any, Sequence[int]]],
    device: torch.device | None = None,
    ridge: float | None = None,
) -> list[tuple[list[DenseMerge], list[list[Any]]]]:
    """The data merge of several groups: (dense blocks, shifts) in root channel ids for each
    (group, :class:`~simprune.pruning.stats.GroupStats`, kept channels).

    Per conv group of channels, kept K, removed R, covariance S and mean mu (metric.md section 6):
    B = (S_KK + lam I)^-1 S_KR is the ridge least-squares reconstruction of the removed channels from
    the kept ones (centred), lam = ``ridge`` * tr(S_KK) / |K| (default :data:`DATA_RIDGE` for the
    statistics' precision; :data:`FALLBACK_RIDGE`, with a warning, when the group has no more samples
    than kept channels). Every consumer then gets W_K += W_R B^T -- the block
    ``DenseMerge(R, K, B^T)``, float64, on the host -- and bias += W_R c with
    c = mu_R - B^T mu_K -- the shifts [j, c_j] (non-zero ones). Exact when the removed channels are
    linear functions of the kept ones on the data (duplicates: B = 1, c = 0); the identity (no
    block) when nothing is removed. All solves run batched on ``device`` (default: the statistics'
    device). Any width: the host must hold every group's B (8 |R| |K| bytes), and the device one
    solve (:func:`ridge_solve_batched`); otherwise ``torch.OutOfMemoryError`` names the bytes
    needed and available.
    """
    from .stats import warn_rank_deficient

    problems: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    where: list[tuple[int, np.ndarray, np.ndarray]] = []
    total = sum(_entries(g, kept) for g, _, kept in items)
    if total > DENSE_MERGE_ENTRIES:
        check_solve_memory(
            8 * total, torch.device("cpu"), max(g.n_channels for g, _, _ in items),
            f"the data merge's {total:,} coefficients (removed x kept channels) of "
            f"{len(items)} group(s), float64",
        )  # fmt: skip
    for gi, (g, st, kept) in enumerate(items):
        keep = np.zeros(g.n_channels, dtype=bool)
        keep[np.asarray(list(kept), dtype=np.int64)] = True
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
    cpu = torch.device("cpu")
    sols = ridge_solve_batched(problems, dev or cpu, out_device=cpu) if problems else []
    del problems
    out: list[tuple[list[DenseMerge], list[list[Any]]]] = [([], []) for _ in items]
    for (gi, k_ids, r_ids), b in zip(where, sols, strict=True):
        mu = items[gi][1].mean.to(torch.float64).cpu()
        c = mu[torch.from_numpy(r_ids)] - b.T @ mu[torch.from_numpy(k_ids)]
        blocks, shifts = out[gi]
        blocks.append(DenseMerge(r_ids, k_ids, np.ascontiguousarray(b.numpy().T)))
        shifts += [
            [int(j), float(v)] for j, v in zip(r_ids.tolist(), c.tolist(), strict=True) if v != 0.0
        ]
    return out


def data_merges(
    items: Sequence[tuple[ChannelGroup, Any, Sequence[int]]],
    device: torch.device | None = None,
    ridge: float | None = None,
) -> list[tuple[list[list[Any]], list[list[Any]]]]:
    """:func:`data_merge_blocks` as (merges, shifts) per group, the merges as [removed, kept,
    coefficient] triples of the non-zero coefficients (by removed, then kept channel). A view for
    analysis: a group with more than :data:`MAX_MERGE_ENTRIES` coefficients is refused (ValueError;
    use :func:`data_merge_blocks`); :func:`data_merge_plans` stores wide groups densely."""
    for g, _, kept in items:
        n = _entries(g, kept)
        if n > MAX_MERGE_ENTRIES:
            raise ValueError(
                f"group {g.root_name!r}: the data merge has {n:,} coefficients (removed x kept "
                f"channels), more than MAX_MERGE_ENTRIES={MAX_MERGE_ENTRIES:,} triples; use "
                "data_merge_blocks (dense matrices)"
            )
    return [
        ([t for b in blocks for t in b.triples()], shifts)
        for blocks, shifts in data_merge_blocks(items, device, ridge)
    ]


def coefficient_dtype(group: ChannelGroup) -> np.dtype:
    """float32 when every consumer of ``group`` holds float32 weights (the fold converts the
    coefficients to the weights' dtype: storing them in float32 changes nothing), else float64."""
    dts = {getattr(getattr(m.module, "weight", None), "dtype", None) for m in group.consumers()}
    return np.dtype(np.float32) if dts == {torch.float32} else np.dtype(np.float64)


def store_data_merge(
    gp: Any, group: ChannelGroup, blocks: Sequence[DenseMerge], shifts: list[list[Any]]
) -> None:
    """Put a group's data merge into its plan ``gp`` (in place): the shifts, and the coefficients
    as triples (``gp.merges``; ``gp.dense`` emptied) when they are at most
    :data:`DENSE_MERGE_ENTRIES`, else as dense blocks (``gp.dense`` in :func:`coefficient_dtype`;
    ``gp.merges`` emptied)."""
    n = sum(b.n_entries for b in blocks)
    if n > DENSE_MERGE_ENTRIES:
        dt = coefficient_dtype(group)
        gp.merges, gp.dense = [], [b.astype(dt) for b in blocks]
    else:
        gp.merges, gp.dense = [t for b in blocks for t in b.triples()], []
    gp.shifts = shifts


def data_merge_plans(
    groups: Sequence[ChannelGroup], plans: Sequence[Any], backend: str = "auto"
) -> list[str]:
    """Replace the merges of every pruned group that has statistics (``group.stats``) by its data
    merge and mean shifts (:func:`data_merge_blocks`, solved on the engine device of ``backend``;
    stored by :func:`store_data_merge`: triples or dense blocks by size), in place. Pruned groups
    without statistics keep the merges they have (the descriptor merge) with a warning; returns
    their root names."""
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
    for (g, _, _), gp, (blocks, shifts) in zip(
        items, targets, data_merge_blocks(items, device), strict=True
    ):
        store_data_merge(gp, g, blocks, shifts)
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


def _solve_paired(
    st: Any, g: ChannelGroup, kept: Sequence[int]
) -> tuple[list[DenseMerge], list[list[Any]]]:
    """The data merge of one group from joint statistics of [z_working, z_original] (2C): (dense
    blocks, shifts) as :func:`data_merge_blocks` gives them."""
    c = g.n_channels
    keep = np.zeros(c, dtype=bool)
    keep[np.asarray(list(kept), dtype=np.int64)] = True
    from .stats import warn_rank_deficient

    eps = FALLBACK_RIDGE if warn_rank_deficient(st, int(keep.sum())) else None
    if eps is None:
        eps = DATA_RIDGE[torch.float64 if st.product_dtype == torch.float64 else torch.float32]
    n = _entries(g, kept)
    if n > DENSE_MERGE_ENTRIES:
        check_solve_memory(
            8 * n, torch.device("cpu"), c,
            f"the data merge's {n:,} coefficients (removed x kept channels), float64",
        )  # fmt: skip
    blocks: list[DenseMerge] = []
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
        blocks.append(DenseMerge(r_ids, k_ids, np.ascontiguousarray(b.numpy().T)))
        shifts += [[int(j), float(v)] for j, v in zip(r_ids.tolist(), sh.tolist(), strict=True)]
    return blocks, [s for s in shifts if s[1] != 0.0]


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
    compensated instead of compounding; stored as :func:`store_data_merge` does (triples or dense
    blocks by size). ``model`` is not modified. Returns the pruned groups
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
            store_data_merge(gp, g, *_solve_paired(st, g, gp.kept))
        apply_shifts(wg, [(int(j), float(c)) for j, c in gp.shifts])
        apply_dense(wg, gp.dense)
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
