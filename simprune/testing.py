"""Synthetic data, tolerances and scipy oracles for checking simprune's engine ops.

One copy, used by the test suite, ``simprune selfcheck`` (on users' machines: this module imports
neither pytest nor hypothesis) and the benchmarks.

* **Data sets** (linkage.md 8.1, no downloads): :func:`gaussian`, :func:`mixture`,
  :func:`channel_like`, :func:`dead_duplicate`, :func:`quantised`, :func:`chain_1d`,
  :func:`chain_geometric`, plus :func:`near_duplicates` and :func:`half_integer_grid`;
  :data:`DATASETS` names the first seven with their default dimensions, :data:`TIE_FREE` those
  without tied distances.
* **Tolerances**: :data:`TOLERANCES`, one table per op kind and dtype (linkage.md 8.3).
* **Comparisons**: :func:`max_relative_error` (distances), :func:`same_partition` (flat clusters),
  and the linkage gates against scipy's ``Z``: :func:`tree_mismatch` / :func:`assert_same_tree`
  (tie-free data), :func:`bitwise_mismatch` / :func:`assert_bitwise` (strict mode),
  :func:`assert_same_partitions` (ties at height 0), :func:`assert_valid_hac` (massive ties),
  :func:`assert_float32_gate` (float32 storage), :func:`assert_accepted_by_scipy`.

The ``*_mismatch`` functions return ``None`` or a sentence saying what differs (what selfcheck
reports); the ``assert_*`` functions raise :class:`AssertionError` with that sentence (what tests use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import scipy.cluster.hierarchy as sch
import torch

from .backends import REDUCIBLE_METHODS

# The linkage methods every compiled backend implements (NN-chain / reciprocal nearest neighbours).
REDUCIBLE = REDUCIBLE_METHODS

# ---------------------------------------------------------------------------------------------------
# Tolerances (linkage.md 8.3), one table. Keys: (kind, dtype).
#
# * ("distance", result dtype): max relative error of ``pairwise_distance`` against the float64
#   reference on the same (rounded) inputs, exact zeros exactly zero (:func:`max_relative_error`);
# * ("exact", storage dtype): relative error of the merge heights against scipy's -- per row on
#   tie-free data with float64 storage (single and complete are bitwise: no arithmetic), of the sorted
#   heights with float32 storage;
# * ("strict", torch.float64): 0, i.e. ``Z`` bitwise equal to scipy's.

TOLERANCES: Mapping[tuple[str, torch.dtype], float] = MappingProxyType(
    {
        ("distance", torch.float64): 1e-12,
        ("distance", torch.float32): 1e-6,
        ("exact", torch.float64): 1e-12,
        ("exact", torch.float32): 1e-5,
        ("strict", torch.float64): 0.0,
    }
)


# ---------------------------------------------------------------------------------------------------
# Data sets (linkage.md 8.1). Each returns float64 observations of shape (n, d) (chain_1d: (n, 1))
# drawn from ``numpy.random.default_rng(seed)``: the same arrays on every machine.


def gaussian(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Standard normal observations, shape ``(n, d)``: tie-free distances.

    >>> gaussian(4, 3).shape
    (4, 3)
    """
    return np.random.default_rng(seed).standard_normal((n, d))


def mixture(n: int, d: int, k: int = 32, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture, shape ``(n, d)``: ``k`` centres drawn from N(0, 16 I) (4 sigma apart),
    each row a centre picked uniformly plus N(0, I) noise.

    >>> mixture(100, 16, k=4).shape
    (100, 16)
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4.0
    return centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))


def channel_like(
    n: int, d: int, seed: int = 0, frac: float = 0.05, noise: float = 1e-3
) -> np.ndarray:
    """Channel-descriptor-like rows, shape ``(n, d)``: mean 0.5, sigma 0.05, with a fraction ``frac``
    of them (at least one when n > 1) replaced by a copy of another row plus N(0, ``noise``^2).

    The near-copies stress cancellation in ``|x|^2 + |y|^2 - 2 x.y`` distance kernels.

    >>> x = channel_like(40, 8)
    >>> x.shape, bool(abs(x.mean() - 0.5) < 0.05)
    ((40, 8), True)
    """
    rng = np.random.default_rng(seed)
    x = 0.5 + 0.05 * rng.standard_normal((n, d))
    k = max(1, int(frac * n)) if n > 1 else 0
    dst = rng.choice(n, size=k, replace=False) if k else np.array([], dtype=int)
    for i in dst:
        j = (i + 1 + rng.integers(0, n - 1)) % n
        x[i] = x[j] + noise * rng.standard_normal(d)
    return x


