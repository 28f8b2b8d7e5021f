"""Strict mode of the Triton linkage (kernels/linkage_strict.py): scipy's NN-chain and Prim replayed in
one program, Z bitwise equal to scipy's ``linkage``, ties included (linkage.md 7.4).

Under ``TRITON_INTERPRET=1`` (tests/conftest.py) the kernels run on CPU tensors. The interpreter costs
a fixed time per operation and the chain needs ~3n sequential steps, so n stays <= 100 here; the
interpreter's chunk width is 64 (``STRICT_BLOCK``), so n = 65 and 100 span two chunks. The
``gpu``-marked test runs the compiled kernels on a CUDA device (scripts/gpu_check.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import simprune
from simprune.backends import has_triton
from tests.test_linkage_cpu import REDUCIBLE, assert_bitwise, condensed, data, scipy_z

ks = pytest.importorskip("simprune.kernels.linkage_strict")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
interpreted = pytest.mark.skipif(
    not INTERPRET, reason="runs the Triton kernels on CPU tensors (TRITON_INTERPRET=1)"
)


def strict(d, method) -> np.ndarray:
    """Through the registered op, as backend="triton" calls it."""
    z = torch.ops.simprune.linkage_triton(torch.as_tensor(d), method, "strict")
    assert z.dtype == torch.float64 and z.device.type == "cpu"
    return z.numpy()


def test_interpreter_block_is_spanned_by_the_test_sizes():
    if INTERPRET:
        assert ks.STRICT_BLOCK == 64  # n = 65 and 100 below then span two chunks
    assert ks.GPU_BLOCK >= 32 * ks.GPU_WARPS  # one owner thread per chunk element on the GPU


# tie-free Gaussian, channel-like near-duplicates, dead + duplicate rows (zero-height ties), the
# half-integer grid in D = 8 (massive ties), the 1-D chain (the longest chains).
DATASETS = ("gaussian", "channel_like", "dead_duplicate", "quantised", "chain_1d")
SIZES = (2, 3, 31, 65, 100)
CASES = [(name, n) for name in DATASETS for n in SIZES] + [("dead_duplicate", 10)]


@interpreted
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", CASES)
def test_bitwise_scipy(name, n, method):
    assert_bitwise(strict(data(name, n), method), scipy_z(name, n, method))


@interpreted
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", [("gaussian", 31), ("quantised", 65)])
def test_float32_input_is_widened_like_scipy(name, n, method):
    d32 = data(name, n).astype(np.float32)
    assert_bitwise(
        strict(torch.from_numpy(d32), method), sch.linkage(d32.astype(np.float64), method)
    )


@interpreted
def test_pinned_ties_and_signed_zero():
    # Four points on a unit square (every side ties): the chain starts at 0, keeps the first minimal
    # index and merges into the larger slot. Then zeros of both signs (Cython's min/max semantics).
    square = np.array([1.0, np.sqrt(2.0), 1.0, 1.0, np.sqrt(2.0), 1.0])
    zeros = np.array([-0.0, 0.0, 0.0])
    for method in REDUCIBLE:
        z = strict(square, method)
        assert_bitwise(z, sch.linkage(square, method))
        assert z[0, 0] == 0 and z[0, 1] == 1
        assert_bitwise(strict(zeros, method), sch.linkage(zeros, method))


@interpreted
@settings(max_examples=40, deadline=None)
@given(case=condensed(), method=st.sampled_from(REDUCIBLE))
def test_property_bitwise_scipy(case, method):
    # Integer grid points (heavy ties) or arbitrary non-negative floats, n <= 24.
    d, euclidean = case
    assume(euclidean or method != "ward")  # ward's update assumes Euclidean distances
    assert_bitwise(strict(d, method), sch.linkage(d, method))


@interpreted
def test_small_input_and_errors():
    op = torch.ops.simprune.linkage_triton
    assert op(torch.zeros(0, dtype=torch.float64), "ward", "strict").shape == (0, 4)
    assert op(torch.tensor([2.5], dtype=torch.float64), "ward", "strict").tolist() == [
        [0.0, 1.0, 2.5, 2.0]
    ]
    d = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="float64 storage"):
        op(d, "average", "strict", torch.float32)
    z = op(d, "average", "strict", torch.float64).numpy()
    assert_bitwise(z, sch.linkage(d.numpy(), "average"))
    with pytest.raises(ValueError, match="NaN"):
        op(torch.tensor([1.0, float("nan"), 2.0]), "average", "strict")
    with pytest.raises(ValueError, match="non-negative"):
        op(torch.tensor([1.0, -1.0, 2.0]), "single", "strict")
    with pytest.raises(NotImplementedError, match="centroid"):
        op(d, "centroid", "strict")
    with pytest.raises(ValueError, match="float64 storage"):  # the public API refuses it as well
        simprune.linkage(d, "average", mode="strict", storage=torch.float32, backend="triton")


@interpreted
def test_opcheck():
    d = torch.from_numpy(data("quantised", 12))
    for method in ("single", "ward"):
        torch.library.opcheck(torch.ops.simprune.linkage_triton, (d, method, "strict"))


def test_compiled_kernels_have_barriers_and_no_fma():
    """Compiled for sm_90 as the launcher compiles them (enable_fp_fusion=False): no fused
    multiply-add (scipy's rounding, operation by operation), IEEE division and square root for
    ward, and the CTA barriers that publish one thread's stores to the others."""
    code = textwrap.dedent(
        """
        import re, triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import simprune.kernels.linkage_strict as ks
        for spec in ks.AOT_SPECS:
            src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"])
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(ks._LAUNCH))
            ptx = k.asm["ptx"]
            print(spec["name"], len(re.findall(r"\\bfma\\.", ptx)),
                  len(re.findall(r"\\bbar(rier)?\\.sync", ptx)),
                  int("div.rn.f64" in ptx and "sqrt.rn.f64" in ptx))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r.split()[0]: [int(v) for v in r.split()[1:]] for r in out.stdout.splitlines()}
    # This process may be interpreting (other chunk width): compare the names without it.
    assert {r.rsplit("_b", 1)[0] for r in rows} == {
        s["name"].rsplit("_b", 1)[0] for s in ks.AOT_SPECS
    } and len(rows) == 5
    for name, (fma, barriers, ieee) in rows.items():
        assert fma == 0, f"{name}: {fma} FMA instruction(s)"
        assert barriers >= 3, name  # tl.debug_barrier() survives (plus the reductions' own)
        if "ward" in name:
            assert ieee, name


# ---------------------------------------------------------------------------------------------------
# On a GPU: the compiled kernels (scripts/gpu_check.sh runs -m gpu with SIMPRUNE_TEST_ON_GPU=1).


@pytest.mark.gpu
@pytest.mark.skipif(
    INTERPRET, reason="the compiled kernels: SIMPRUNE_TEST_ON_GPU=1, no interpreter"
)
@pytest.mark.parametrize("method", REDUCIBLE)
def test_gpu_bitwise_scipy(method):
    if not has_triton():
        pytest.skip("triton not available")
    # GPU chunks are STRICT_BLOCK = 2048 wide: 2049 spans two.
    for name, n in [
        ("gaussian", 2),
        ("quantised", 31),
        ("dead_duplicate", 300),
        ("chain_1d", 1000),
        ("channel_like", 2049),
        ("quantised", 2049),
    ]:
        d = torch.from_numpy(data(name, n)).cuda()
        t0 = time.perf_counter()
        z = torch.ops.simprune.linkage_triton(d, method, "strict")
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert z.device == d.device and z.dtype == torch.float64
        assert_bitwise(z.cpu().numpy(), scipy_z(name, n, method))
        print(f"strict triton {method} {name} n={n}: {dt * 1e3:.1f} ms (first call compiles)")
    # fp32 input, and the public API with the backend named explicitly.
    d32 = data("quantised", 500).astype(np.float32)
    z = simprune.linkage(torch.from_numpy(d32).cuda(), method, mode="strict", backend="triton")
    assert z.device.type == "cuda"
    assert_bitwise(z.cpu().numpy(), sch.linkage(d32.astype(np.float64), method))
