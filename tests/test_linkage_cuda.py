"""GPU linkage (``-m gpu``, run by scripts/gpu_check.sh): the CUDA rounds kernel (csrc/cuda/linkage.cu)
and the Triton primitives on a real device, against scipy (the oracle) and the CPU twin (the same
algorithm and the same arithmetic: bitwise equal Z and equal round statistics, ties included).

Sizes hit every code path of the CUDA kernel: n <= 512 (one block from the start), n just above it
(grid-wide rounds, then the hand-off to one block), several compactions (n = 4097), the worst-case
chain (n/2 rounds).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch

import simprune
from simprune.backends import has_kernel
from simprune.hierarchy import BATCHED_MAX_N, linkage_rounds
from tests.test_linkage_cpu import (
    REDUCIBLE,
    accepted_by_scipy,
    assert_bitwise,
    assert_same_partitions,
    assert_same_tree,
    assert_valid_hac,
    data,
    scipy_z,
)

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
HAS_CUDA_LINKAGE = has_kernel("linkage_cuda", "CUDA")
gpu = pytest.mark.gpu  # skipped without a CUDA device (tests/conftest.py)
_no_kernel = pytest.mark.skipif(
    not HAS_CUDA_LINKAGE, reason="simprune._C was built without the CUDA linkage kernel"
)


def needs_cuda_kernel(f):
    return gpu(_no_kernel(f))


def twin(d, method):
    z, stats = linkage_rounds(torch.as_tensor(d), method)
    return z.numpy(), stats.tolist()


def cuda_rounds(d, method):
    dg = torch.as_tensor(d).cuda()
    z, stats = torch.ops.simprune.linkage_rounds_cuda(dg, method)
    assert z.device == dg.device and z.dtype == torch.float64 and stats.device == dg.device
    return z.cpu().numpy(), stats.cpu().tolist()


TIE_FREE_CASES = [
    (name, n, method)
    for name in ("gaussian", "mixture", "channel_like")
    for n in (2, 3, 31, 512, 513, 1000)
    for method in REDUCIBLE
] + [("chain_1d", n, m) for n in (513, 2000) for m in REDUCIBLE]
# Several compactions and the grid-to-block hand-off after them (scipy takes ~1 s per call here).
TIE_FREE_CASES += [("gaussian", 4097, m) for m in REDUCIBLE]


@needs_cuda_kernel
@pytest.mark.parametrize("name,n,method", TIE_FREE_CASES)
def test_cuda_tie_free_same_tree_as_scipy_and_twin(name, n, method):
    d = data(name, n)
    z, stats = cuda_rounds(d, method)
    assert_same_tree(z, scipy_z(name, n, method), method)
    accepted_by_scipy(z, n)
    zt, st_twin = twin(d, method)
    assert_bitwise(z, zt)
    assert stats == st_twin


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("n", [31, 1000])
def test_cuda_ties_same_as_twin(n, method):
    d = data("dead_duplicate", n)
    z, stats = cuda_rounds(d, method)
    assert_same_partitions(z, scipy_z("dead_duplicate", n, method))
    assert_bitwise(z, twin(d, method)[0])
    dq = data("quantised", 300)
    zq, _ = cuda_rounds(dq, method)
    assert_valid_hac(zq, dq, method)
    assert_bitwise(zq, twin(dq, method)[0])


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
def test_cuda_public_api_and_float32(method):
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((700, 16)))
    z = simprune.linkage(x.cuda(), method, backend="cuda")
    assert z.is_cuda
    assert_same_tree(z.cpu().numpy(), sch.linkage(x.numpy(), method), method)
    d32 = data("gaussian", 600).astype(np.float32)
    z32, _ = cuda_rounds(torch.from_numpy(d32), method)
    assert_same_tree(z32, sch.linkage(d32.astype(np.float64), method), method)


@needs_cuda_kernel
def test_cuda_bad_input_and_memory_refusal():
    op = torch.ops.simprune.linkage_cuda
    dev = "cuda"
    with pytest.raises(ValueError, match="NaN"):
        op(torch.tensor([1.0, float("nan"), 2.0], device=dev), "average", "exact")
    with pytest.raises(ValueError, match="non-negative"):
        op(torch.tensor([1.0, -1.0, 2.0], device=dev), "average", "exact")
    z = op(torch.tensor([1.0, 1.0, 2.0], device=dev), "average", "strict")
    assert_bitwise(z.cpu().numpy(), sch.linkage(np.array([1.0, 1.0, 2.0]), "average"))
    with pytest.raises(NotImplementedError, match="median"):
        op(torch.tensor([1.0, 1.0, 2.0], device=dev), "median", "exact")
    z = op(torch.tensor([2.5], dtype=torch.float64, device=dev), "ward", "exact")
    assert z.cpu().tolist() == [[0.0, 1.0, 2.5, 2.0]]
    # n = 400,000 would need ~1.6 TB: refused with the numbers, before any O(n^2) allocation
    # (the input is a stride-0 view).
    n = 400_000
    huge = torch.zeros(1, dtype=torch.float64, device=dev).expand(n * (n - 1) // 2)
    with pytest.raises(torch.OutOfMemoryError, match="needs .* bytes"):
        op(huge, "average", "exact")


@needs_cuda_kernel
def test_cuda_auto_strict_falls_back_to_the_reference():
    d = torch.from_numpy(data("quantised", 60)).cuda()
    z = simprune.linkage(d, "average", mode="strict")
    assert_bitwise(z.cpu().numpy(), scipy_z("quantised", 60, "average"))


@needs_cuda_kernel
def test_opcheck_cuda_ops():
    d = torch.from_numpy(data("gaussian", 40)).cuda()
    torch.library.opcheck(torch.ops.simprune.linkage_cuda, (d, "average", "exact"))
    torch.library.opcheck(torch.ops.simprune.linkage_rounds_cuda, (d, "ward"))


@gpu
@pytest.mark.skipif(not ON_GPU, reason="Triton on the GPU (TRITON_INTERPRET unset)")
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", [("gaussian", 1000), ("channel_like", 513), ("quantised", 300)])
def test_triton_on_gpu_same_as_twin(name, n, method):
    from simprune.kernels.linkage import linkage_rounds_triton

    d = data(name, n)
    z, stats = linkage_rounds_triton(torch.from_numpy(d).cuda(), method)
    zt, st_twin = twin(d, method)
    assert_bitwise(z.cpu().numpy(), zt)  # no FMA contraction: the twin's arithmetic
    assert stats.tolist() == st_twin
    z_api = simprune.linkage(torch.from_numpy(d).cuda(), method, backend="triton")
    assert_bitwise(z_api.cpu().numpy(), zt)


# ---------------------------------------------------------------------------------------------------
# Batched small layers: one launch, one block per problem.

BATCH_SIZES = [1, 2, 3, 64, 100, 513, 1000, 31]


def test_linkage_batched_reference_backend():
    """The API and the reference (CPU): one Z per problem, each scipy's."""
    ds = [
        torch.from_numpy(data("gaussian", n)) if n > 1 else torch.zeros(0) for n in BATCH_SIZES[:5]
    ]
    zs = simprune.linkage_batched(ds, "ward", backend="torch")
    assert [tuple(z.shape) for z in zs] == [(max(n - 1, 0), 4) for n in BATCH_SIZES[:5]]
    for n, z in zip(BATCH_SIZES[:5], zs, strict=True):
        if n > 1:
            assert_bitwise(z.numpy(), scipy_z("gaussian", n, "ward"))
    assert simprune.linkage_batched([], "average") == []
    with pytest.raises(ValueError, match="non-negative"):
        simprune.linkage_batched([torch.tensor([1.0, -1.0, 2.0])], backend="torch")
    with pytest.raises(ValueError, match="1-D"):
        simprune.linkage_batched([torch.zeros(2, 2)], backend="torch")


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


