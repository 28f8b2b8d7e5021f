"""Every linkage implementation against scipy (the oracle), one matrix: backend x mode x storage x
method x data set (linkage.md 8.3).

Implementations (the ``Impl`` objects below; their skips computed from the availability flags; "auto"
is the public API's choice on a device):

=============  =======================================================================================
ref            ``backend="torch"``: scipy itself (the wiring: Z unchanged, float64, on the input's device)
cpu            ``backend="cpu"``: the C++ NN-chain / MST (exact) and scipy's algorithms (strict)
twin           ``simprune.hierarchy.linkage_rounds``: the round-synchronous CPU twin of the GPU algorithm
triton         kernels/linkage.py (exact: the round primitives; Boruvka for single) and
               kernels/linkage_strict.py (strict), on CPU tensors under ``TRITON_INTERPRET=1``
cuda           csrc/cuda (``gpu``-marked): the rounds kernel (exact), scipy replayed in one block (strict)
=============  =======================================================================================

tests/test_linkage_ref.py tests the front end (input forms, validation) and the cut helpers.

Gates: strict mode bitwise equal to scipy on every data set, ties included; exact mode with scipy's
tree on tie-free data (heights rtol 1e-12, bitwise for single/complete), the same partitions at every
cut under zero-height ties, and a valid HAC under massive ties (brute-force checker); the
implementations of the round algorithm (triton, cuda) also bitwise equal to the twin with the same
round statistics. float32 storage: the linkage.md 8.3 fp32 gate, and the twin's Z bit for bit.

Each implementation runs the sizes its cost allows (the interpreter ~0.5 ms per program: n <= 150;
single linkage and the chain need ~n/2 rounds on the twin: n <= 300; on a GPU, every code path of the
CUDA kernel: one block (n <= 512), grid-wide rounds then the hand-off (513), several compactions
(4097)). What only one backend has (memory refusals, PTX checks, primitives) is in
test_linkage_{cpu,triton,cuda,storage}.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import simprune
from simprune.backends import has_cuda_extension, has_kernel, has_triton, triton_interpret
from simprune.hierarchy import linkage_rounds
from simprune.testing import (
    DATASETS,
    REDUCIBLE,
    TIE_FREE,
    assert_accepted_by_scipy,
    assert_bitwise,
    assert_float32_gate,
    assert_same_partitions,
    assert_same_tree,
    assert_valid_hac,
)
from tests._helpers import condensed, data, scipy_z

F32, F64 = torch.float32, torch.float64

HAS_CPU = has_kernel("linkage_cpu", "CPU")
HAS_TWIN = has_kernel("linkage_rounds_cpu", "CPU")
INTERPRET = triton_interpret()
HAS_CUDA_LINKAGE = has_cuda_extension() and has_kernel("linkage_cuda", "CUDA")
ON_GPU = torch.cuda.is_available() and not INTERPRET

NO_CPU = None if HAS_CPU else "simprune._C has no linkage_cpu kernel (extension not built)"
NO_TWIN = None if HAS_TWIN else "simprune._C has no linkage_rounds_cpu kernel (extension not built)"
NO_INTERPRETER = (
    None
    if has_triton() and INTERPRET
    else "runs the Triton kernels on CPU tensors (triton installed, TRITON_INTERPRET=1)"
)
NO_CUDA = None if HAS_CUDA_LINKAGE else "simprune._C was built without the CUDA linkage kernel"
NO_TRITON_GPU = (
    None
    if has_triton() and ON_GPU
    else "Triton on the GPU (triton installed, TRITON_INTERPRET unset)"
)


# ---------------------------------------------------------------------------------------------------
# The implementations. ``run(d, method, storage)`` -> (Z as a float64 array, round statistics or None).


def _stats(stats: torch.Tensor) -> list[int]:
    assert stats.dtype == torch.int64 and stats.shape == (3,)
    return stats.cpu().tolist()


def run_ref(d, method, storage=F64):
    """backend="torch": the reference, scipy's linkage itself (exact and strict alike)."""
    z = simprune.linkage(torch.as_tensor(d), method, mode="strict", backend="torch")
    assert z.dtype == torch.float64 and z.device.type == "cpu"
    return z.numpy(), None


def run_cpu(mode: str):
    def run(d, method, storage=F64):
        z = simprune.linkage(torch.as_tensor(d), method, mode=mode, storage=storage, backend="cpu")
        assert z.dtype == torch.float64 and z.device.type == "cpu"
        return z.numpy(), None

    return run


def run_twin(d, method, storage=F64):
    z, stats = linkage_rounds(torch.as_tensor(d), method, storage)
    assert z.dtype == torch.float64
    n = z.shape[0] + 1
    r, compactions, widest = stats = _stats(stats)
    if n > 1:
        assert 1 <= r <= n - 1 and 1 <= widest <= n // 2 and compactions >= 0
    return z.numpy(), stats


