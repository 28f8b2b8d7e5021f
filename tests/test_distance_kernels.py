"""Distance kernels (Triton, CUDA, C++ CPU) against the float64 reference.

Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (tests/conftest.py). The interpreter
computes ``tl.dot`` as an exact fp32 numpy product, so these tests check the algorithm (tiling,
masks, mirroring, condensed indexing, centring, near-pair selection and repair); the tensor-core
rounding (3xTF32/TF32) is checked by an emulation test here and by the ``gpu`` tests on a GPU.
Outputs are poisoned (NaN) before each kernel runs, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simprune
from simprune import testing
from simprune.distance import pairwise_distance_ragged_ref, pairwise_distance_ref
from simprune.testing import max_relative_error as _rel_err  # exact zeros must stay exactly zero

kd = pytest.importorskip("simprune.kernels.distance")

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
METRICS = ("sqeuclidean", "euclidean", "cosine")
# Relative error allowed per compute precision (fp16/bf16 inputs are upcast exactly to fp32).
RTOL = {
    torch.float16: 1e-6,
    torch.bfloat16: 1e-6,
    torch.float32: 1e-6,
    torch.float64: 1e-12,
}
# n: 1, 2, primes, the tile edges (64; 128: the CPU expansion's row panel); d: 1, 2, odd, around the
# direct/expansion switch (32), > BK, > one K block.
SHAPES = [(1, 1), (2, 2), (3, 1), (7, 5), (31, 33), (64, 32), (65, 17), (97, 40), (129, 70)]


def _poisoned(shape, dtype, device="cpu"):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _data(n, d, dtype, seed=0):
    # channel-like rows (mean 0.5, sigma 0.05, 5 % near-copies) plus one exact duplicate and one
    # all-zero row when there is room: near-duplicates, ties at 0 and a zero row for cosine.
    x = testing.channel_like(n, d, seed=seed)
    if n >= 4:
        x[n - 1] = x[0]
        x[n - 2] = 0.0
    return torch.tensor(x).to(dtype)


def _check_square(out, ref, rtol, sym=True):
    assert not torch.isnan(out).any(), "kernel left unwritten (poisoned) elements"
    assert _rel_err(out, ref) <= rtol
    assert (out >= 0).all()
    if sym:
        assert torch.equal(out, out.T), "not bit-symmetric"
        assert (out.diagonal() == 0).all(), "diagonal not exactly 0"


# ------------------------------------------------------------------------------------------------
# the matrix: dtype x shapes x metric x square/condensed, Triton under the interpreter
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", SHAPES)
def test_triton_matches_reference(n, d, dtype):
    x = _data(n, d, dtype, seed=n + d)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for metric in METRICS:
        ref = pairwise_distance_ref(x, None, metric, False, torch.float64)
        out = kd.pairwise_distance_triton(
            x, None, metric, False, None, out=_poisoned((n, n), out_dtype)
        )
        _check_square(out, ref, RTOL[dtype])
        cond = kd.pairwise_distance_triton(
            x, None, metric, True, None, out=_poisoned((n * (n - 1) // 2,), out_dtype)
        )
        iu = torch.triu_indices(n, n, offset=1)
        assert torch.equal(cond, out[iu[0], iu[1]]), "condensed differs from the square's triangle"
    # A float64 result computes in float64 whatever the input dtype.
    ref = pairwise_distance_ref(x, None, "euclidean", False, torch.float64)
    out = kd.pairwise_distance_triton(
        x, None, "euclidean", False, torch.float64, out=_poisoned((n, n), torch.float64)
    )
    _check_square(out, ref, 1e-12)


@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (2, 7, 3), (13, 1, 40), (67, 130, 33), (129, 5, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_xy(n, m, d, dtype):
    g = torch.Generator().manual_seed(n * m + d)
    x = (0.5 + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
    y = (0.5 + 0.05 * torch.randn(m, d, generator=g, dtype=torch.float64)).to(dtype)
    y[0] = x[0] + 1e-4 * torch.randn(d, generator=g, dtype=torch.float64).to(dtype)  # near pair
    for metric in METRICS:
        ref = pairwise_distance_ref(x, y, metric, False, torch.float64)
        out = kd.pairwise_distance_triton(x, y, metric, False, None, out=_poisoned((n, m), dtype))
        _check_square(out, ref, RTOL[dtype], sym=False)


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_near_duplicate_accuracy_fp32(d, metric):
    """The precision contract: <= 1e-6 relative on channel-like data with 5 % near-copies."""
    x = torch.tensor(testing.channel_like(300, d, seed=d), dtype=torch.float32)
    ref = pairwise_distance_ref(x, None, metric, True, torch.float64)
    out = simprune.pairwise_distance(x, metric=metric, condensed=True, backend="triton")
    stats: dict[str, int] = {}
    same = kd.pairwise_distance_triton(x, None, metric, True, None, stats=stats)
    assert torch.equal(same, out)  # the public call ran this kernel, ...
    assert stats["mode"] == kd.MODE_EXPAND and stats["flagged"] >= 15  # ... and the repair ran
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) <= 1e-6
    # A float64 result of fp32 input computes in fp64: float64 accuracy.
    out64 = simprune.pairwise_distance(
        x, metric=metric, condensed=True, out_dtype=torch.float64, backend="triton"
    )
    assert _rel_err(out64, ref) <= 1e-12


def test_near_duplicate_accuracy_fp64():
    x = torch.tensor(testing.channel_like(300, 64, seed=3))
    ref = pairwise_distance_ref(x, None, "euclidean", True, torch.float64)
    out = simprune.pairwise_distance(x, metric="euclidean", condensed=True, backend="triton")
    assert out.dtype == torch.float64
    assert _rel_err(out, ref) <= 1e-12


def test_fast_mode_runs_and_is_close():
    # Under the interpreter the dot is exact fp32, so this checks the fast path's wiring only; its
    # TF32 error is documented from the emulation below and measured by the gpu tests.
    x = torch.tensor(testing.channel_like(140, 96, seed=5), dtype=torch.float32)
    ref = pairwise_distance_ref(x, None, "sqeuclidean", False, torch.float64)
    out = simprune.pairwise_distance(x, precision="fast", backend="triton")
    _check_square(out, ref, 1e-3)


def test_repair_list_overflow_retries(monkeypatch):
    """Clustered data floods the near-pair list: the launcher must rerun with enough room."""
    monkeypatch.setattr(kd, "MIN_REPAIR_CAP", 1)
    x = torch.tensor(testing.mixture(130, 48, k=4, seed=1), dtype=torch.float32)
    ref = pairwise_distance_ref(x, None, "sqeuclidean", False, torch.float64)
    stats: dict[str, int] = {}
    out = kd.pairwise_distance_triton(
        x, None, "sqeuclidean", False, None, out=_poisoned((130, 130), torch.float32), stats=stats
    )
    assert stats["launches"] == 2 and stats["flagged"] > 8 * 130  # it did overflow
    _check_square(out, ref, 1e-6)


class _NoLaunch:
    """Stands in for a kernel that must not be launched."""

    def __getitem__(self, grid):
        raise AssertionError("the repair kernel was launched")


def test_repair_never_reads_past_the_list(monkeypatch):
    """If the retry overflows too, the launcher raises instead of repairing past the list's end."""
    monkeypatch.setattr(kd, "MIN_REPAIR_CAP", 1)
    monkeypatch.setattr(kd, "_retry_cap", lambda flagged: flagged // 2)  # a retry still too small
    monkeypatch.setattr(kd, "_repair_kernel", _NoLaunch())
    x = torch.tensor(testing.mixture(130, 48, k=4, seed=1), dtype=torch.float32)
    stats: dict[str, int] = {}
    with pytest.raises(RuntimeError, match="overflowed again on the retry"):
        kd.pairwise_distance_triton(x, None, "sqeuclidean", False, None, stats=stats)
    assert stats["launches"] == 2


@pytest.mark.parametrize("ragged", [False, True])
def test_repair_list_limit_checked(monkeypatch, ragged):
    """More flagged pairs than MAX_REPAIR_PAIRS (forced small here; the real limit is the kernel's
    int32 cap, the counter itself is int64) is refused with a clear error, before any repair."""
    monkeypatch.setattr(kd, "MIN_REPAIR_CAP", 1)
    monkeypatch.setattr(kd, "MAX_REPAIR_PAIRS", 200)
    monkeypatch.setattr(kd, "_repair_kernel", _NoLaunch())
    x = torch.tensor(testing.mixture(130, 48, k=4, seed=1), dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"flagged .* more than the limit of 200"):
        if ragged:
            kd.pairwise_distance_ragged_triton(
                x.reshape(-1), [130], [48], "sqeuclidean", True, None
            )
        else:
            kd.pairwise_distance_triton(x, None, "sqeuclidean", False, None)


def test_repair_list_limit_not_hit_below_it(monkeypatch):
    """The same data under a limit it fits in: no error, the retry repairs every flagged pair."""
    monkeypatch.setattr(kd, "MIN_REPAIR_CAP", 1)
    x = torch.tensor(testing.mixture(130, 48, k=4, seed=1), dtype=torch.float32)
    stats: dict[str, int] = {}
    kd.pairwise_distance_triton(x, None, "sqeuclidean", False, None, stats=stats)
    monkeypatch.setattr(kd, "MAX_REPAIR_PAIRS", stats["flagged"])
    ref = pairwise_distance_ref(x, None, "sqeuclidean", False, torch.float64)
    out = kd.pairwise_distance_triton(
        x, None, "sqeuclidean", False, None, out=_poisoned((130, 130), torch.float32), stats=stats
    )
    assert stats["launches"] == 2
    _check_square(out, ref, 1e-6)


def test_row_limit_checked(monkeypatch):
    """The tile kernel's int32 in-tile offsets bound the rows (MAX_ROWS, forced small here)."""
    monkeypatch.setattr(kd, "MAX_ROWS", 100)
    x = torch.randn(100, 40)
    with pytest.raises(ValueError, match="at most 99 are supported"):
        kd.pairwise_distance_triton(x, None, "sqeuclidean", True, None)
    with pytest.raises(ValueError, match="at most 99 are supported"):
        kd.pairwise_distance_ragged_triton(x.reshape(-1), [100], [40], "sqeuclidean", True, None)
    assert kd.pairwise_distance_triton(x[:99], None, "sqeuclidean", True, None).numel() == 99 * 49


def test_out_buffer_checked():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="out must be"):
        kd.pairwise_distance_triton(x, None, "sqeuclidean", False, None, out=torch.empty(4, 5))