# ---------------------------------------------------------------------------------------------------
# Single linkage on the GPU: Boruvka (what linkage_cuda runs for method="single").


@needs_cuda_kernel
@pytest.mark.parametrize(
    "name,n",
    [(s, n) for s in ("gaussian", "mixture", "chain_1d") for n in (2, 3, 31, 513, 1000)]
    + [("gaussian", 4097), ("dead_duplicate", 1000), ("quantised", 300)],
)
def test_cuda_single_boruvka(name, n):
    d = data(name, n)
    z = torch.ops.simprune.linkage_cuda(torch.from_numpy(d).cuda(), "single", "exact")
    z = z.cpu().numpy()
    zs = scipy_z(name, n, "single")
    if name in ("dead_duplicate", "quantised"):  # ties: the MST weights and partitions are unique
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(zs[:, 2]))
        assert_same_partitions(z, zs)
    else:
        assert_bitwise(z, zs)
    if ON_GPU:  # the Triton Boruvka follows the same rules and log order: the same Z bit for bit
        from simprune.kernels.linkage import linkage_boruvka_triton

        zt, _ = linkage_boruvka_triton(torch.from_numpy(d).cuda())
        assert_bitwise(z, zt.cpu().numpy())


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
# float32 storage (linkage(..., storage=torch.float32)): the twin's float storage, bit for bit, and the
# linkage.md 8.3 fp32 gate against scipy (tests/test_linkage_storage.py has the CPU side).