def dead_duplicate(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows, shape ``(n, d)``, 10 % of them all-zero and 10 % exact copies of other rows:
    ties at height 0 (n >= 10 has both; for n <= 2 the zero rows are the only ties).

    >>> x = dead_duplicate(20, 4)
    >>> int((x == 0).all(axis=1).sum()), len(np.unique(x, axis=0))
    (2, 17)
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    k = max(1, n // 10)
    idx = rng.permutation(n)
    x[idx[:k]] = 0.0
    if n < 2 * k + 1:  # too small for copies of distinct rows (n <= 2): the zero rows are the ties
        return x
    for i in idx[k : 2 * k]:
        x[i] = x[idx[2 * k + rng.integers(0, n - 2 * k)]]
    return x


def quantised(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    """Gaussian rows rounded to a half-integer grid, shape ``(n, d)``: massive ties (the
    exact-vs-strict contract).

    >>> bool(np.all(quantised(50) * 2 == np.round(quantised(50) * 2)))
    True
    """
    return np.round(np.random.default_rng(seed).standard_normal((n, d)) * 2) / 2


def chain_1d(n: int) -> np.ndarray:
    """``n`` points on a line, shape ``(n, 1)``, with gaps growing linearly from 1 to 2: the worst
    case for RNN rounds (only the closest end pair is reciprocal at first: about n/2 rounds).

    >>> chain_1d(4).ravel().tolist()
    [0.0, 1.0, 2.5, 4.5]
    """
    gaps = np.linspace(1.0, 2.0, max(n - 1, 1))[: n - 1]
    return np.concatenate([[0.0], np.cumsum(gaps)])[:, None]


def chain_geometric(n: int, shrink: float = 2.0**-20) -> np.ndarray:
    """``n`` points on a line, shape ``(n, 1)``, with gaps shrinking geometrically from 1 to
    ``shrink``: every point's nearest neighbour is the next one (the last pair is the closest), so the
    first Borůvka iteration hooks all points into one chain of n - 1 edges -- the worst case for
    a serial walk along parent pointers, O(log n) steps for pointer doubling. The minimum spanning
    tree (the chain's own gaps) is unique: single linkage has one correct Z.

    >>> np.diff(chain_geometric(4).ravel()).tolist() == [1.0, 2.0**-10, 2.0**-20]
    True
    """
    if n < 2:
        return np.zeros((n, 1))
    gaps = shrink ** (np.arange(n - 1) / max(n - 2, 1))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:, None]


def near_duplicates(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows, shape ``(n, d)``, where every 8th row (from row 1) is the previous row plus
    1e-4 noise and the last row an exact copy of the one before it (a zero distance); for n < 4 plain
    Gaussian rows. The distance kernels' stress set.

    >>> x = near_duplicates(10, 3)
    >>> bool((x[-1] == x[-2]).all()), float(np.abs(x[1] - x[0]).max()) < 1e-3
    (True, True)
    """
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, d))
    if n >= 4:
        x[1::8] = x[0::8][: len(x[1::8])] + 1e-4 * g.standard_normal(x[1::8].shape)
        x[-1] = x[-2]
    return x


def half_integer_grid(n: int, d: int, seed: int = 0, levels: int = 4) -> np.ndarray:
    """Uniform integers in ``[0, levels)`` halved, shape ``(n, d)``: few distinct distances, many
    equal ones.

    >>> sorted(set(half_integer_grid(100, 2).ravel().tolist()))
    [0.0, 0.5, 1.0, 1.5]
    """
    g = np.random.default_rng(seed)
    return g.integers(0, levels, (n, d)).astype(np.float64) / 2


# The linkage.md 8.1 sets by name, each ``f(n, d=default, seed=0)``.
DATASETS: Mapping[str, Callable[..., np.ndarray]] = MappingProxyType(
    {
        "gaussian": lambda n, d=16, seed=0: gaussian(n, d, seed),
        "mixture": lambda n, d=16, seed=0: mixture(n, d, seed=seed),
        "channel_like": lambda n, d=64, seed=0: channel_like(n, d, seed),
        "dead_duplicate": lambda n, d=16, seed=0: dead_duplicate(n, d, seed),
        "quantised": lambda n, d=8, seed=0: quantised(n, d, seed),
        "chain_1d": lambda n, d=1, seed=0: chain_1d(n),
        "chain_geometric": lambda n, d=1, seed=0: chain_geometric(n),
    }
)
# Those whose distances have no ties (scipy's tree is then the only correct one). chain_geometric's
# minimum spanning tree is unique (single linkage), but its long distances are sums of many gaps whose
# float64 rounding may tie: it is not listed.
TIE_FREE = ("gaussian", "mixture", "channel_like", "chain_1d")


# ---------------------------------------------------------------------------------------------------
# Distances and partitions.


def max_relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max elementwise relative error of ``got`` against ``ref``, computed in float64 on the CPU.

    An exact zero of ``ref`` (duplicate rows, the diagonal) must come out exactly zero, else the
    error is ``inf``.

    Parameters
    ----------
    got, ref : torch.Tensor
        Same shape, any floating dtype and device.

    Returns
    -------
    float
        0.0 for empty tensors.

    Examples
    --------
    >>> ref = torch.tensor([0.0, 2.0])
    >>> round(max_relative_error(torch.tensor([0.0, 2.002]), ref), 6)
    0.001
    >>> max_relative_error(torch.tensor([1e-30, 2.0]), ref)
    inf
    """
    got, ref = got.double().cpu(), ref.double().cpu()
    if ref.numel() == 0:
        return 0.0
    err = (got - ref).abs()
    rel = torch.where(ref == 0, torch.where(err == 0, 0.0, float("inf")), err / ref.abs())
    return float(rel.max())


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two flat labelings group the observations identically (label names may differ).

    Parameters
    ----------
    a, b : numpy.ndarray
        Integer labels, shape ``(n,)``.

    Examples
    --------
    >>> same_partition(np.array([1, 1, 2]), np.array([0, 0, 5]))
    True
    >>> same_partition(np.array([1, 1, 2]), np.array([0, 1, 1]))
    False
    """
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


# ---------------------------------------------------------------------------------------------------
# Linkage gates against scipy's Z (linkage.md 8.3). ``z`` and ``zs`` are float64 arrays (n - 1, 4).


def _fail(problem: str | None) -> None:
    if problem is not None:
        raise AssertionError(problem)


def bitwise_mismatch(z: np.ndarray, zs: np.ndarray) -> str | None:
    """None when ``z`` is bitwise equal to ``zs`` (the strict-mode gate), else what differs.

    Examples
    --------
    >>> zs = sch.linkage(np.array([1.0, 2.0, 3.0]), "single")
    >>> bitwise_mismatch(zs.copy(), zs) is None
    True
    >>> z = zs.copy(); z[0, 2] = np.nextafter(z[0, 2], 2.0)
    >>> bitwise_mismatch(z, zs)
    '1 rows differ; first row 0: [0. 1. 1. 2.] vs [0. 1. 1. 2.]'
    """
    if z.shape != zs.shape or z.dtype != np.float64 or zs.dtype != np.float64:
        return f"shape/dtype {z.shape}/{z.dtype} vs scipy's {zs.shape}/{zs.dtype}"
    bad = np.flatnonzero(np.any(z.view(np.uint64) != zs.view(np.uint64), axis=1))
    if bad.size:
        return f"{bad.size} rows differ; first row {bad[0]}: {z[bad[0]]} vs {zs[bad[0]]}"
    return None


def assert_bitwise(z: np.ndarray, zs: np.ndarray) -> None:
    """Raise AssertionError unless ``z`` is bitwise equal to ``zs`` (see :func:`bitwise_mismatch`)."""
    _fail(bitwise_mismatch(z, zs))


def tree_mismatch(
    z: np.ndarray, zs: np.ndarray, method: str, rtol: float = TOLERANCES[("exact", torch.float64)]
) -> str | None:
    """None when ``z`` is scipy's tree ``zs`` (the tie-free gate), else what differs.

    Columns 0, 1 and 3 must be identical and the heights within ``rtol`` of scipy's, row by row
    (``|h - hs| <= rtol |hs|``); for single and complete, which do no arithmetic, bitwise.

    Examples
    --------
    >>> d = np.array([1.0, 2.5, 4.0])
    >>> tree_mismatch(sch.linkage(d, "average"), sch.linkage(d, "average"), "average") is None
    True
    >>> tree_mismatch(sch.linkage(d, "average")[::-1], sch.linkage(d, "average"), "average")
    "2 merges differ from scipy's (first row 0)"
    """
    if z.shape != zs.shape:
        return f"shape {z.shape} vs scipy's {zs.shape}"
    bad = np.flatnonzero(np.any(z[:, [0, 1, 3]] != zs[:, [0, 1, 3]], axis=1))
    if bad.size:
        return f"{bad.size} merges differ from scipy's (first row {bad[0]})"
    if method in ("single", "complete"):
        return None if np.array_equal(z[:, 2], zs[:, 2]) else "heights not bitwise scipy's"
    over = np.abs(z[:, 2] - zs[:, 2]) > rtol * np.abs(zs[:, 2])
    if not over.any() and not np.isnan(z[:, 2]).any():
        return None
    rel = np.abs(z[:, 2] - zs[:, 2]) / np.maximum(np.abs(zs[:, 2]), 1e-300)
    return f"height rel. error {np.nanmax(rel):.2e} > {rtol:g}"


def assert_same_tree(z: np.ndarray, zs: np.ndarray, method: str) -> None:
    """Raise AssertionError unless ``z`` is scipy's tree ``zs`` (see :func:`tree_mismatch`)."""
    _fail(tree_mismatch(z, zs, method))


def sorted_heights_error(z: np.ndarray, zs: np.ndarray) -> float:
    """Max relative error of ``z``'s sorted heights against ``zs``'s (the two trees need not list
    their merges in the same order); a zero height of ``zs`` must be exactly zero, else ``inf``.

    Examples
    --------
    >>> zs = sch.linkage(np.array([1.0, 2.0, 4.0]), "average")
    >>> z = zs[::-1].copy(); z[:, 2] *= 1 + 1e-7
    >>> bool(sorted_heights_error(z, zs) < 2e-7)
    True
    """
    return max_relative_error(
        torch.from_numpy(np.sort(z[:, 2])), torch.from_numpy(np.sort(zs[:, 2]))
    )


def assert_same_partitions(z: np.ndarray, zs: np.ndarray) -> None:
    """The zero-height-ties gate: identical sorted heights (rtol 1e-12, atol 1e-13), and identical
    flat clusters at every number of clusters (a distance cut between each two consecutive distinct
    heights of ``zs``, where clear of rounding). Raises AssertionError."""
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(zs[:, 2]), rtol=1e-12, atol=1e-13)
    h = np.unique(zs[:, 2])
    mids = (h[:-1] + h[1:]) / 2
    clear = (h[1:] - h[:-1]) > 1e-9 * h[1:]  # thresholds clear of rounding
    for t in mids[clear]:
        fa, fb = sch.fcluster(z, t, "distance"), sch.fcluster(zs, t, "distance")
        if not same_partition(fa, fb):
            raise AssertionError(f"partitions differ at threshold {t}")


def assert_float32_gate(z: np.ndarray, zs: np.ndarray, ks: Sequence[int] = (5, 20, 100)) -> None:
    """The float32-storage gate (linkage.md 8.3) on tie-free data: sorted heights within
    ``TOLERANCES["exact", torch.float32]`` of scipy's, and identical flat clusters at each number of
    clusters in ``ks`` (ARI = 1). Raises AssertionError."""
    rtol = TOLERANCES[("exact", torch.float32)]
    err = sorted_heights_error(z, zs)
    if not err <= rtol:
        raise AssertionError(f"sorted heights: rel. error {err:.2e} > {rtol:g}")
    for k in ks:
        fa, fb = sch.fcluster(z, k, "maxclust"), sch.fcluster(zs, k, "maxclust")
        if len(set(fb.tolist())) != k:  # tie-free: the cut gives exactly k clusters
            raise AssertionError(f"scipy's cut gives {len(set(fb.tolist()))} clusters, not {k}")
        if not same_partition(fa, fb):
            raise AssertionError(f"flat clusters differ at k = {k}")


def _lance_williams(method, dxi, dyi, dxy, nx, ny, ni):
    """d(x u y, i) from d(x, i), d(y, i), d(x, y) and the cluster sizes (textbook formulas)."""
    if method == "single":
        return np.minimum(dxi, dyi)
    if method == "complete":
        return np.maximum(dxi, dyi)
    if method == "average":
        return (nx * dxi + ny * dyi) / (nx + ny)
    if method == "weighted":
        return 0.5 * (dxi + dyi)
    t = 1.0 / (nx + ny + ni)
    return np.sqrt((ni + nx) * t * dxi * dxi + (ni + ny) * t * dyi * dyi - ni * t * dxy * dxy)


def assert_valid_hac(z: np.ndarray, d: np.ndarray, method: str, rtol: float = 1e-9) -> None:
    """The massive-ties gate (brute force, O(n^3): small n only).

    Replaying ``z``'s rows in order, every row must merge two current clusters whose linkage value
    is minimal among all current pairs (so some tie choice of the textbook algorithm produces it)
    and equals the recorded height, both within ``rtol`` (+ 1e-13). Raises AssertionError.

    Parameters
    ----------
    z : numpy.ndarray
        The linkage to check, ``(n - 1, 4)``.
    d : numpy.ndarray
        The condensed float64 distances it was computed from, ``(n (n - 1) / 2,)``.
    method : str
        One of the reducible methods.
    """
    if not sch.is_valid_linkage(z):
        raise AssertionError("not a valid linkage (scipy.cluster.hierarchy.is_valid_linkage)")
    n = z.shape[0] + 1
    big = np.full((2 * n - 1, 2 * n - 1), np.inf)
    iu = np.triu_indices(n, 1)
    big[iu] = d
    big[iu[1], iu[0]] = d
    size = np.zeros(2 * n - 1)
    size[:n] = 1
    alive = np.zeros(2 * n - 1, dtype=bool)
    alive[:n] = True
    for r in range(n - 1):
        a, b, h = int(z[r, 0]), int(z[r, 1]), z[r, 2]
        if not (alive[a] and alive[b]):
            raise AssertionError(f"row {r} merges a cluster that no longer exists")
        act = np.flatnonzero(alive)
        best = big[np.ix_(act, act)].min()
        tol = rtol * best + 1e-13
        if not big[a, b] <= best + tol:
            raise AssertionError(f"row {r}: d({a},{b}) = {big[a, b]} > minimum {best}")
        if not abs(h - big[a, b]) <= tol:
            raise AssertionError(f"row {r}: height {h}, but d({a},{b}) = {big[a, b]}")
        o = act[(act != a) & (act != b)]
        new = _lance_williams(method, big[a, o], big[b, o], big[a, b], size[a], size[b], size[o])
        big[n + r, o] = big[o, n + r] = new
        size[n + r] = size[a] + size[b]
        alive[[a, b]] = False
        alive[n + r] = True


def assert_accepted_by_scipy(z: np.ndarray, n: int) -> None:
    """scipy's ``is_valid_linkage`` (throwing), ``fcluster`` and (n <= 200: it recurses once per
    level) ``dendrogram`` accept ``z``, and the heights are monotone. Raises on failure.

    Monotone as linkage.md section 1.3 defines it for the rounds algorithms: the rows are sorted by
    the *guarded* height (a merge's height raised to its children's), column 2 keeps the true height,
    so a parent computed 1 ulp below its child stays 1 ulp below it (found by hypothesis: ward,
    n = 19, duplicates; scipy's ``is_monotonic`` rejects that Z). Allowed: an inversion of at most 4
    ulps of the running maximum; anything larger fails."""
    sch.is_valid_linkage(z, throw=True)
    h = np.asarray(z[:, 2], dtype=np.float64)
    top = np.maximum.accumulate(h) if len(h) else h
    if np.any(top - h > 4 * np.spacing(top)):
        i = int(np.argmax(top - h))
        raise AssertionError(f"heights not monotonic: row {i} at {h[i]!r} after {top[i]!r}")
    labels = sch.fcluster(z, min(3, n), "maxclust")
    if labels.shape != (n,):
        raise AssertionError(f"fcluster gave shape {labels.shape}, expected ({n},)")
    if n <= 200 and sorted(sch.dendrogram(z, no_plot=True)["leaves"]) != list(range(n)):
        raise AssertionError("dendrogram leaves are not the n observations")
