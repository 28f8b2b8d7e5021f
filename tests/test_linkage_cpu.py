"""What only the C++ CPU linkage (backend="cpu": NN-chain and MST) has: its public-API input forms and
errors, n = 4097 under massive ties, and the shared C++ header compiled for the device.

The gates against scipy (strict bitwise, exact tree / partitions / valid HAC, float32 input, threads,
properties, the raw op's errors, opcheck) are in tests/test_linkage_matrix.py, with every backend.
"""

from __future__ import annotations

import pytest
import scipy.cluster.hierarchy as sch
import scipy.spatial.distance as ssd
import torch

import simprune
from simprune.backends import has_kernel
from simprune.testing import REDUCIBLE, assert_bitwise
from tests._helpers import data

HAS_CPU = has_kernel("linkage_cpu", "CPU")
needs_cpu = pytest.mark.skipif(
    not HAS_CPU,
    reason="simprune._C has no linkage_cpu kernel (extension not built, or compiled with a C++ "
    "standard older than C++20, which torch's headers need)",
)
pytestmark = needs_cpu


def test_n4097_massive_ties_exact_is_valid():
    # (The strict mode and the tie-free data sets at n = 4097: test_linkage_matrix.py.)
    d = data("quantised", 4097)
    z = simprune.linkage(torch.from_numpy(d), "complete", backend="cpu").numpy()
    assert sch.is_valid_linkage(z)


@pytest.mark.parametrize("method", REDUCIBLE)
def test_observations_and_square_input(method, rng):
    x = torch.from_numpy(rng.standard_normal((57, 6)))
    d = simprune.pairwise_distance(x, metric="euclidean", condensed=True, out_dtype=torch.float64)
    zs = sch.linkage(d.numpy(), method)
    assert_bitwise(simprune.linkage(x, method, mode="strict", backend="cpu").numpy(), zs)
    sq = torch.from_numpy(ssd.squareform(d.numpy()))
    z_sq = simprune.linkage(sq, method, precomputed=True, mode="strict", backend="cpu")
    assert_bitwise(z_sq.numpy(), zs)


def test_n1_gives_empty_z():
    z = simprune.linkage(torch.zeros(1, 3), "average", backend="cpu")
    assert z.shape == (0, 4) and z.dtype == torch.float64


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the problem, through the API (the raw op: test_linkage_matrix.py).


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([1.0, float("nan"), 2.0]), "NaN"),
        (torch.tensor([1.0, float("inf"), 2.0]), "Inf"),
        (torch.tensor([1.0, -0.5, 2.0]), "non-negative"),
        (torch.tensor([1.0, 2.0]), r"n\(n-1\)/2"),
    ],
)
def test_bad_condensed_input(bad, match):
    with pytest.raises(ValueError, match=match):
        simprune.linkage(bad, "average", backend="cpu")


def test_bad_input_api():
    with pytest.raises(ValueError, match="0 observations"):
        simprune.linkage(torch.zeros(0, 3), "average", backend="cpu")
    with pytest.raises(ValueError, match=r"\(n, n\)"):
        simprune.linkage(torch.zeros(3, 4), "average", precomputed=True, backend="cpu")


@pytest.mark.parametrize("method", ["centroid", "median"])
def test_non_reducible_methods(method, monkeypatch):
    d = torch.from_numpy(data("gaussian", 31))
    with pytest.raises(simprune.BackendUnavailableError, match=method):
        simprune.linkage(d, method, backend="cpu")
    monkeypatch.delenv("SIMPRUNE_BACKEND", raising=False)
    z = simprune.linkage(d, method)  # auto falls back to the reference (scipy)
    assert_bitwise(z.numpy(), sch.linkage(d.numpy(), method))


# ---------------------------------------------------------------------------------------------------
# The shared header is device code too: nvcc must compile it, with no fused multiply-add.

_HD_PROBE = r"""
#include "simprune/linkage_common.h"
using namespace simprune::linkage;
__global__ void probe(double* o, double* Z, int64_t* parent, int64_t* size, int64_t n) {
  o[3] = lance_williams<kWard>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams(kAverage, o[0], o[1], o[2], 1, 2, 3)
       + lance_williams<kWeighted>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams<kCentroid>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams<kMedian>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams_pair<kComplete>(o[0], o[1], o[2], o[0], o[1], o[2], 1, 1, 1, 1);
  int64_t y = 0;
  double cur = 0;
  chain_pick(true, 1, o[0], o[1], 2, &y, &cur);
  o[4] = cur + (nn_better(o[0], 1, o[1], 2) ? 1.0 : 0.0) + effective_height(o[0], o[1], o[2]);
  label(Z, n, parent, size);
}
"""