def run_triton_rounds(device: str):
    def run(d, method, storage=F64):
        from simprune.kernels.linkage import linkage_rounds_triton

        d = torch.as_tensor(d).to(device)
        z, stats = linkage_rounds_triton(d, method, storage)
        assert z.dtype == torch.float64 and z.device == d.device
        return z.cpu().numpy(), _stats(stats)

    return run


def run_triton_boruvka(d, method="single", storage=F64):
    from simprune.kernels.linkage import linkage_boruvka_triton

    assert method == "single"
    z, stats = linkage_boruvka_triton(torch.as_tensor(d), storage)
    assert z.dtype == torch.float64
    return z.numpy(), None


def run_triton_strict(d, method, storage=F64):
    """Through the registered op, as backend="triton" calls it."""
    z = torch.ops.simprune.linkage_triton(torch.as_tensor(d), method, "strict")
    assert z.dtype == torch.float64 and z.device.type == "cpu"
    return z.numpy(), None


def run_cuda_rounds(d, method, storage=F64):
    dg = torch.as_tensor(d).cuda()
    z, stats = torch.ops.simprune.linkage_rounds_cuda(dg, method, storage)
    assert z.device == dg.device and z.dtype == torch.float64 and stats.device == dg.device
    return z.cpu().numpy(), _stats(stats)


def run_cuda_strict(d, method, storage=F64):
    """Through the registered op, as backend="cuda" calls it."""
    dg = torch.as_tensor(d).cuda()
    z = torch.ops.simprune.linkage_cuda(dg, method, "strict")
    assert z.device == dg.device and z.dtype == torch.float64
    return z.cpu().numpy(), None


def run_auto(device: str):
    """The public API, backend "auto", on ``device`` (float32 storage: the compiled backends)."""

    def run(d, method, storage=F64):
        d = torch.as_tensor(d).to(device)
        z = simprune.linkage(d, method, storage=storage)
        assert z.device == d.device and z.dtype == torch.float64
        return z.cpu().numpy(), None

    return run


def run_triton_op(d, method, storage=F64):
    """The exact op itself (what backend="triton" calls): the rounds, Boruvka for single."""
    z = torch.ops.simprune.linkage_triton(torch.as_tensor(d), method, "exact", storage)
    return z.numpy(), None


@dataclass(frozen=True)
class Impl:
    """One linkage implementation under test."""

    id: str
    mode: str  # "exact" | "strict"
    run: Callable
    skip: str | None  # why it cannot run here; None: it can
    gpu: bool = False
    rounds: bool = False  # the twin's algorithm: the same Z bit for bit, the same round statistics
    methods: tuple[str, ...] = REDUCIBLE
    # Sizes at which the active set halves at least once in these tests (the compaction ran).
    compacts_at: tuple[int, ...] = ()

    def marks(self) -> list:
        marks = [pytest.mark.skipif(self.skip is not None, reason=self.skip or "")]
        return marks + [pytest.mark.gpu] if self.gpu else marks


REF = Impl("ref-strict", "strict", run_ref, None)
CPU_EXACT = Impl("cpu-exact", "exact", run_cpu("exact"), NO_CPU)
CPU_STRICT = Impl("cpu-strict", "strict", run_cpu("strict"), NO_CPU)
TWIN = Impl("twin-exact", "exact", run_twin, NO_TWIN, compacts_at=(4097,))
TRITON_EXACT = Impl(
    "triton-exact",
    "exact",
    run_triton_rounds("cpu"),
    NO_INTERPRETER,
    rounds=True,
    compacts_at=(150,),
)
TRITON_BORUVKA = Impl(
    "triton-boruvka", "exact", run_triton_boruvka, NO_INTERPRETER, methods=("single",)
)
TRITON_STRICT = Impl("triton-strict", "strict", run_triton_strict, NO_INTERPRETER)
TRITON_OP = Impl("triton-op", "exact", run_triton_op, NO_INTERPRETER)
TRITON_GPU = Impl(
    "triton-gpu", "exact", run_triton_rounds("cuda"), NO_TRITON_GPU, gpu=True, rounds=True
)
CUDA_EXACT = Impl("cuda-exact", "exact", run_cuda_rounds, NO_CUDA, gpu=True, rounds=True)
CUDA_STRICT = Impl("cuda-strict", "strict", run_cuda_strict, NO_CUDA, gpu=True)
AUTO_CPU = Impl("auto-cpu", "exact", run_auto("cpu"), NO_CPU)
AUTO_CUDA = Impl("auto-cuda", "exact", run_auto("cuda"), None, gpu=True)


