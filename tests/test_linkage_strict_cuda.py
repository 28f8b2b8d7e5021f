"""Strict mode of the CUDA linkage (csrc/cuda/linkage_strict.cu): scipy's NN-chain and Prim replayed in
one thread block, Z bitwise equal to scipy's ``linkage``, ties included (linkage.md 7.4).

The ``gpu``-marked tests need a CUDA device (scripts/gpu_check.sh runs them). Sizes: 2 and 3 (the
smallest chains), 31 and 100 (fewer columns than the block's 512 threads), 513 and 2049 (a thread
scans two and five columns: first-index tie-breaking across threads and warps). The data sets are
those of tests/test_linkage_strict_triton.py: tie-free Gaussian, channel-like near-duplicates, dead +
duplicate rows (zero-height ties), the half-integer grid (massive ties), the 1-D chain (the longest
chains). One CPU-only test compiles the kernels to PTX and checks that they contain no fused
multiply-add (scipy's rounding, operation by operation).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import simprune
from simprune.backends import has_kernel
from tests.test_linkage_cpu import REDUCIBLE, assert_bitwise, condensed, data, scipy_z

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA_LINKAGE = has_kernel("linkage_cuda", "CUDA")
_no_kernel = pytest.mark.skipif(
    not HAS_CUDA_LINKAGE, reason="simprune._C was built without the CUDA linkage kernel"
)


def needs_cuda_kernel(f):
    return pytest.mark.gpu(_no_kernel(f))


def strict(d, method) -> np.ndarray:
    """Through the registered op, as backend="cuda" calls it."""
    dg = torch.as_tensor(d).cuda()
    z = torch.ops.simprune.linkage_cuda(dg, method, "strict")
    assert z.device == dg.device and z.dtype == torch.float64
    return z.cpu().numpy()


DATASETS = ("gaussian", "channel_like", "dead_duplicate", "quantised", "chain_1d")
SIZES = (2, 3, 31, 100, 513, 2049)
CASES = [(name, n) for name in DATASETS for n in SIZES]


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", CASES)
def test_cuda_strict_bitwise_scipy(name, n, method):
    assert_bitwise(strict(data(name, n), method), scipy_z(name, n, method))


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", CASES)
def test_cuda_strict_float32_input_is_widened_like_scipy(name, n, method):
    d32 = data(name, n).astype(np.float32)
    z = strict(torch.from_numpy(d32), method)
    assert_bitwise(z, sch.linkage(d32.astype(np.float64), method))


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
def test_cuda_strict_public_api(method):
    # Condensed distances: bitwise scipy.
    d = data("quantised", 700)
    z = simprune.linkage(torch.from_numpy(d).cuda(), method, mode="strict", backend="cuda")
    assert z.is_cuda and z.dtype == torch.float64
    assert_bitwise(z.cpu().numpy(), scipy_z("quantised", 700, method))
    # Observations: the distances come from the cuda backend too; the linkage of exactly those
    # distances is scipy's, bit for bit.
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((300, 16))).cuda()
    z = simprune.linkage(x, method, mode="strict", backend="cuda")
    dx = simprune.pairwise_distance(
        x, metric="euclidean", condensed=True, out_dtype=torch.float64, backend="cuda"
    )
    assert z.is_cuda
    assert_bitwise(z.cpu().numpy(), sch.linkage(dx.cpu().numpy(), method))
    # float32 observations (widened like scipy after the distances).
    x32 = x.float()
    z = simprune.linkage(x32, method, mode="strict", backend="cuda")
    dx = simprune.pairwise_distance(
        x32, metric="euclidean", condensed=True, out_dtype=torch.float64, backend="cuda"
    )
    assert_bitwise(z.cpu().numpy(), sch.linkage(dx.cpu().numpy(), method))


@needs_cuda_kernel
def test_cuda_strict_pinned_ties_and_signed_zero():
    # Four points on a unit square (every side ties): the chain starts at 0, keeps the first minimal
    # index and merges into the larger slot. Then zeros of both signs (Cython's min/max semantics,
    # and the chosen entry's own value in the argmin).
    square = np.array([1.0, np.sqrt(2.0), 1.0, 1.0, np.sqrt(2.0), 1.0])
    for method in REDUCIBLE:
        z = strict(square, method)
        assert_bitwise(z, sch.linkage(square, method))
        assert z[0, 0] == 0 and z[0, 1] == 1
        for zeros in ([-0.0, 0.0, 0.0], [0.0, -0.0, 0.0], [0.0, 0.0, -0.0], [-0.0, -0.0, 1.0]):
            zs = np.array(zeros)
            assert_bitwise(strict(zs, method), sch.linkage(zs, method))
    # Signed zeros spread over a wide row (many threads and warps hold a zero of either sign).
    rng = np.random.default_rng(3)
    d = rng.choice(np.array([0.0, -0.0, 1.0, 2.0]), size=1000 * 999 // 2)
    assert np.signbit(d).any() and (d == 0).sum() > np.signbit(d).sum()
    for method in ("single", "complete", "average", "weighted"):
        assert_bitwise(strict(d, method), sch.linkage(d, method))


@needs_cuda_kernel
@settings(max_examples=60, deadline=None)
@given(case=condensed(), method=st.sampled_from(REDUCIBLE))
def test_cuda_strict_property_bitwise_scipy(case, method):
    # Integer grid points (heavy ties) or arbitrary non-negative floats, n <= 24.
    d, euclidean = case
    assume(euclidean or method != "ward")  # ward's update assumes Euclidean distances
    assert_bitwise(strict(d, method), sch.linkage(d, method))


@needs_cuda_kernel
def test_cuda_strict_small_input_and_errors():
    op = torch.ops.simprune.linkage_cuda
    dev = "cuda"
    z = op(torch.zeros(0, dtype=torch.float64, device=dev), "ward", "strict")
    assert z.shape == (0, 4) and z.is_cuda and z.dtype == torch.float64
    z = op(torch.tensor([2.5], dtype=torch.float64, device=dev), "ward", "strict")
    assert z.cpu().tolist() == [[0.0, 1.0, 2.5, 2.0]]
    d = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64, device=dev)
    with pytest.raises(ValueError, match="float64 storage"):
        op(d, "average", "strict", torch.float32)
    assert_bitwise(
        op(d, "average", "strict", torch.float64).cpu().numpy(),
        sch.linkage(d.cpu().numpy(), "average"),
    )
    with pytest.raises(ValueError, match="NaN"):
        op(torch.tensor([1.0, float("nan"), 2.0], device=dev), "average", "strict")
    with pytest.raises(ValueError, match="Inf"):
        op(torch.tensor([1.0, float("inf"), 2.0], device=dev), "single", "strict")
    with pytest.raises(ValueError, match="non-negative"):
        op(torch.tensor([1.0, -1.0, 2.0], device=dev), "single", "strict")
    with pytest.raises(NotImplementedError, match="median"):
        op(d, "median", "strict")
    with pytest.raises(ValueError, match="unknown linkage method"):
        op(d, "nope", "strict")
    with pytest.raises(ValueError, match="n\\(n-1\\)/2"):
        op(torch.ones(4, dtype=torch.float64, device=dev), "average", "strict")
    with pytest.raises(ValueError, match="float64 storage"):  # the public API refuses it as well
        simprune.linkage(d, "average", mode="strict", storage=torch.float32, backend="cuda")
    # n = 400,000 would need ~1.3 TB: refused with the numbers, before any O(n^2) allocation (the
    # input is a stride-0 view).
    n = 400_000
    huge = torch.zeros(1, dtype=torch.float64, device=dev).expand(n * (n - 1) // 2)
    with pytest.raises(torch.OutOfMemoryError, match="strict.*needs .* bytes"):
        op(huge, "average", "strict")


@needs_cuda_kernel
def test_cuda_strict_opcheck():
    d = torch.from_numpy(data("quantised", 12)).cuda()
    for method in ("single", "ward"):
        torch.library.opcheck(torch.ops.simprune.linkage_cuda, (d, method, "strict"))


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
def test_cuda_strict_larger_problem_and_timing(method):
    # n = 4097 (eight columns per thread); the strict CPU backend is scipy bit for bit as well and
    # much faster than scipy here. Prints the time of one call (gpu_check's log).
    name, n = "channel_like", 4097
    d = torch.from_numpy(data(name, n))
    dg = d.cuda()
    torch.ops.simprune.linkage_cuda(dg[:3], method, "strict")  # warm-up (context, allocator)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    z = torch.ops.simprune.linkage_cuda(dg, method, "strict")
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    zc = simprune.linkage(d, method, mode="strict", backend="cpu")
    assert_bitwise(z.cpu().numpy(), zc.numpy())
    print(f"strict cuda {method} {name} n={n}: {dt * 1e3:.1f} ms")


# ---------------------------------------------------------------------------------------------------
# CPU only: the kernels' PTX (nvcc, no GPU needed).


def test_strict_kernels_have_barriers_and_no_fma(tmp_path):
    """The device code of linkage_strict.cu alone (SIMPRUNE_STRICT_DEVICE_ONLY: no torch headers),
    compiled for sm_90 WITHOUT --fmad=false: the explicitly rounded intrinsics of linkage_common.h
    leave no fused multiply-add whatever --fmad says; ward keeps IEEE division and square root; every
    kernel that the host launches is there, and the block barriers survive."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    ptx = tmp_path / "strict.ptx"
    out = subprocess.run(
        [
            nvcc,
            "-std=c++20",
            "-arch=sm_90",
            "-O3",
            "-DSIMPRUNE_STRICT_DEVICE_ONLY",
            "-I",
            os.path.join(ROOT, "csrc", "include"),
            "-ptx",
            os.path.join(ROOT, "csrc", "cuda", "linkage_strict.cu"),
            "-o",
            str(ptx),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = ptx.read_text()
    entries = re.findall(r"\.entry\s+(\w+)\(", text)
    names = " ".join(entries)
    assert len(entries) == 7, entries  # 4 nn_chain methods, Prim, 2 square-matrix input types
    for m in range(1, 5):  # kComplete .. kWard
        assert f"nn_chain_strict_kernelILi{m}E" in names
    assert "mst_single_strict_kernel" in names
    assert not re.search(r"\bfma\.", text), "fused multiply-add in the strict kernels"
    assert "div.rn.f64" in text and "sqrt.rn.f64" in text and "mul.rn.f64" in text
    assert len(re.findall(r"\bbar(rier)?\.sync", text)) >= 5 * 4