def test_shared_header_compiles_for_the_device(tmp_path):
    import os
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    inc = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "include"
    )
    src = tmp_path / "probe.cu"
    src.write_text(_HD_PROBE)
    ptx = tmp_path / "probe.ptx"
    out = subprocess.run(
        [nvcc, "-std=c++20", "-arch=sm_90", "-I", inc, "-ptx", str(src), "-o", str(ptx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = ptx.read_text()
    # Explicitly rounded operations only: ptxas never contracts those into an FMA.
    assert "fma.rn.f64" not in text
    assert "mul.rn.f64" in text and "sqrt.rn.f64" in text and "div.rn.f64" in text


# ---------------------------------------------------------------------------------------------------
# Memory: a job that cannot fit is refused up front, naming needed vs available bytes (as the CUDA
# path does), before any O(n^2) allocation -- never the allocator's raw "can't allocate memory".
# No test allocates: the host's available bytes are patched, or n is far beyond any machine.


def test_available_host_bytes_is_plausible():
    from simprune._checks import available_host_bytes

    avail = available_host_bytes()
    assert avail is None or 0 < avail < 1 << 50


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_memory_refusal_names_needed_and_available_bytes(backend, monkeypatch):
    import simprune._checks
    import simprune.hierarchy

    monkeypatch.setattr(simprune._checks, "available_host_bytes", lambda: 10**9)

    def no_distances(*args, **kwargs):
        raise AssertionError("the distances were computed before the memory check")

    monkeypatch.setattr(simprune.hierarchy, "pairwise_distance", no_distances)
    n = 200_000
    m = n * (n - 1) // 2
    with pytest.raises(torch.OutOfMemoryError) as e:
        simprune.linkage(torch.randn(n, 2), "average", backend=backend)
    msg = str(e.value)
    assert f"n = {n} needs " in msg and "only 1000000000 bytes are available" in msg
    need = int(msg.split(" needs ")[1].split()[0])
    assert need >= 2 * 8 * m  # the float64 distances and a float64 working copy
    assert f"condensed distances, {8 * m} bytes" in msg
    assert ("storage=torch.float32 would halve it" in msg) == (backend == "cpu")
    if backend == "cpu":  # float32 storage: both buffers halve
        with pytest.raises(torch.OutOfMemoryError, match=f" needs {2 * 4 * m + 256 * n} bytes"):
            simprune.linkage(torch.randn(n, 2), "average", storage=torch.float32, backend="cpu")
    # Condensed input: only the working copy (single linkage reads float64 input in place).
    d = torch.zeros(1, dtype=torch.float64).expand(m)  # no real allocation
    with pytest.raises(torch.OutOfMemoryError, match=f" needs {8 * m + 256 * n} bytes"):
        simprune.linkage(d, "average", backend="cpu")
    monkeypatch.setattr(simprune._checks, "available_host_bytes", lambda: 10**12)
    small = simprune.linkage(torch.pdist(torch.randn(50, 2)), "average", backend="cpu")  # it fits
    assert small.shape == (49, 4)


def test_memory_refusal_beyond_any_machine():
    # n = 3e6 observations (24 MB): ~72 TB of distances and working copy, refused on any host.
    with pytest.raises(torch.OutOfMemoryError, match="bytes of host memory"):
        simprune.linkage(torch.zeros(3_000_000, 1), "average", backend="cpu")


@pytest.mark.parametrize(
    "op,what",
    [
        ("linkage_cpu", "condensed working copy"),
        ("linkage_rounds_cpu", "square matrix"),
    ],
)
def test_compiled_ops_refuse_before_allocating(op, what):
    """The C++ ops check too (simprune::check_host_memory, host_common.h), before the working copy:
    a stride-0 condensed vector of n = 3e6 (36 TB as float64) costs nothing to pass."""
    if not has_kernel(f"{op}", "CPU"):
        pytest.skip(f"simprune._C has no {op}")
    n = 3_000_000
    d = torch.zeros(1, dtype=torch.float64).expand(n * (n - 1) // 2)
    fn = getattr(torch.ops.simprune, op)
    args = (d, "average", "exact") if op == "linkage_cpu" else (d, "average")
    with pytest.raises(torch.OutOfMemoryError, match=f"simprune::{op}: n = {n} needs .*{what}"):
        fn(*args)
    with pytest.raises(torch.OutOfMemoryError, match="float32"):
        fn(*args, torch.float32)