def cases(impl: Impl, rows) -> list:
    """pytest params (impl, *row) with the implementation's marks."""
    return [
        pytest.param(impl, *row, marks=impl.marks(), id="-".join([impl.id, *map(str, row)]))
        for row in rows
    ]


def twin_check(impl: Impl, d, method, z, stats) -> None:
    """The round algorithm's implementations give the twin's Z bit for bit and its statistics."""
    if impl.rounds and HAS_TWIN:
        zt, st_twin = run_twin(d, method)
        assert_bitwise(z, zt)
        assert stats == st_twin


# The data sets per size: n in {2, 3, 31, 1000} on every data set for the cpu backend
# (dead_duplicate needs n >= 10 to have dead and copied rows).
SIZES = [2, 3, 31, 1000]
CPU_CASES = [
    (name, n) for name in DATASETS for n in SIZES if not (name == "dead_duplicate" and n < 10)
] + [("dead_duplicate", 10)]
# Strict mode: tie-free Gaussian, channel-like near-duplicates, dead + duplicate rows (zero-height
# ties), the half-integer grid (massive ties), the 1-D chain (the longest chains). Triton: the
# interpreter's chunk width is 64, so n = 65 and 100 span two chunks. CUDA: 31 and 100 have fewer
# columns than the block's 512 threads; at 513 and 2049 a thread scans two and five columns.
STRICT_SETS = ("gaussian", "channel_like", "dead_duplicate", "quantised", "chain_1d")
TRITON_STRICT_CASES = [(s, n) for s in STRICT_SETS for n in (2, 3, 31, 65, 100)] + [
    ("dead_duplicate", 10)
]
CUDA_STRICT_CASES = [(s, n) for s in STRICT_SETS for n in (2, 3, 31, 100, 513, 2049)]
# n = 4097 on the cpu backend for a few methods and data sets (scipy itself takes seconds there).
CPU_N4097 = [
    ("gaussian", 4097, "average"),
    ("channel_like", 4097, "ward"),
    ("mixture", 4097, "single"),
    ("quantised", 4097, "complete"),
]


def with_methods(rows, methods=REDUCIBLE):
    return [(*row, m) for row in rows for m in methods]


# ---------------------------------------------------------------------------------------------------
# Strict mode: bitwise scipy, ties included.


@pytest.mark.parametrize(
    "impl,name,n,method",
    cases(REF, with_methods([(s, n) for s, n in CPU_CASES if n <= 31]))
    + cases(CPU_STRICT, with_methods(CPU_CASES) + CPU_N4097)
    + cases(TRITON_STRICT, with_methods(TRITON_STRICT_CASES))
    + cases(CUDA_STRICT, with_methods(CUDA_STRICT_CASES)),
)
def test_strict_bitwise_scipy(impl, name, n, method):
    z, _ = impl.run(data(name, n), method)
    assert_bitwise(z, scipy_z(name, n, method))


@pytest.mark.parametrize(
    "impl,name,n,method",
    cases(CPU_STRICT, with_methods([("gaussian", 200)]))
    + cases(TRITON_STRICT, with_methods([("gaussian", 31), ("quantised", 65)]))
    + cases(CUDA_STRICT, with_methods(CUDA_STRICT_CASES))
    + cases(TWIN, [("gaussian", 200, "average")])
    + cases(TRITON_EXACT, [("gaussian", 60, "average")])
    + cases(CUDA_EXACT, with_methods([("gaussian", 600)])),
)
def test_float32_input_is_widened_like_scipy(impl, name, n, method):
    """float32 distances are widened to float64 first, as scipy does: strict gives scipy's Z on the
    widened values bit for bit, exact its tree (tie-free data)."""
    d32 = data(name, n).astype(np.float32)
    z, _ = impl.run(torch.from_numpy(d32), method)
    zs = sch.linkage(d32.astype(np.float64), method)
    if impl.mode == "strict":
        assert_bitwise(z, zs)
    else:
        assert_same_tree(z, zs, method)


@pytest.mark.parametrize(
    "impl",
    cases(REF, [()])
    + cases(CPU_STRICT, [()])
    + cases(TRITON_STRICT, [()])
    + cases(CUDA_STRICT, [()]),
)
def test_strict_pinned_ties_and_signed_zero(impl):
    # Four points on a unit square (every side ties): scipy's chain starts at 0, keeps the first
    # minimal index and merges into the larger slot. Then zeros of both signs: complete/single pick
    # with Cython's min/max semantics, visible only in the sign of a zero.
    square = np.array([1.0, np.sqrt(2.0), 1.0, 1.0, np.sqrt(2.0), 1.0])  # 0-1, 0-2, 0-3, 1-2, ...
    for method in REDUCIBLE:
        z, _ = impl.run(square, method)
        assert_bitwise(z, sch.linkage(square, method))
        assert z[0, 0] == 0 and z[0, 1] == 1
        for zeros in ([-0.0, 0.0, 0.0], [0.0, -0.0, 0.0], [0.0, 0.0, -0.0], [-0.0, -0.0, 1.0]):
            zs = np.array(zeros)
            assert_bitwise(impl.run(zs, method)[0], sch.linkage(zs, method))