# ------------------------------------------------------------------------------------------------
# ragged batch: many groups, one launch per kernel mode
# ------------------------------------------------------------------------------------------------
GROUPS = [(5, 3), (70, 40), (1, 4), (2, 64), (33, 50), (131, 2), (64, 33)]


@pytest.mark.parametrize("condensed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_matches_reference(condensed, dtype):
    xs = [_data(n, d, dtype, seed=i) for i, (n, d) in enumerate(GROUPS)]
    rows, cols = [n for n, _ in GROUPS], [d for _, d in GROUPS]
    packed = torch.cat([x.reshape(-1) for x in xs])
    total = sum(n * (n - 1) // 2 if condensed else n * n for n in rows)
    for metric in ("sqeuclidean", "cosine"):
        ref = pairwise_distance_ragged_ref(packed, rows, cols, metric, condensed, torch.float64, "")
        out = kd.pairwise_distance_ragged_triton(
            packed, rows, cols, metric, condensed, None, out=_poisoned((total,), dtype)
        )
        assert not torch.isnan(out).any()
        assert _rel_err(out, ref) <= RTOL[dtype]


def test_ragged_degenerate_groups():
    # No groups, and only single-row groups (no pairs): empty or all-zero results, no launch errors.
    empty = kd.pairwise_distance_ragged_triton(torch.empty(0), [], [], "sqeuclidean", True, None)
    assert empty.shape == (0,)
    single = kd.pairwise_distance_ragged_triton(
        torch.randn(7), [1, 1], [3, 4], "cosine", True, None
    )
    assert single.shape == (0,)
    sq = kd.pairwise_distance_ragged_triton(torch.randn(7), [1, 1], [3, 4], "cosine", False, None)
    assert torch.equal(sq, torch.zeros(2))


def test_batched_api_uses_one_ragged_call():
    xs = [torch.tensor(testing.channel_like(n, d, seed=n)) for n, d in [(9, 40), (40, 7), (3, 3)]]
    got = simprune.pairwise_distance_batched(xs, metric="euclidean", backend="triton")
    for x, g in zip(xs, got, strict=True):
        ref = pairwise_distance_ref(x, None, "euclidean", True, torch.float64)
        assert g.shape == ref.shape and _rel_err(g, ref) <= 1e-12
    sq = simprune.pairwise_distance_batched(xs, condensed=False, backend="triton")
    assert [tuple(s.shape) for s in sq] == [(9, 9), (40, 40), (3, 3)]


def test_ragged_opcheck():
    xs = [torch.randn(6, 40, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    packed = torch.cat([x.reshape(-1) for x in xs])
    for b in ("torch", "triton"):
        op = simprune.ops.get("pairwise_distance_ragged", b)
        torch.library.opcheck(op, (packed, [6, 3], [40, 2], "sqeuclidean", True, None, "exact"))


# ------------------------------------------------------------------------------------------------
# property test: random shapes, random duplicate structure
# ------------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 70),
    d=st.integers(1, 72),
    seed=st.integers(0, 2**16),
    noise=st.sampled_from([0.0, 1e-6, 1e-3, 1.0]),
    metric=st.sampled_from(METRICS),
    condensed=st.booleans(),
)
def test_triton_property(n, d, seed, noise, metric, condensed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) + 3.0
    src = rng.integers(0, n, size=n // 3)
    x[: n // 3] = x[src] + noise * rng.standard_normal((n // 3, d))
    x = torch.tensor(x, dtype=torch.float32)
    ref = pairwise_distance_ref(x, None, metric, condensed, torch.float64)
    out = simprune.pairwise_distance(x, metric=metric, condensed=condensed, backend="triton")
    assert _rel_err(out, ref) <= 1e-6
    if not condensed:
        assert torch.equal(out, out.T) and (out.diagonal() == 0).all()


# ------------------------------------------------------------------------------------------------
# the precision design, checked against an emulation of the GPU's tensor-core rounding
# ------------------------------------------------------------------------------------------------
def _tf32(a: np.ndarray) -> np.ndarray:
    """Round fp32 to TF32 (10 mantissa bits, round half away, as cvt.rna.tf32.f32)."""
    b = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + (1 << 12)) & ~np.uint64((1 << 13) - 1)).astype(np.uint32)
    return b.view(np.float32)


def _dot_3xtf32(a, b):
    ab, bb = _tf32(a), _tf32(b)
    al, bl = _tf32(a - ab), _tf32(b - bb)
    big, bigb = ab.astype(np.float64), bb.astype(np.float64)
    prod = big @ bigb.T + al.astype(np.float64) @ bigb.T + big @ bl.astype(np.float64).T
    return prod.astype(np.float32)


@pytest.mark.parametrize(
    "name,x",
    [
        ("channel_like_256", testing.channel_like(400, 256, seed=7)),
        ("mixture_64", testing.mixture(400, 64, seed=7)),
        ("gaussian_1024", testing.gaussian(200, 1024, seed=7)),
    ],
)
def test_repair_ratio_bounds_emulated_3xtf32(name, x):
    """Pairs *not* repaired (expanded value > ratio * scale) are within 1e-6 under 3xTF32 rounding;
    without the repair the same data reaches 1e-4 (the reason the repair exists). The fast mode
    (1xTF32, same repair) stays within its documented 2.2e-4 (5e-4 here, for margin)."""
    x = x.astype(np.float32).astype(np.float64)
    ref = ((x[:, None] - x[None]) ** 2).sum(-1)
    xc = (x - x.mean(0)).astype(np.float32)
    nx = (xc.astype(np.float64) ** 2).sum(1).astype(np.float32)
    scale = nx[:, None] + nx[None]
    d = np.maximum(scale - 2 * _dot_3xtf32(xc, xc), 0)
    iu = np.triu_indices(len(x), 1)
    kept = d[iu] > kd.REPAIR_RATIO[torch.float32] * scale[iu]
    rel = np.abs(d - ref)[iu] / ref[iu]
    assert rel[kept].max() <= 1e-6
    if name == "channel_like_256":
        assert rel.max() > 1e-4  # the near-duplicates the repair fixes
    tf = _tf32(xc).astype(np.float64)
    d1 = np.maximum(scale - 2 * (tf @ tf.T).astype(np.float32), 0)
    kept1 = d1[iu] > kd.REPAIR_RATIO[torch.float32] * scale[iu]
    assert (np.abs(d1 - ref)[iu] / ref[iu])[kept1].max() <= 5e-4


# ------------------------------------------------------------------------------------------------
# compiled kernels: C++ CPU (when built) and CUDA (GPU only)
# ------------------------------------------------------------------------------------------------
def _has(backend: str, device: str = "cpu") -> bool:
    return backend in simprune.available_backends("pairwise_distance", device)


@pytest.mark.skipif(not _has("cpu"), reason="C++ CPU distance kernel not built")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", SHAPES + [(300, 64), (129, 256), (140, 1030)])
def test_cpu_kernel_matches_reference(n, d, dtype):
    # d >= 64 takes the BLAS-expansion + repair path (csrc/cpu/distance.cpp; n = 300: three row
    # panels of 128), smaller d the direct tiles: both are covered.
    x = _data(n, d, dtype, seed=n)
    for metric in METRICS:
        ref = pairwise_distance_ref(x, None, metric, False, torch.float64)
        out = simprune.pairwise_distance(x, metric=metric, backend="cpu")
        _check_square(out, ref, RTOL[dtype])
        cond = simprune.pairwise_distance(x, metric=metric, condensed=True, backend="cpu")
        iu = torch.triu_indices(n, n, offset=1)
        assert torch.equal(cond, out[iu[0], iu[1]])
        out64 = simprune.pairwise_distance(x, metric=metric, out_dtype=torch.float64, backend="cpu")
        _check_square(out64, ref, 1e-12)
    y = _data(max(1, n // 2), d, dtype, seed=n + 1)
    ref = pairwise_distance_ref(x, y, "euclidean", False, torch.float64)
    _check_square(
        simprune.pairwise_distance(x, y, "euclidean", backend="cpu"), ref, RTOL[dtype], False
    )


@pytest.mark.skipif(not _has("cpu"), reason="C++ CPU distance kernel not built")
@pytest.mark.parametrize("n,d", [(1024, 64), (1024, 256), (1024, 1024), (4096, 64)])
def test_cpu_near_duplicates_at_benchmark_sizes(n, d):
    """The sizes the CPU expansion (one GEMM per row panel + fused epilogue + repair) is tuned and
    benchmarked at: <= 1e-6 relative on the channel-like set (5 % near-copies, where the expansion
    alone is off by up to 15 %), square and condensed, bit-symmetric with an exact-zero diagonal."""
    x = torch.tensor(testing.channel_like(n, d, seed=d), dtype=torch.float32)
    x[n - 1] = x[0]  # an exact duplicate: its distance must be exactly 0
    ref = pairwise_distance_ref(x, None, "sqeuclidean", True, torch.float64)
    cond = simprune.pairwise_distance(x, condensed=True, backend="cpu")
    assert _rel_err(cond, ref) <= 1e-6
    assert cond[n - 2] == 0  # pair (0, n - 1)
    if n <= 1024:
        sq = simprune.pairwise_distance(x, backend="cpu")
        assert torch.equal(sq, sq.T) and not sq.diagonal().any()
        iu = torch.triu_indices(n, n, offset=1)
        assert torch.equal(sq[iu[0], iu[1]], cond)


@pytest.mark.skipif(not _has("cpu"), reason="C++ CPU distance kernel not built")
@pytest.mark.parametrize("metric", METRICS)
def test_cpu_heavy_repair_and_cross_distances(metric):
    """Clustered data (every same-cluster pair flagged for the repair) and x-to-y distances between
    near-copies (the cross matrix's near pairs), on the expansion path (d >= 64)."""
    x = torch.tensor(testing.mixture(600, 96, k=5, seed=3), dtype=torch.float32)
    ref = pairwise_distance_ref(x, None, metric, False, torch.float64)
    _check_square(simprune.pairwise_distance(x, metric=metric, backend="cpu"), ref, 1e-6)
    y = x[::3] + 1e-4 * torch.randn(200, 96)
    ref = pairwise_distance_ref(x, y, metric, False, torch.float64)
    got = simprune.pairwise_distance(x, y, metric=metric, backend="cpu")
    _check_square(got, ref, 1e-6, sym=False)


@pytest.mark.skipif(not _has("cpu"), reason="C++ CPU distance kernel not built")
def test_cpu_op_refuses_what_cannot_fit():
    """The compiled op itself (not only simprune.pairwise_distance) refuses, before allocating, a
    result that cannot fit in host memory (simprune::check_host_memory: needed vs available)."""
    op = simprune.ops.get("pairwise_distance", "cpu")
    with pytest.raises(
        torch.OutOfMemoryError, match=r"pairwise_distance_cpu: n = 200000 needs \d+"
    ):
        op(torch.zeros(200_000, 2), None, "sqeuclidean", False, None, "exact")
    with pytest.raises(torch.OutOfMemoryError, match=r"only \d+ bytes are available"):
        op(torch.zeros(200_000, 2), None, "sqeuclidean", True, None, "exact")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(1, 1), (2, 3), (127, 33), (1000, 2), (2049, 64), (1031, 1024)])
def test_gpu_matches_reference(backend, dtype, n, d):
    if not _has(backend, "cuda"):
        pytest.skip(f"{backend} backend not available on cuda")
    x = _data(n, d, dtype, seed=n).cuda()
    for metric in METRICS:
        ref = pairwise_distance_ref(x, None, metric, False, torch.float64)
        out = simprune.pairwise_distance(x, metric=metric, backend=backend)
        _check_square(out, ref, RTOL[dtype])
        cond = simprune.pairwise_distance(x, metric=metric, condensed=True, backend=backend)
        iu = torch.triu_indices(n, n, offset=1, device=x.device)
        assert torch.equal(cond, out[iu[0], iu[1]])
    y = _data(max(1, n // 3), d, dtype, seed=n + 1).cuda()
    ref = pairwise_distance_ref(x, y, "sqeuclidean", False, torch.float64)
    _check_square(simprune.pairwise_distance(x, y, backend=backend), ref, RTOL[dtype], False)
    ref = pairwise_distance_ref(x, None, "euclidean", True, torch.float64)
    out64 = simprune.pairwise_distance(
        x, metric="euclidean", condensed=True, out_dtype=torch.float64, backend=backend
    )
    assert _rel_err(out64, ref) <= 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("d", [64, 256, 1024])
def test_gpu_near_duplicate_accuracy(backend, d):
    if not _has(backend, "cuda"):
        pytest.skip(f"{backend} backend not available on cuda")
    x = torch.tensor(testing.channel_like(4096, d, seed=d), dtype=torch.float32).cuda()
    ref = pairwise_distance_ref(x, None, "sqeuclidean", True, torch.float64)
    out = simprune.pairwise_distance(x, condensed=True, backend=backend)
    assert _rel_err(out, ref) <= 1e-6


@pytest.mark.gpu
def test_gpu_fast_mode_error_recorded():
    """Fast (TF32) mode: the documented bound (emulation: 2.2e-4) with margin."""
    if not _has("triton", "cuda"):
        pytest.skip("triton not available on cuda")
    for d in (64, 1024):
        x = torch.tensor(testing.channel_like(2048, d, seed=1), dtype=torch.float32).cuda()
        ref = pairwise_distance_ref(x, None, "sqeuclidean", True, torch.float64)
        out = simprune.pairwise_distance(x, condensed=True, precision="fast", backend="triton")
        err = _rel_err(out, ref)
        print(f"fast mode d={d}: max rel err {err:.2e}")
        assert err <= 1e-3


@pytest.mark.gpu
def test_gpu_ragged():
    if not _has("triton", "cuda"):
        pytest.skip("triton not available on cuda")
    xs = [_data(n, d, torch.float32, seed=i).cuda() for i, (n, d) in enumerate(GROUPS)]
    got = simprune.pairwise_distance_batched(xs, metric="cosine")
    for x, g in zip(xs, got, strict=True):
        ref = pairwise_distance_ref(x, None, "cosine", True, torch.float64)
        assert _rel_err(g, ref) <= 1e-6


@pytest.mark.skipif(not simprune.has_cuda_extension(), reason="extension built without CUDA")
def test_cuda_kernel_compiled_and_registered():
    """CI builds the .cu with nvcc (no GPU): the CUDA distance kernel must be in the library."""
    from simprune.backends import has_kernel

    assert has_kernel("pairwise_distance_cuda", "CUDA")


@pytest.mark.skipif(not _has("cpu"), reason="C++ CPU distance kernel not built")
def test_cpu_op_rejects_bad_input():
    op = simprune.ops.get("pairwise_distance", "cpu")
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        op(torch.randn(5), None, "sqeuclidean", False, None, "exact")
    with pytest.raises(RuntimeError, match="unknown metric"):
        op(torch.randn(5, 2), None, "hamming", False, None, "exact")
    with pytest.raises(RuntimeError, match="same number of features"):
        op(torch.randn(5, 2), torch.randn(3, 4), "sqeuclidean", False, None, "exact")
    with pytest.raises(RuntimeError, match="condensed=True needs y=None"):
        op(torch.randn(5, 2), torch.randn(3, 2), "sqeuclidean", True, None, "exact")
    with pytest.raises(RuntimeError, match="out_dtype must be"):
        op(torch.randn(5, 2), None, "sqeuclidean", False, torch.float16, "exact")