F32_CASES = [("mixture", 1000), ("gaussian", 4097), ("dead_duplicate", 600), ("quantised", 300)]


@needs_cuda_kernel
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", F32_CASES)
def test_cuda_float32_storage_same_as_twin(name, n, method):
    d = torch.from_numpy(data(name, n))
    z, stats = torch.ops.simprune.linkage_rounds_cuda(d.cuda(), method, torch.float32)
    zt, st_twin = linkage_rounds(d, method, torch.float32)
    assert_bitwise(z.cpu().numpy(), zt.numpy())
    assert stats.cpu().tolist() == st_twin.tolist()
    if method == "single":  # Boruvka on a float32 matrix: the same stored heights
        zb = torch.ops.simprune.linkage_cuda(d.cuda(), "single", "exact", torch.float32)
        np.testing.assert_array_equal(np.sort(zb[:, 2].cpu().numpy()), np.sort(zt[:, 2].numpy()))


@gpu
@pytest.mark.skipif(not ON_GPU, reason="Triton on the GPU (TRITON_INTERPRET unset)")
@pytest.mark.parametrize("method", REDUCIBLE)
def test_triton_on_gpu_float32_storage_same_as_twin(method):
    from simprune.kernels.linkage import linkage_rounds_triton

    d = torch.from_numpy(data("channel_like", 1000))
    z, stats = linkage_rounds_triton(d.cuda(), method, torch.float32)
    zt, st_twin = linkage_rounds(d, method, torch.float32)
    assert_bitwise(z.cpu().numpy(), zt.numpy())
    assert stats.tolist() == st_twin.tolist()


@gpu
@pytest.mark.parametrize("method", REDUCIBLE)
def test_gpu_float32_storage_gate_public_api(method):
    """The 8.3 fp32 gate through the public API (auto backend) on the Gaussian mixture."""
    from tests.test_linkage_storage import assert_float32_gate

    d = torch.from_numpy(data("mixture", 1000)).cuda()
    z = simprune.linkage(d, method, storage=torch.float32)
    assert z.is_cuda and z.dtype == torch.float64
    assert_float32_gate(z.cpu().numpy(), scipy_z("mixture", 1000, method))


@needs_cuda_kernel
def test_cuda_float32_storage_memory_refusal_names_the_storage():
    n = 400_000
    huge = torch.zeros(1, dtype=torch.float32, device="cuda").expand(n * (n - 1) // 2)
    with pytest.raises(torch.OutOfMemoryError, match="matrix in float32, 4 n\^2 bytes"):
        torch.ops.simprune.linkage_cuda(huge, "average", "exact", torch.float32)
    with pytest.raises(ValueError, match="strict.*float64 storage"):
        torch.ops.simprune.linkage_cuda(huge[:3], "average", "strict", torch.float32)


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


@needs_cuda_kernel
def test_cuda_float32_storage_refuses_values_beyond_float32():
    d = torch.tensor([1.0, 1e300, 2.0], dtype=torch.float64, device="cuda")
    for method in ("single", "average"):
        with pytest.raises(ValueError, match="1 Inf.*beyond float32's range"):
            torch.ops.simprune.linkage_cuda(d, method, "exact", torch.float32)