# ---------------------------------------------------------------------------------------------------
# Exact mode.

TWIN_TIE_FREE = [
    (s, n, method)
    for s, n in CPU_CASES + [(s, 300) for s in TIE_FREE]
    if s in TIE_FREE
    for method in REDUCIBLE
    # single linkage and the 1-D chain need many rounds (n/2 and more, linkage.md 7.2): at n = 1000
    # they cost seconds here, so they run at n <= 300 (the chain's worst case has its own test).
    if n < 1000 or (method != "single" and s != "chain_1d")
] + [("gaussian", 4097, "average"), ("channel_like", 4097, "ward")]
TRITON_TIE_FREE = with_methods(
    [(s, n) for s in ("gaussian", "mixture", "channel_like") for n in (2, 3, 31, 150)]
    + [("chain_1d", n) for n in (31, 100)]
)
CUDA_TIE_FREE = with_methods(
    [(s, n) for s in ("gaussian", "mixture", "channel_like") for n in (2, 3, 31, 512, 513, 1000)]
    + [("chain_1d", n) for n in (513, 2000)]
    + [("gaussian", 4097)]  # several compactions and the hand-off after them
)


@pytest.mark.parametrize(
    "impl,name,n,method",
    cases(CPU_EXACT, with_methods([(s, n) for s, n in CPU_CASES if s in TIE_FREE]))
    + cases(CPU_EXACT, [row for row in CPU_N4097 if row[0] in TIE_FREE])
    + cases(TWIN, TWIN_TIE_FREE)
    + cases(TRITON_EXACT, TRITON_TIE_FREE)
    + cases(CUDA_EXACT, CUDA_TIE_FREE),
)
def test_exact_tie_free_same_tree(impl, name, n, method):
    d = data(name, n)
    z, stats = impl.run(d, method)
    assert_same_tree(z, scipy_z(name, n, method), method)
    assert_accepted_by_scipy(z, n)
    twin_check(impl, d, method, z, stats)
    if n in impl.compacts_at:
        assert stats[1] >= 1  # the active count halved at least once: the compaction ran


@pytest.mark.parametrize(
    "impl,n,method",
    cases(CPU_EXACT, with_methods([(31,), (1000,)]))
    + cases(TWIN, with_methods([(31,), (1000,)]))
    + cases(TRITON_EXACT, with_methods([(10,), (120,)]))
    + cases(CUDA_EXACT, with_methods([(31,), (1000,)])),
)
def test_exact_zero_height_ties_same_partitions(impl, n, method):
    d = data("dead_duplicate", n)
    z, stats = impl.run(d, method)
    assert_same_partitions(z, scipy_z("dead_duplicate", n, method))
    assert_accepted_by_scipy(z, n)
    twin_check(impl, d, method, z, stats)


@pytest.mark.parametrize(
    "impl,n,method",
    cases(CPU_EXACT, with_methods([(31,), (300,)]))
    + cases(TWIN, with_methods([(31,), (300,)]))
    + cases(TRITON_EXACT, with_methods([(90,)]))
    + cases(CUDA_EXACT, with_methods([(300,)])),
)
def test_exact_massive_ties_valid(impl, n, method):
    d = data("quantised", n)
    z, stats = impl.run(d, method)
    assert_valid_hac(z, d, method)
    if method == "single":  # the MST weight multiset is unique
        zs = scipy_z("quantised", n, method)
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(zs[:, 2]))
    twin_check(impl, d, method, z, stats)


@pytest.mark.parametrize("impl,n", cases(TWIN, [(1000,)]) + cases(TRITON_EXACT, [(100,)]))
def test_chain_needs_n_over_2_rounds(impl, n):
    # Gaps growing along a line: only the closest end pair is reciprocal at first, so about n/2
    # rounds (linkage.md 7.2).
    z, stats = impl.run(data("chain_1d", n), "complete")
    assert stats[0] >= n // 2 - 1
    assert_same_tree(z, scipy_z("chain_1d", n, "complete"), "complete")


