"""float32 storage of the linkage matrix (``linkage(..., storage=torch.float32)``, linkage.md 7.3 / 8.3).

The contract: Lance-Williams is evaluated in float64 from the stored values and every stored value is
rounded to float32, the same on every implementation of one algorithm -- the round-synchronous CPU
twin (``linkage_rounds``), the Triton round primitives (under the interpreter here) and the CUDA
kernel (``-m gpu``, in tests/test_linkage_cuda.py) give the same Z bit for bit; the cpu backend (the
NN-chain) stores its condensed copy the same way. Against scipy (float64): heights within rtol 1e-5
and identical flat clusters at k in {5, 20, 100} on the Gaussian mixture (the linkage.md 8.3 gate).
single and complete do no arithmetic: their float32-storage Z is the float64 algorithm's on the
float32-rounded distances, exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch

import simprune
from simprune.backends import BackendUnavailableError, has_kernel
from simprune.hierarchy import linkage_rounds
from tests.test_linkage_cpu import REDUCIBLE, assert_bitwise, data, same_partition, scipy_z

HAS_TWIN = has_kernel("linkage_rounds_cpu", "CPU")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_twin = pytest.mark.skipif(not HAS_TWIN, reason="simprune._C (linkage_rounds_cpu) not built")
F32 = torch.float32


def twin(d, method, storage=torch.float64):
    z, stats = linkage_rounds(torch.as_tensor(d), method, storage)
    return z.numpy(), stats.tolist()


def assert_float32_gate(z: np.ndarray, zs: np.ndarray, ks=(5, 20, 100)) -> None:
    """linkage.md 8.3, fp32 mode: heights rtol 1e-5 (sorted: the two trees need not list merges in
    the same order), and identical flat clusters at each k (ARI = 1)."""
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(zs[:, 2]), rtol=1e-5, atol=0)
    for k in ks:
        fa, fb = sch.fcluster(z, k, "maxclust"), sch.fcluster(zs, k, "maxclust")
        assert len(set(fb.tolist())) == k  # tie-free: the cut gives exactly k clusters
        assert same_partition(fa, fb), f"flat clusters differ at k = {k}"


@needs_twin
@pytest.mark.parametrize("method", REDUCIBLE)
def test_twin_float32_storage_gate_on_the_mixture(method):
    d = data("mixture", 1000)
    z, _ = twin(d, method, F32)
    assert_float32_gate(z, scipy_z("mixture", 1000, method))
    # And it is not silently the float64 path: some height differs from the float64 one.
    z64, _ = twin(d, method)
    assert not np.array_equal(z[:, 2], z64[:, 2])


@needs_twin
@pytest.mark.parametrize("name", ["gaussian", "channel_like"])
@pytest.mark.parametrize("method", REDUCIBLE)
def test_twin_float32_storage_heights_close_to_scipy(name, method):
    z, _ = twin(data(name, 400), method, F32)
    zs = scipy_z(name, 400, method)
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(zs[:, 2]), rtol=1e-5, atol=0)
    sch.is_valid_linkage(z, throw=True)


@needs_twin
@pytest.mark.parametrize("method", ["single", "complete"])
@pytest.mark.parametrize("name", ["gaussian", "dead_duplicate", "quantised"])
def test_twin_float32_storage_without_arithmetic_is_exact_on_rounded_input(name, method):
    """No Lance-Williams arithmetic: storing in float32 == running in float64 on float32-rounded
    distances, bit for bit, ties included."""
    d = data(name, 300)
    z32, s32 = twin(d, method, F32)
    z64, s64 = twin(d.astype(np.float32).astype(np.float64), method)
    assert_bitwise(z32, z64)
    assert s32 == s64


@needs_twin
def test_twin_float32_storage_float32_input():
    d32 = data("gaussian", 200).astype(np.float32)
    for method in REDUCIBLE:
        za, _ = twin(torch.from_numpy(d32), method, F32)
        zb, _ = twin(torch.from_numpy(d32.astype(np.float64)), method, F32)
        assert_bitwise(za, zb)


@needs_twin
def test_twin_bad_storage():
    d = torch.from_numpy(data("gaussian", 10))
    with pytest.raises(ValueError, match="storage must be torch.float64 or torch.float32"):
        linkage_rounds(d, "average", torch.float16)
    torch.library.opcheck(torch.ops.simprune.linkage_rounds_cpu, (d, "ward", F32))


# ---- public API and the cpu backend (NN-chain / MST on a float32 condensed copy) ------------------------
def test_api_storage_errors():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((20, 4)))
    with pytest.raises(ValueError, match="storage must be torch.float64 or torch.float32"):
        simprune.linkage(x, "average", storage=torch.float16)
    with pytest.raises(ValueError, match="strict.*float64 storage"):
        simprune.linkage(x, "average", mode="strict", storage=F32)
    # The reference (scipy) has no float32 storage.
    with pytest.raises(BackendUnavailableError, match="use backend='cpu', 'triton' or 'cuda'"):
        simprune.linkage(x, "average", storage=F32, backend="torch")
    d = torch.from_numpy(data("gaussian", 10))
    with pytest.raises(NotImplementedError, match="scipy works in float64 only"):
        torch.ops.simprune.linkage_torch(d, "average", "exact", F32)


needs_cpu = pytest.mark.skipif(not has_kernel("linkage_cpu", "CPU"), reason="simprune._C not built")


@needs_cpu
@pytest.mark.parametrize("method", REDUCIBLE)
def test_cpu_float32_storage_gate_on_the_mixture(method):
    d = torch.from_numpy(data("mixture", 1000))
    z = simprune.linkage(d, method, storage=F32).numpy()  # auto: the cpu backend
    assert_float32_gate(z, scipy_z("mixture", 1000, method))
    z64 = simprune.linkage(d, method, backend="cpu").numpy()
    assert not np.array_equal(z[:, 2], z64[:, 2])  # not silently the float64 path


@needs_cpu
@pytest.mark.parametrize("method", ["single", "complete"])
@pytest.mark.parametrize("name", ["gaussian", "dead_duplicate", "quantised"])
def test_cpu_float32_storage_without_arithmetic_is_exact_on_rounded_input(name, method):
    d = torch.from_numpy(data(name, 300))
    z32 = simprune.linkage(d, method, storage=F32, backend="cpu").numpy()
    z64 = simprune.linkage(d.float().double(), method, backend="cpu").numpy()
    assert_bitwise(z32, z64)


@needs_cpu
@pytest.mark.parametrize("method", REDUCIBLE)
def test_cpu_float32_storage_threads_and_inputs(method, monkeypatch):
    """The parallel row scans (forced at small n) give the same Z as one thread; observations and
    float32 distances go the same way."""
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((300, 8)))
    d = torch.pdist(x)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z1 = simprune.linkage(d, method, storage=F32, backend="cpu").numpy()
        monkeypatch.setenv("SIMPRUNE_LINKAGE_PARALLEL_MIN_N", "64")
        torch.set_num_threads(2)
        z2 = simprune.linkage(d, method, storage=F32, backend="cpu").numpy()
    finally:
        torch.set_num_threads(before)
    assert_bitwise(z1, z2)
    assert_bitwise(z1, simprune.linkage(d.float(), method, storage=F32, backend="cpu").numpy())
    zx = simprune.linkage(x, method, storage=F32, backend="cpu").numpy()  # float32 distances
    np.testing.assert_allclose(np.sort(zx[:, 2]), np.sort(z1[:, 2]), rtol=1e-5)


@needs_cpu
def test_cpu_op_storage_errors():
    d = torch.from_numpy(data("gaussian", 10))
    with pytest.raises(ValueError, match="strict.*float64 storage"):
        torch.ops.simprune.linkage_cpu(d, "average", "strict", F32)
    with pytest.raises(ValueError, match="storage must be"):
        torch.ops.simprune.linkage_cpu(d, "average", "exact", torch.int32)
    # A float64 distance beyond float32's range would become Inf in float32 storage: refused.
    big = torch.tensor([1.0, 1e300, 2.0], dtype=torch.float64)
    for method in ("single", "average"):
        with pytest.raises(ValueError, match="1 Inf.*beyond float32's range"):
            torch.ops.simprune.linkage_cpu(big, method, "exact", F32)
    torch.ops.simprune.linkage_cpu(big, "average", "exact")  # fine in float64 storage
    torch.library.opcheck(torch.ops.simprune.linkage_cpu, (d, "ward", "exact", F32))


# ---- Triton under the interpreter: the twin's float32 storage, bit for bit -----------------------------
needs_interpreter = pytest.mark.skipif(
    not INTERPRET or not HAS_TWIN,
    reason="runs the Triton kernels on CPU tensors (TRITON_INTERPRET=1) against the C++ twin",
)


@needs_interpreter
@pytest.mark.parametrize("name,n", [("mixture", 150), ("channel_like", 97), ("dead_duplicate", 64)])
@pytest.mark.parametrize("method", REDUCIBLE)
def test_triton_float32_storage_same_as_twin(name, n, method):
    kl = pytest.importorskip("simprune.kernels.linkage")
    d = torch.from_numpy(data(name, n))
    for src in (d, d.to(F32)):
        z, stats = kl.linkage_rounds_triton(src, method, F32)
        zt, st_twin = twin(src, method, F32)
        assert_bitwise(z.numpy(), zt)
        assert stats.tolist() == st_twin
    if method == "single":  # the Boruvka path: heights are stored values, same multiset
        zb, _ = kl.linkage_boruvka_triton(d, F32)
        np.testing.assert_array_equal(np.sort(zb[:, 2].numpy()), np.sort(z[:, 2].numpy()))


@needs_interpreter
def test_triton_op_float32_storage_gate():
    """The op itself (what backend='triton' calls) on the mixture: the 8.3 fp32 gate vs scipy."""
    pytest.importorskip("simprune.kernels.linkage")
    d = torch.from_numpy(data("mixture", 150))
    for method in ("single", "average", "ward"):
        z = torch.ops.simprune.linkage_triton(d, method, "exact", F32).numpy()
        assert_float32_gate(z, scipy_z("mixture", 150, method), ks=(5, 20))
    with pytest.raises(ValueError, match="storage must be"):
        torch.ops.simprune.linkage_triton(d, "average", "exact", torch.float16)
    big = torch.tensor([1.0, 1e300, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="1 Inf.*beyond float32's range"):
        torch.ops.simprune.linkage_triton(big, "average", "exact", F32)


@needs_twin
@pytest.mark.parametrize("n", [2, 3, 31])
@pytest.mark.parametrize("method", REDUCIBLE)
def test_float32_storage_tiny_sizes(n, method):
    """n = 2, 3 and a prime on every implementation: the twin, the cpu backend and (under the
    interpreter) Triton; scipy's tree on these tie-free points."""
    d = data("gaussian", n)
    zt, _ = twin(d, method, F32)
    zs = scipy_z("gaussian", n, method)
    np.testing.assert_array_equal(zt[:, [0, 1, 3]], zs[:, [0, 1, 3]])
    np.testing.assert_allclose(zt[:, 2], zs[:, 2], rtol=1e-6)
    if has_kernel("linkage_cpu", "CPU"):
        zc = simprune.linkage(torch.from_numpy(d), method, storage=F32, backend="cpu").numpy()
        np.testing.assert_array_equal(zc[:, [0, 1, 3]], zs[:, [0, 1, 3]])
        np.testing.assert_allclose(zc[:, 2], zs[:, 2], rtol=1e-6)
    if INTERPRET:
        kl = pytest.importorskip("simprune.kernels.linkage")
        zk = torch.ops.simprune.linkage_triton(torch.from_numpy(d), method, "exact", F32).numpy()
        if method == "single":  # Boruvka: the same stored heights, same tree on tie-free data
            np.testing.assert_array_equal(zk, zt)
        else:
            assert_bitwise(
                zk, kl.linkage_rounds_triton(torch.from_numpy(d), method, F32)[0].numpy()
            )
            assert_bitwise(zk, zt)
