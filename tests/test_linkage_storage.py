"""float32 storage of the linkage matrix (``linkage(..., storage=torch.float32)``, linkage.md 7.3 / 8.3):
what is not in tests/test_linkage_matrix.py's float32-storage section.

The contract: Lance-Williams is evaluated in float64 from the stored values and every stored value is
rounded to float32, the same on every implementation of one algorithm -- the round-synchronous CPU
twin (``linkage_rounds``), the Triton round primitives and the CUDA kernel give the same Z bit for bit;
the cpu backend (the NN-chain) stores its condensed copy the same way. Against scipy (float64): heights
within rtol 1e-5 and identical flat clusters at k in {5, 20, 100} on the Gaussian mixture (the
linkage.md 8.3 gate, simprune.testing.assert_float32_gate). single and complete do no arithmetic:
their float32-storage Z is the float64 algorithm's on the float32-rounded distances, exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch

import simprune
from simprune.backends import BackendUnavailableError, has_kernel, has_triton, triton_interpret
from simprune.hierarchy import linkage_rounds
from simprune.testing import REDUCIBLE, assert_bitwise
from tests._helpers import data, scipy_z

HAS_TWIN = has_kernel("linkage_rounds_cpu", "CPU")
INTERPRET = has_triton() and triton_interpret()
needs_twin = pytest.mark.skipif(not HAS_TWIN, reason="simprune._C (linkage_rounds_cpu) not built")
F32 = torch.float32


def twin(d, method, storage=torch.float64):
    z, stats = linkage_rounds(torch.as_tensor(d), method, storage)
    return z.numpy(), stats.tolist()


@needs_twin
@pytest.mark.parametrize("name", ["gaussian", "channel_like"])
@pytest.mark.parametrize("method", REDUCIBLE)
def test_twin_float32_storage_heights_close_to_scipy(name, method):
    z, _ = twin(data(name, 400), method, F32)
    zs = scipy_z(name, 400, method)
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(zs[:, 2]), rtol=1e-5, atol=0)
    sch.is_valid_linkage(z, throw=True)


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


# ---- every implementation at tiny sizes ------------------------------------------------------------
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


# ---- the values check of the Triton path (kernels/linkage.py check_values; the CUDA op's twin is
# csrc/cuda/linkage.cpp check_values): no O(n^2) temporary on the way to float32 storage -------------


def _linkage_module():
    if not has_triton():
        pytest.skip("triton not installed")
    import simprune.kernels.linkage as kl

    return kl


def test_range_check_makes_no_full_size_temporary(monkeypatch):
    """The check used to build abs(d) (a full copy of the condensed matrix) on the path meant to
    save memory; now one min/max reduction decides: no op output is larger than a few elements."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    kl = _linkage_module()

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            Largest.largest = max([Largest.largest, *sizes])
            return out

    d = torch.from_numpy(data("gaussian", 300))  # float64, 44,850 distances
    for storage in (torch.float64, F32):
        with Largest():
            kl.check_values(d, "op", storage)
    assert Largest.largest <= 2
    # A failing input is counted in slices (here of 64 elements): still nothing full-size.
    bad = d.clone()
    bad[7] = 1e39
    monkeypatch.setattr(kl, "COUNT_CHUNK", 64)
    Largest.largest = 0
    with Largest(), pytest.raises(ValueError, match="1 Inf.*beyond float32's range"):
        kl.check_values(bad, "op", F32)
    assert Largest.largest == 64


def test_range_check_fires_and_counts_exactly(monkeypatch):
    kl = _linkage_module()
    monkeypatch.setattr(kl, "COUNT_CHUNK", 7)  # many slices: the counts must add up across them
    top = float(np.finfo(np.float32).max)
    above = float(np.nextafter(top, np.inf))
    d = torch.ones(100, dtype=torch.float64)
    d[5] = top
    kl.check_values(d, "op", F32)  # float32's largest value itself is fine
    d[[3, 50, 99]] = above
    with pytest.raises(ValueError, match="0 NaN and 3 Inf.*3.4e38"):
        kl.check_values(d, "op", F32)
    kl.check_values(d, "op", torch.float64)  # fine in float64 storage
    kl.check_values(d.float(), "op", F32)  # float32 input: nothing to check against the range
    d[[10, 20]] = float("nan")
    d[30] = -float("inf")
    with pytest.raises(ValueError, match="2 NaN and 4 Inf"):
        kl.check_values(d, "op", F32)
    e = torch.ones(100, dtype=torch.float64)
    e[[0, 8, 16, 17]] = -1.0
    e[9] = -0.0  # a signed zero is non-negative
    with pytest.raises(ValueError, match="found 4 negative"):
        kl.check_values(e, "op")
    e[[0, 8, 16, 17]] = 0.0
    kl.check_values(e, "op")


@pytest.mark.skipif(not INTERPRET, reason="runs the Triton kernels (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("method", ["single", "average"])
def test_triton_float32_storage_of_float64_input_unchanged(method):
    """float64 input into float32 storage gives the float32 input's Z, bit for bit (the check does
    not touch the values), and refuses a value beyond float32's range."""
    d = data("gaussian", 60)
    z64 = torch.ops.simprune.linkage_triton(torch.from_numpy(d), method, "exact", F32).numpy()
    d32 = torch.from_numpy(d.astype(np.float32))
    z32 = torch.ops.simprune.linkage_triton(d32, method, "exact", F32).numpy()
    assert_bitwise(z64, z32)
    big = torch.from_numpy(d.copy())
    big[11] = 1e39
    with pytest.raises(ValueError, match="1 Inf"):
        torch.ops.simprune.linkage_triton(big, method, "exact", F32)