@pytest.mark.parametrize(
    "impl,n",
    cases(CPU_EXACT, [(2,), (3,), (31,), (1000,), (4097,)])
    + cases(CPU_STRICT, [(31,), (1000,)])
    + cases(AUTO_CPU, [(1000,)])
    + cases(TWIN, [(31,), (300,)])
    + cases(TRITON_OP, [(31,), (150,)])
    + cases(TRITON_STRICT, [(65,)])
    + cases(AUTO_CUDA, [(31,), (513,), (4097,)])
    + cases(CUDA_STRICT, [(513,)]),
)
def test_single_linkage_geometric_chain(impl, n):
    # Gaps shrinking geometrically along a line (simprune.testing.chain_geometric): every point's
    # nearest neighbour is the next one, so Boruvka's first iteration hooks all points into one chain
    # of n - 1 edges (resolved by pointer doubling in ceil(log2 n) steps; a serial walk up the parent
    # pointers is O(n) per thread), and the rounds merge one pair per round. The MST is unique:
    # scipy's Z bit for bit, on every backend (the CUDA path: Boruvka, through the public API).
    z, stats = impl.run(data("chain_geometric", n), "single")
    assert_bitwise(z, scipy_z("chain_geometric", n, "single"))
    if impl is TWIN:
        assert stats[0] == n - 1  # one reciprocal pair per round: the closest, at the end


# ---------------------------------------------------------------------------------------------------
# Threads: the parallel loops (forced at small n) give the one-thread result, ties included (the
# combine of partial argmins must keep scipy's rule).


@pytest.mark.parametrize(
    "impl,n,parallel_min_n,method",
    cases(CPU_STRICT, with_methods([(1200, "64")])) + cases(TWIN, with_methods([(700, "16")])),
)
def test_thread_count_does_not_change_the_result(impl, n, parallel_min_n, method, monkeypatch):
    monkeypatch.setenv("SIMPRUNE_LINKAGE_PARALLEL_MIN_N", parallel_min_n)
    d = data("quantised", n)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z1, s1 = impl.run(d, method)
        torch.set_num_threads(2)
        z2, s2 = impl.run(d, method)
    finally:
        torch.set_num_threads(before)
    assert_bitwise(z1, z2)
    assert s1 == s2
    if impl.mode == "strict":
        assert_bitwise(z2, sch.linkage(d, method))


# ---------------------------------------------------------------------------------------------------
# Property tests: arbitrary small inputs (n <= 24), ties included (integer grid points) or arbitrary
# non-negative floats.


@pytest.mark.parametrize(
    "impl,max_examples",
    cases(REF, [(50,)])
    + cases(CPU_STRICT, [(150,)])
    + cases(CPU_EXACT, [(150,)])
    + cases(TWIN, [(150,)])
    + cases(TRITON_EXACT, [(25,)])
    + cases(TRITON_BORUVKA, [(40,)])
    + cases(TRITON_STRICT, [(40,)])
    + cases(CUDA_STRICT, [(60,)]),
)
def test_property_strict_is_scipy_and_exact_is_valid(impl, max_examples):
    @settings(max_examples=max_examples, deadline=None)
    @given(case=condensed(), method=st.sampled_from(impl.methods))
    def check(case, method):
        d, euclidean = case
        assume(euclidean or method != "ward")  # ward's update assumes Euclidean distances
        z, stats = impl.run(d, method)
        if impl.mode == "strict":
            assert_bitwise(z, sch.linkage(d, method))
            return
        assert_accepted_by_scipy(z, z.shape[0] + 1)
        assert_valid_hac(z, d, method)
        if method == "single":  # the MST weight multiset is unique
            np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(sch.linkage(d, method)[:, 2]))
        twin_check(impl, d, method, z, stats)

    check()


# Squared distances (condensed, n = 19, points of an integer grid with duplicates) of the case
# hypothesis found: ward merges a parent 1 ulp below its child (sqrt(3) computed two ways).
WARD_ULP_INVERSION = [
    0,
    13,
    0,
    0,
    0,
    14,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    13,
    0,
    0,
    0,
    14,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    13,
    13,
    13,
    3,
    13,
    13,
    13,
    13,
    2,
    13,
    2,
    2,
    2,
    13,
    13,
    13,
    0,
    0,
    14,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    0,
    14,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    14,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    14,
    14,
    14,
    14,
    1,
    14,
    1,
    1,
    1,
    14,
    14,
    14,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    19,
    0,
    19,
    9,
    19,
    0,
    0,
    0,
    19,
    0,
    2,
    0,
    19,
    19,
    19,
    19,
    9,
    19,
    0,
    0,
    0,
    2,
    0,
    19,
    19,
    19,
    2,
    9,
    9,
    9,
    19,
    19,
    19,
    0,
    0,
    0,
]


