"""What only the CUDA linkage (csrc/cuda: the rounds kernel, Boruvka for single, the batched kernel and
strict mode replayed in one thread block) has: memory refusals, the batched launches, the public API
on the device, the int32 index boundary, the strict kernels' PTX and timing.

The ``gpu``-marked tests need a CUDA device (scripts/gpu_check.sh runs them). The gates shared with
the other backends (strict bitwise scipy, exact tree / partitions / valid HAC and the twin's Z bit for
bit, float32 input and storage, properties, the raw op's errors, opcheck) are in
tests/test_linkage_matrix.py. One CPU-only test compiles the strict kernels to PTX and checks that
they contain no fused multiply-add (scipy's rounding, operation by operation).
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

import simprune
from simprune.backends import has_cuda_extension, has_kernel, has_triton, triton_interpret
from simprune.hierarchy import BATCHED_MAX_N, linkage_rounds
from simprune.testing import (
    REDUCIBLE,
    assert_bitwise,
    assert_same_partitions,
    assert_same_tree,
)
from tests._helpers import data, scipy_z

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_GPU = torch.cuda.is_available() and not triton_interpret()
HAS_CUDA_LINKAGE = has_cuda_extension() and has_kernel("linkage_cuda", "CUDA")
gpu = pytest.mark.gpu  # skipped without a CUDA device (tests/conftest.py)
_no_kernel = pytest.mark.skipif(
    not HAS_CUDA_LINKAGE, reason="simprune._C was built without the CUDA linkage kernel"
)


def needs_cuda_kernel(f):
    return gpu(_no_kernel(f))


def twin(d, method):
    z, stats = linkage_rounds(torch.as_tensor(d), method)
    return z.numpy(), stats.tolist()


def strict(d, method) -> np.ndarray:
    """Through the registered op, as backend="cuda" calls it."""
    dg = torch.as_tensor(d).cuda()
    z = torch.ops.simprune.linkage_cuda(dg, method, "strict")
    assert z.device == dg.device and z.dtype == torch.float64
    return z.cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Exact mode: the public API, memory refusals, the strict-mode fallback of "auto".


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
def test_cuda_public_api(method):
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((700, 16)))
    z = simprune.linkage(x.cuda(), method, backend="cuda")
    assert z.is_cuda
    assert_same_tree(z.cpu().numpy(), sch.linkage(x.numpy(), method), method)


@needs_cuda_kernel
def test_cuda_memory_refusal():
    # n = 400,000 would need ~1.6 TB: refused with the numbers, before any O(n^2) allocation
    # (the input is a stride-0 view).
    n = 400_000
    huge = torch.zeros(1, dtype=torch.float64, device="cuda").expand(n * (n - 1) // 2)
    with pytest.raises(torch.OutOfMemoryError, match="needs .* bytes"):
        torch.ops.simprune.linkage_cuda(huge, "average", "exact")
    # The same in strict mode (~1.3 TB).
    with pytest.raises(torch.OutOfMemoryError, match="strict.*needs .* bytes"):
        torch.ops.simprune.linkage_cuda(huge, "average", "strict")


@needs_cuda_kernel
def test_cuda_float32_storage_memory_refusal_names_the_storage():
    n = 400_000
    huge = torch.zeros(1, dtype=torch.float32, device="cuda").expand(n * (n - 1) // 2)
    with pytest.raises(torch.OutOfMemoryError, match=r"matrix in float32, 4 n\^2 bytes"):
        torch.ops.simprune.linkage_cuda(huge, "average", "exact", torch.float32)
    with pytest.raises(ValueError, match="strict.*float64 storage"):
        torch.ops.simprune.linkage_cuda(huge[:3], "average", "strict", torch.float32)


@needs_cuda_kernel
def test_cuda_auto_strict_falls_back_to_the_reference():
    d = torch.from_numpy(data("quantised", 60)).cuda()
    z = simprune.linkage(d, "average", mode="strict")
    assert_bitwise(z.cpu().numpy(), scipy_z("quantised", 60, "average"))


# ---------------------------------------------------------------------------------------------------
# Batched small layers: one launch, one block per problem.

BATCH_SIZES = [1, 2, 3, 64, 100, 513, 1000, 31]


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name", ["gaussian", "dead_duplicate"])
def test_cuda_batched_same_as_twin(name, method):
    sizes = [n for n in BATCH_SIZES if n > 1 and (name != "dead_duplicate" or n >= 10)]
    ds = [torch.zeros(0, dtype=torch.float64)] + [torch.from_numpy(data(name, n)) for n in sizes]
    zs = simprune.linkage_batched([d.cuda() for d in ds], method, backend="cuda")
    assert len(zs) == len(ds)
    for d, z in zip(ds, zs, strict=True):
        assert z.is_cuda
        n = z.shape[0] + 1
        if n > 1:
            assert_bitwise(z.cpu().numpy(), twin(d.numpy(), method)[0])
    # The raw op: sizes must match the packed length.
    with pytest.raises(ValueError, match="condensed distances"):
        torch.ops.simprune.linkage_batched_cuda(torch.zeros(4, device="cuda"), [3], method)


@needs_cuda_kernel
@pytest.mark.parametrize("method", ["single", "average"])
def test_cuda_batched_wide_problem_goes_through_the_whole_gpu_kernel(method):
    n_wide = BATCHED_MAX_N + 52
    ds = [torch.from_numpy(data("gaussian", n)) for n in (31, n_wide, 100)]
    zs = simprune.linkage_batched([d.cuda() for d in ds], method, backend="cuda")
    assert [z.shape[0] for z in zs] == [30, n_wide - 1, 99]
    for d, z in zip(ds, zs, strict=True):
        n = z.shape[0] + 1
        assert_bitwise(
            z.cpu().numpy(),
            scipy_z("gaussian", n, method) if method == "single" else twin(d.numpy(), method)[0],
        )


# ---------------------------------------------------------------------------------------------------
# Single linkage on the GPU: Boruvka (what linkage_cuda runs for method="single").


@needs_cuda_kernel
@pytest.mark.parametrize(
    "name,n",
    [
        (s, n)
        for s in ("gaussian", "mixture", "chain_1d", "chain_geometric")
        for n in (2, 3, 31, 513, 1000)
    ]
    + [("gaussian", 4097), ("chain_geometric", 4097), ("dead_duplicate", 1000), ("quantised", 300)],
)
def test_cuda_single_boruvka(name, n):
    # chain_geometric: one Boruvka iteration hooks every point into one chain of n - 1 edges (the
    # pointer doubling of boruvka_jump_step_kernel, ceil(log2 n) steps).
    d = data(name, n)
    z = torch.ops.simprune.linkage_cuda(torch.from_numpy(d).cuda(), "single", "exact")
    z = z.cpu().numpy()
    zs = scipy_z(name, n, "single")
    if name in ("dead_duplicate", "quantised"):  # ties: the MST weights and partitions are unique
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(zs[:, 2]))
        assert_same_partitions(z, zs)
    else:
        assert_bitwise(z, zs)
    if ON_GPU and has_triton():  # the Triton Boruvka follows the same rules and log order
        from simprune.kernels.linkage import linkage_boruvka_triton

        zt, _ = linkage_boruvka_triton(torch.from_numpy(d).cuda())
        assert_bitwise(z, zt.cpu().numpy())


# ---------------------------------------------------------------------------------------------------
# Strict mode (csrc/cuda/linkage_strict.cu): scipy's NN-chain and Prim in one thread block.


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
def test_cuda_strict_signed_zeros_over_a_wide_row():
    # Signed zeros spread over a wide row (many threads and warps hold a zero of either sign; the
    # chosen entry's own value in the argmin). The 3-point cases: test_linkage_matrix.py.
    rng = np.random.default_rng(3)
    d = rng.choice(np.array([0.0, -0.0, 1.0, 2.0]), size=1000 * 999 // 2)
    assert np.signbit(d).any() and (d == 0).sum() > np.signbit(d).sum()
    for method in ("single", "complete", "average", "weighted"):
        assert_bitwise(strict(d, method), sch.linkage(d, method))


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


def test_strict_kernels_have_barriers_and_no_fma(tmp_path):
    """CPU only (nvcc, no GPU needed). The device code of linkage_strict.cu alone
    (SIMPRUNE_STRICT_DEVICE_ONLY: no torch headers), compiled for sm_90 WITHOUT --fmad=false: the
    explicitly rounded intrinsics of linkage_common.h leave no fused multiply-add whatever --fmad
    says; ward keeps IEEE division and square root; every kernel that the host launches is there,
    and the block barriers survive."""
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


def _instantiations() -> str:
    """Explicit instantiations of every templated kernel of linkage_rounds.cu / linkage_boruvka.cu
    (their host code, which instantiates them in the build, is left out here)."""
    lines = []
    for t in ("double", "float"):
        lines += [
            f"template __global__ void rounds_kernel<{m}, {t}>(StateT<{t}>);" for m in range(5)
        ]
        lines.append(
            f"template __global__ void boruvka_rowmin_kernel<{t}>(const {t}*, const int64_t*, "
            "double*, int64_t*, int64_t);"
        )
        lines.append(
            f"template __global__ void boruvka_hook_kernel<{t}>(const {t}*, const int64_t*, "
            "const unsigned long long*, int64_t*, double*, int64_t*, int64_t);"
        )
    lines += [
        f"template __global__ void grouped_rounds_kernel<{m}>(const StateT<double>*);"
        for m in range(5)
    ]
    return "\n".join(lines)


def test_rounds_and_boruvka_kernels_registers_and_spills(tmp_path):
    """CPU only (nvcc, no GPU needed). The kernels of linkage_rounds.cu and linkage_boruvka.cu alone
    (SIMPRUNE_CUDA_DEVICE_ONLY + SIMPRUNE_HOST_HARNESS: no torch headers, no host code), compiled
    for sm_90 as the build compiles them: ptxas spills nothing anywhere, and the rounds kernel of
    single, complete and weighted fits 64 registers -- two 512-thread blocks per SM, as its
    __launch_bounds__ promise (average and ward: one block, see kRoundsMinBlocks). Borůvka resolves
    its parent chains by pointer doubling (boruvka_jump_step_kernel)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "kernels.cu"
    src.write_text(
        '#include "linkage_rounds.cu"\n#include "linkage_boruvka.cu"\n'
        "namespace simprune { namespace linkage { namespace {\n" + _instantiations() + "\n}}}\n"
    )
    out = subprocess.run(
        [
            nvcc,
            "-std=c++20",
            "-arch=sm_90",
            "-O3",
            "--fmad=false",
            "-Xptxas",
            "-v",
            "-DSIMPRUNE_CUDA_DEVICE_ONLY",
            "-DSIMPRUNE_HOST_HARNESS",
            "-I",
            os.path.join(ROOT, "csrc", "include"),
            "-I",
            os.path.join(ROOT, "csrc", "cuda"),
            "-c",
            str(src),
            "-o",
            str(tmp_path / "kernels.o"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    kernels = {}
    name = None
    for line in out.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        )
        if m and name:
            kernels.setdefault(name, {})["spill"] = tuple(int(v) for v in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            kernels.setdefault(name, {})["regs"] = int(m.group(1))
            name = None
    rounds = {k: v for k, v in kernels.items() if "13rounds_kernel" in k}
    assert len(rounds) == 10 and len(kernels) >= 24, sorted(kernels)
    assert any("boruvka_jump_step_kernel" in k for k in kernels)
    for k, v in kernels.items():
        assert v["spill"] == (0, 0, 0), f"{k}: stack/spill stores/spill loads {v['spill']}"
    for k, v in rounds.items():
        method = int(re.search(r"rounds_kernelILi(\d)E", k).group(1))
        if method in (0, 1, 3):  # single, complete, weighted: two blocks of 512 threads per SM
            assert v["regs"] <= 64, f"{k}: {v['regs']} registers"


# ---------------------------------------------------------------------------------------------------
# Kept last in this file: the slowest test.


@needs_cuda_kernel
def test_cuda_past_the_int32_index_boundary():
    """n = 46,341: n^2 > 2^31, so any 32-bit index in the kernels would wrap (linkage.md 8.2). The
    oracle is the C++ CPU backend (scipy would take minutes here); complete linkage does no arithmetic,
    so the tree and the heights must match exactly on this tie-free data. Kept last in this file: it is
    the slowest test (about 17 GB of GPU memory, seconds of CPU time for the oracle)."""
    n = 46_341
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((n, 16))).cuda()
    d = torch.pdist(x)
    del x
    z = simprune.linkage(d, "complete", backend="cuda").cpu().numpy()
    z32 = simprune.linkage(d, "complete", backend="cuda", storage=torch.float32).cpu().numpy()
    d_cpu = d.cpu()
    del d
    torch.cuda.empty_cache()
    zc = simprune.linkage(d_cpu, "complete", backend="cpu").numpy()
    assert_same_tree(z, zc, "complete")
    # float32 storage (8.6 GB here): a valid tree with the 8.3 fp32 height gate.
    sch.is_valid_linkage(z32, throw=True)
    np.testing.assert_allclose(np.sort(z32[:, 2]), np.sort(zc[:, 2]), rtol=1e-5, atol=0)
