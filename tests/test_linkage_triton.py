"""Triton linkage (kernels/linkage.py): the round primitives under the interpreter, against the CPU
twin (same algorithm: bitwise equal Z and the same round statistics) and scipy (the oracle).

The interpreter costs ~0.5 ms per program, so n stays <= 150 here (the chain needs n/2 rounds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import simprune
from simprune.backends import has_kernel
from simprune.hierarchy import linkage_rounds
from tests.test_linkage_cpu import (
    REDUCIBLE,
    accepted_by_scipy,
    assert_bitwise,
    assert_same_partitions,
    assert_same_tree,
    assert_valid_hac,
    condensed,
    data,
    scipy_z,
)

kl = pytest.importorskip("simprune.kernels.linkage")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = pytest.mark.skipif(
    not INTERPRET, reason="these tests run the Triton kernels on CPU tensors (TRITON_INTERPRET=1)"
)
HAS_TWIN = has_kernel("linkage_rounds_cpu", "CPU")


def triton_rounds(d, method):
    z, stats = kl.linkage_rounds_triton(torch.as_tensor(d), method)
    assert z.dtype == torch.float64 and stats.dtype == torch.int64
    return z.numpy(), stats.tolist()


def check_against_twin(d, method, z, stats):
    """The twin runs the same algorithm: the same Z bit for bit and the same round statistics."""
    if not HAS_TWIN:
        return
    zt, st_twin = linkage_rounds(torch.as_tensor(d), method)
    assert_bitwise(z, zt.numpy())
    assert stats == st_twin.tolist()


TIE_FREE_CASES = [
    (name, n, method)
    for name in ("gaussian", "mixture", "channel_like")
    for n in (2, 3, 31, 150)
    for method in REDUCIBLE
] + [("chain_1d", n, method) for n in (31, 100) for method in REDUCIBLE]


@pytest.mark.parametrize("name,n,method", TIE_FREE_CASES)
def test_tie_free_same_tree_as_scipy_and_twin(name, n, method):
    d = data(name, n)
    z, stats = triton_rounds(d, method)
    assert_same_tree(z, scipy_z(name, n, method), method)
    accepted_by_scipy(z, n)
    check_against_twin(d, method, z, stats)
    if n == 150:
        assert stats[1] >= 1  # the active count halved: the compaction kernel ran


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("n", [10, 120])
def test_zero_height_ties_same_partitions(n, method):
    d = data("dead_duplicate", n)
    z, stats = triton_rounds(d, method)
    assert_same_partitions(z, scipy_z("dead_duplicate", n, method))
    check_against_twin(d, method, z, stats)


@pytest.mark.parametrize("method", REDUCIBLE)
def test_massive_ties_valid(method):
    d = data("quantised", 90)
    z, stats = triton_rounds(d, method)
    assert_valid_hac(z, d, method)
    check_against_twin(d, method, z, stats)
    if method == "single":  # the MST weight multiset is unique
        np.testing.assert_array_equal(
            np.sort(z[:, 2]), np.sort(scipy_z("quantised", 90, method)[:, 2])
        )


def test_chain_needs_n_over_2_rounds():
    n = 100
    z, stats = triton_rounds(data("chain_1d", n), "complete")
    assert stats[0] >= n // 2 - 1
    assert_same_tree(z, scipy_z("chain_1d", n, "complete"), "complete")


def test_float32_input_is_widened_like_scipy():
    import scipy.cluster.hierarchy as sch

    d = data("gaussian", 60).astype(np.float32)
    z, _ = triton_rounds(torch.from_numpy(d), "average")
    assert_same_tree(z, sch.linkage(d.astype(np.float64), "average"), "average")


@pytest.mark.parametrize("method", REDUCIBLE)
def test_public_api_backend_triton(method, rng):
    x = torch.from_numpy(rng.standard_normal((40, 5)))
    z = simprune.linkage(x, method, backend="triton")
    import scipy.cluster.hierarchy as sch

    assert_same_tree(z.numpy(), sch.linkage(x.numpy(), method), method)


def test_small_and_bad_input():
    z, stats = triton_rounds(torch.zeros(0, dtype=torch.float64), "average")
    assert z.shape == (0, 4) and stats == [0, 0, 0]
    z, _ = triton_rounds(torch.tensor([2.5], dtype=torch.float64), "ward")
    assert z.tolist() == [[0.0, 1.0, 2.5, 2.0]]
    op = torch.ops.simprune.linkage_triton
    with pytest.raises(ValueError, match="NaN"):
        op(torch.tensor([1.0, float("nan"), 2.0]), "average", "exact")
    with pytest.raises(ValueError, match="non-negative"):
        op(torch.tensor([1.0, -1.0, 2.0]), "average", "exact")
    with pytest.raises(ValueError, match=r"n\(n-1\)/2"):
        op(torch.tensor([1.0, 1.0]), "average", "exact")
    with pytest.raises(ValueError, match="unknown linkage method"):
        op(torch.tensor([1.0, 1.0, 2.0]), "nope", "exact")
    with pytest.raises(NotImplementedError, match="median"):
        op(torch.tensor([1.0, 1.0, 2.0]), "median", "exact")
    # Strict mode (kernels/linkage_strict.py) on a tie: scipy's choice (tests/test_linkage_strict_triton.py).
    zs = op(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64), "average", "strict")
    assert zs.tolist() == [[0.0, 1.0, 1.0, 2.0], [2.0, 3.0, 1.5, 3.0]]
    with pytest.raises(ValueError, match="unknown mode"):
        op(torch.tensor([1.0, 1.0, 2.0]), "average", "loose")
    with pytest.raises(TypeError, match="float32 or float64"):
        op(torch.tensor([1, 1, 2]), "average", "exact")


def test_opcheck_linkage_triton():
    d = torch.from_numpy(data("gaussian", 12))
    torch.library.opcheck(torch.ops.simprune.linkage_triton, (d, "ward", "exact"))


# ---------------------------------------------------------------------------------------------------
# The primitives one by one, outputs poisoned before each kernel runs.


def test_square_kernel_bit_symmetric_inf_diagonal():
    for n in (1, 2, 7, 129, 131):  # 128 is the interpreter's tile edge
        d = torch.from_numpy(np.random.default_rng(n).random(n * (n - 1) // 2))
        s = torch.full((n * n,), float("nan"), dtype=torch.float64)
        kl._square_kernel[(kl._cdiv(n, kl.SQ_B),) * 2](d, s, n, B=kl.SQ_B)
        s = s.view(n, n).numpy()
        assert np.all(np.isinf(np.diag(s)))
        iu = np.triu_indices(n, 1)
        np.testing.assert_array_equal(s[iu], d.numpy())
        np.testing.assert_array_equal(s, s.T)


@pytest.mark.parametrize("m", [1, 2, 5, 64, 257, 300])
def test_row_argmin_smallest_slot_wins_ties(m):
    rng = np.random.default_rng(m)
    s = rng.integers(0, 4, (m, m)).astype(np.float64)  # many ties
    s[rng.random((m, m)) < 0.2] = np.inf
    s[0] = np.inf  # a row with no finite entry
    if m > 3:
        s[2, 1] = np.nan  # NaN never wins
    nn = torch.full((m,), -7, dtype=torch.int64)
    kl._row_argmin_kernel[(kl._cdiv(m, kl.ARGMIN_BR),)](
        torch.from_numpy(s.ravel()), nn, m, BR=kl.ARGMIN_BR, BC=kl.ARGMIN_BC
    )
    sn = np.where(np.isnan(s), np.inf, s)
    want = np.where(np.isfinite(sn).any(axis=1), np.argmin(sn, axis=1), -1)
    np.testing.assert_array_equal(nn.numpy(), want)


def test_reciprocal_and_compact_kernels():
    m = 9
    nn = torch.tensor([3, 0, 4, 0, 2, -1, 7, 6, 6], dtype=torch.int64)
    flag = torch.full((m,), 5, dtype=torch.int8)
    kl._reciprocal_kernel[(1,)](nn, flag, m, B=kl.FLAG_B)
    assert flag.tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 0]
    s = torch.arange(m * m, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 7], dtype=torch.int64)
    t = torch.full((16,), float("nan"), dtype=torch.float64)
    kl._compact_kernel[(1, 1)](s, m, keep, t, 4, B=kl.SQ_B)
    np.testing.assert_array_equal(t.view(4, 4).numpy(), s.view(m, m).numpy()[np.ix_(keep, keep)])


@settings(max_examples=25, deadline=None)
@given(case=condensed(), method=st.sampled_from(REDUCIBLE))
def test_property_same_as_twin_and_valid(case, method):
    d, euclidean = case
    assume(euclidean or method != "ward")
    z, stats = triton_rounds(d, method)
    accepted_by_scipy(z, z.shape[0] + 1)
    assert_valid_hac(z, d, method)
    check_against_twin(d, method, z, stats)


def test_no_fma_in_the_lance_williams_kernels():
    """Compiled for sm_90 the way the launcher compiles them (enable_fp_fusion=False), the fp64
    Lance-Williams kernels hold no fused multiply-add: scipy's rounding, operation by operation."""
    code = textwrap.dedent(
        """
        import re, triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import simprune.kernels.linkage as kl
        bad = []
        for spec in kl.AOT_SPECS:
            if not spec["name"].startswith("lw_"):
                continue
            src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"])
            opts = dict(kl._LAUNCH)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            if re.search(r"\\bfma\\.", k.asm["ptx"]):
                bad.append(spec["name"])
        print("FMA:", bad)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FMA: []" in out.stdout, out.stdout


# ---------------------------------------------------------------------------------------------------
# Single linkage: Boruvka MST (what backend="triton" runs for method="single").

BORUVKA_CASES = [
    (name, n)
    for name in ("gaussian", "mixture", "channel_like", "chain_1d")
    for n in (2, 3, 31, 150, 300)
]


@pytest.mark.parametrize("name,n", BORUVKA_CASES)
def test_boruvka_tie_free_is_scipy_bitwise(name, n):
    z, stats = kl.linkage_boruvka_triton(torch.from_numpy(data(name, n)))
    assert_bitwise(z.numpy(), scipy_z(name, n, "single"))
    iters = stats.tolist()[0]
    assert 1 <= iters <= max(1, int(np.ceil(np.log2(n))))  # Boruvka: at most log2 n passes


@pytest.mark.parametrize(
    "name,n", [("dead_duplicate", 10), ("dead_duplicate", 300), ("quantised", 150)]
)
def test_boruvka_ties_same_heights_and_partitions(name, n):
    d = data(name, n)
    z, _ = kl.linkage_boruvka_triton(torch.from_numpy(d))
    z = z.numpy()
    zs = scipy_z(name, n, "single")
    np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(zs[:, 2]))  # the MST weights are unique
    assert_same_partitions(z, zs)  # single-linkage partitions are unique (graph components)
    assert_valid_hac(z, d, "single")


@settings(max_examples=40, deadline=None)
@given(case=condensed())
def test_property_boruvka_valid_and_same_heights(case):
    d, _ = case
    z, _ = kl.linkage_boruvka_triton(torch.from_numpy(d))
    z = z.numpy()
    accepted_by_scipy(z, z.shape[0] + 1)
    assert_valid_hac(z, d, "single")
    import scipy.cluster.hierarchy as sch

    np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(sch.linkage(d, "single")[:, 2]))