@pytest.mark.parametrize(
    "impl", cases(TWIN, [()]) + cases(TRITON_EXACT, [()]) + cases(CPU_EXACT, [()])
)
def test_ward_parent_one_ulp_below_its_child_is_a_valid_tree(impl):
    """linkage.md 1.3: rows sorted by the guarded height, column 2 the true one -- the parent stays
    after its child although 1 ulp lower; the tree is the valid ward hierarchy and the twin's."""
    d = np.sqrt(np.asarray(WARD_ULP_INVERSION, dtype=np.float64))
    z, stats = impl.run(d, "ward")
    assert_accepted_by_scipy(z, 19)
    assert_valid_hac(z, d, "ward")
    twin_check(impl, d, "ward", z, stats)


# ---------------------------------------------------------------------------------------------------
# float32 storage (linkage(..., storage=torch.float32)): Lance-Williams in float64 from the stored
# values, every stored value rounded to float32 -- the same on every implementation of one algorithm.


@pytest.mark.parametrize(
    "impl,n,method",
    cases(TWIN, with_methods([(1000,)]))
    + cases(AUTO_CPU, with_methods([(1000,)]))  # auto: the cpu backend
    + cases(TRITON_OP, with_methods([(150,)], ("single", "average", "ward")))
    + cases(AUTO_CUDA, with_methods([(1000,)])),
)
def test_float32_storage_gate_on_the_mixture(impl, n, method):
    """The linkage.md 8.3 fp32 gate: heights rtol 1e-5, identical flat clusters at each k (k = 100
    from n = 1000 on)."""
    d = torch.from_numpy(data("mixture", n))
    z, _ = impl.run(d, method, F32)
    assert_float32_gate(z, scipy_z("mixture", n, method), (5, 20, 100) if n >= 1000 else (5, 20))
    # And it is not silently the float64 path: some height differs from the float64 one.
    z64, _ = impl.run(d, method, F64)
    assert not np.array_equal(z[:, 2], z64[:, 2])


@pytest.mark.parametrize(
    "impl,name,method",
    cases(
        TWIN,
        with_methods(
            [(s,) for s in ("gaussian", "dead_duplicate", "quantised")], ("single", "complete")
        ),
    )
    + cases(
        CPU_EXACT,
        with_methods(
            [(s,) for s in ("gaussian", "dead_duplicate", "quantised")], ("single", "complete")
        ),
    ),
)
def test_float32_storage_without_arithmetic_is_exact_on_rounded_input(impl, name, method):
    """single and complete do no Lance-Williams arithmetic: storing in float32 == running in float64
    on float32-rounded distances, bit for bit, ties included."""
    d = data(name, 300)
    z32, s32 = impl.run(d, method, F32)
    z64, s64 = impl.run(d.astype(np.float32).astype(np.float64), method)
    assert_bitwise(z32, z64)
    assert s32 == s64


def run_cuda_single(d, storage):
    return torch.ops.simprune.linkage_cuda(d.cuda(), "single", "exact", storage).cpu().numpy()


def run_triton_single(d, storage):
    return run_triton_boruvka(d, "single", storage)[0]


# Single linkage's MST path, by name (pytest ids stay readable).
MST = {"boruvka": run_triton_single, "cuda-single": run_cuda_single, "none": None}
# The inputs each case runs: float64 distances, and where named float32 ones too.
INPUTS = {"f64-input": (F64,), "f64+f32-input": (F64, F32)}


@pytest.mark.parametrize(
    "impl,name,n,inputs,mst,method",
    cases(
        TRITON_EXACT,
        with_methods(
            [
                (s, n, "f64+f32-input", "boruvka")
                for s, n in (("mixture", 150), ("channel_like", 97), ("dead_duplicate", 64))
            ]
        ),
    )
    + cases(
        CUDA_EXACT,
        with_methods(
            [
                (s, n, "f64-input", "cuda-single")
                for s, n in (
                    ("mixture", 1000),
                    ("gaussian", 4097),
                    ("dead_duplicate", 600),
                    ("quantised", 300),
                )
            ]
        ),
    )
    + cases(TRITON_GPU, with_methods([("channel_like", 1000, "f64-input", "none")])),
)
def test_float32_storage_same_as_twin(impl, name, n, inputs, mst, method):
    """The twin's float32 storage, bit for bit, with the same round statistics (on float64 and,
    where named, float32 input); single linkage's MST path (``mst``) stores the same heights."""
    d = torch.from_numpy(data(name, n))
    for dtype in INPUTS[inputs]:
        z, stats = impl.run(d.to(dtype), method, F32)
        zt, st_twin = run_twin(d.to(dtype), method, F32)
        assert_bitwise(z, zt)
        assert stats == st_twin
    if method == "single" and MST[mst] is not None:  # heights are stored values: the same multiset
        np.testing.assert_array_equal(np.sort(MST[mst](d, F32)[:, 2]), np.sort(zt[:, 2]))


# ---------------------------------------------------------------------------------------------------
# The raw ops: bad input gets a clear error naming the problem; tiny inputs; opcheck.


def op_cpu(d, method, mode, *storage):
    return torch.ops.simprune.linkage_cpu(d, method, mode, *storage), None


def op_twin(d, method, mode, *storage):
    assert mode == "exact"
    z, stats = torch.ops.simprune.linkage_rounds_cpu(d, method, *storage)
    return z, stats.tolist()


def op_triton(d, method, mode, *storage):
    return torch.ops.simprune.linkage_triton(d, method, mode, *storage), None


def op_triton_rounds(d, method, mode, *storage):
    from simprune.kernels.linkage import linkage_rounds_triton

    assert mode == "exact"
    z, stats = linkage_rounds_triton(d, method, *storage)
    return z, stats.tolist()


def op_cuda(d, method, mode, *storage):
    z = torch.ops.simprune.linkage_cuda(d.cuda(), method, mode, *storage)
    assert z.is_cuda
    return z, None


OPS = [  # (id, call, modes, skip, gpu)
    ("cpu", op_cpu, ("exact", "strict"), NO_CPU, False),
    ("twin", op_twin, ("exact",), NO_TWIN, False),
    ("triton", op_triton, ("exact", "strict"), NO_INTERPRETER, False),
    ("cuda", op_cuda, ("exact", "strict"), NO_CUDA, True),
]


def op_params(ops=OPS, modes=("exact", "strict")) -> list:
    out = []
    for name, call, op_modes, skip, gpu in ops:
        marks = [pytest.mark.skipif(skip is not None, reason=skip or "")]
        marks += [pytest.mark.gpu] if gpu else []
        out += [
            pytest.param(call, mode, marks=marks, id=f"{name}-{mode}")
            for mode in op_modes
            if mode in modes
        ]
    return out


T = torch.tensor
BAD_INPUT = [  # (id, d, method (None: every reducible one), storage or None, error, match)
    ("nan", T([1.0, float("nan"), 2.0]), None, None, ValueError, "NaN"),
    ("inf", T([1.0, float("inf"), 2.0]), None, None, ValueError, "Inf"),
    ("negative", T([1.0, -0.5, 2.0]), None, None, ValueError, "non-negative"),
    ("length-2", T([1.0, 2.0]), None, None, ValueError, r"n\(n-1\)/2"),
    ("length-4", torch.ones(4, dtype=F64), None, None, ValueError, r"n\(n-1\)/2"),
    ("2d", torch.zeros(3, 3, dtype=F64), None, None, ValueError, "1-D condensed"),
    ("int", T([1, 1, 2]), None, None, TypeError, "float32 or float64"),
    ("nope", T([1.0, 1.0, 2.0]), "nope", None, ValueError, "unknown linkage method"),
    ("avg", T([1.0, 1.0, 2.0]), "avg", None, ValueError, "unknown linkage method"),
    ("centroid", T([1.0, 1.0, 2.0]), "centroid", None, NotImplementedError, "centroid"),
    ("median", T([1.0, 1.0, 2.0]), "median", None, NotImplementedError, "median"),
    # Storage dtypes (exact mode; strict takes float64 storage only, tested below).
    ("storage-f16", T([1.0, 1.0, 2.0]), None, torch.float16, ValueError, "storage must be"),
    ("storage-i32", T([1.0, 1.0, 2.0]), None, torch.int32, ValueError, "storage must be"),
]


def bad_input_params() -> list:
    return [
        pytest.param(*p.values, case, marks=p.marks, id=f"{p.id}-{case[0]}")
        for p in op_params()
        for case in BAD_INPUT
        if case[3] is None or p.values[1] == "exact"
    ]


@pytest.mark.parametrize("op,mode,case", bad_input_params())
def test_raw_op_bad_input(op, mode, case):
    _, d, method, storage, error, match = case
    for m in REDUCIBLE if method is None else (method,):
        with pytest.raises(error, match=match):
            op(d, m, mode, *([] if storage is None else [storage]))


@pytest.mark.parametrize("op,mode", op_params(modes=("strict",)))
def test_raw_op_strict_needs_float64_storage(op, mode):
    d = torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="strict.*float64 storage"):
        op(d, "average", "strict", F32)
    z, _ = op(d, "average", "strict", F64)
    assert_bitwise(z.cpu().numpy(), sch.linkage(d.numpy(), "average"))


@pytest.mark.parametrize("op,mode", op_params([o for o in OPS if o[0] != "twin"], ("exact",)))
def test_raw_op_unknown_mode(op, mode):
    with pytest.raises(ValueError, match="unknown mode"):
        op(torch.tensor([1.0, 1.0, 2.0]), "average", "fast")


@pytest.mark.parametrize("method", ["single", "average"])
@pytest.mark.parametrize("op,mode", op_params(OPS, ("exact",)))
def test_raw_op_float32_storage_refuses_values_beyond_float32(op, mode, method):
    big = torch.tensor([1.0, 1e300, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="1 Inf.*beyond float32's range"):
        op(big, method, mode, F32)
    op(big, method, mode)  # fine in float64 storage


@pytest.mark.parametrize(
    "op,mode",
    op_params()
    + op_params([("triton-rounds", op_triton_rounds, ("exact",), NO_INTERPRETER, False)]),
)
def test_raw_op_tiny_inputs(op, mode):
    for method in ("average", "ward"):
        z, stats = op(torch.zeros(0, dtype=F64), method, mode)
        assert z.shape == (0, 4) and z.dtype == torch.float64
        assert stats in (None, [0, 0, 0])
    z, _ = op(torch.tensor([2.5], dtype=F64), "ward", mode)
    assert z.cpu().tolist() == [[0.0, 1.0, 2.5, 2.0]]
    # A tie: scipy's choice in strict mode, a valid one in exact mode.
    d = torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    z, _ = op(d, "average", mode)
    if mode == "strict":
        assert z.cpu().tolist() == [[0.0, 1.0, 1.0, 2.0], [2.0, 3.0, 1.5, 3.0]]
        assert_bitwise(z.cpu().numpy(), sch.linkage(d.numpy(), "average"))
    else:
        assert_valid_hac(z.cpu().numpy(), d.numpy(), "average")


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(name, marks=p.marks, id=name)
        for name, p in zip(
            ("cpu", "triton", "cuda"),
            op_params([o for o in OPS if o[0] != "twin"], ("strict",)),
            strict=True,
        )
    ],
)
def test_api_refuses_strict_with_float32_storage(backend):
    d = torch.tensor([1.0, 1.0, 2.0], dtype=F64, device="cuda" if backend == "cuda" else "cpu")
    with pytest.raises(ValueError, match="strict.*float64 storage"):
        simprune.linkage(d, "average", mode="strict", storage=F32, backend=backend)


def _gaussian(n):
    return torch.from_numpy(data("gaussian", n))


def _quantised(n):
    return torch.from_numpy(data("quantised", n))


def opcheck_params():
    """(id, op name, args thunk, skip, gpu) per opcheck call."""
    rows = []
    for method in REDUCIBLE:
        for mode in ("exact", "strict"):
            rows.append(
                (
                    f"cpu-{method}-{mode}",
                    "linkage_cpu",
                    lambda m=method, o=mode: (_gaussian(12), m, o),
                    NO_CPU,
                    False,
                )
            )
        rows.append(
            (
                f"twin-{method}",
                "linkage_rounds_cpu",
                lambda m=method: (_gaussian(12), m),
                NO_TWIN,
                False,
            )
        )
    rows += [
        ("cpu-float32-input", "linkage_cpu", lambda: (_gaussian(12).float(), "average", "exact"), NO_CPU, False),
        ("cpu-float32-storage", "linkage_cpu", lambda: (_gaussian(10), "ward", "exact", F32), NO_CPU, False),
        ("twin-float32-storage", "linkage_rounds_cpu", lambda: (_gaussian(10), "ward", F32), NO_TWIN, False),
        ("triton-ward-exact", "linkage_triton", lambda: (_gaussian(12), "ward", "exact"), NO_INTERPRETER, False),
        ("triton-single-strict", "linkage_triton", lambda: (_quantised(12), "single", "strict"), NO_INTERPRETER, False),
        ("triton-ward-strict", "linkage_triton", lambda: (_quantised(12), "ward", "strict"), NO_INTERPRETER, False),
        ("cuda-average-exact", "linkage_cuda", lambda: (_gaussian(40).cuda(), "average", "exact"), NO_CUDA, True),
        ("cuda-rounds-ward", "linkage_rounds_cuda", lambda: (_gaussian(40).cuda(), "ward"), NO_CUDA, True),
        ("cuda-single-strict", "linkage_cuda", lambda: (_quantised(12).cuda(), "single", "strict"), NO_CUDA, True),
        ("cuda-ward-strict", "linkage_cuda", lambda: (_quantised(12).cuda(), "ward", "strict"), NO_CUDA, True),
    ]  # fmt: skip
    out = []
    for id_, op, args, skip, gpu in rows:
        marks = [pytest.mark.skipif(skip is not None, reason=skip or "")]
        marks += [pytest.mark.gpu] if gpu else []
        out.append(pytest.param(op, args, marks=marks, id=id_))
    return out


@pytest.mark.parametrize("op,args", opcheck_params())
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.simprune, op), args())
