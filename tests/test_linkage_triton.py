"""What only the Triton linkage has: its primitives one by one, Boruvka's pass count, the compiled
kernels' PTX (no fused multiply-add), the interpreter's chunk width, and the compiled kernels on a GPU.

kernels/linkage.py: the round primitives (exact; Boruvka for single); kernels/linkage_strict.py:
scipy's NN-chain and Prim replayed in one program (strict). Under ``TRITON_INTERPRET=1``
(tests/conftest.py) the kernels run on CPU tensors; the interpreter costs ~0.5 ms per program, so n
stays <= 300 here. The ``gpu``-marked tests run the compiled kernels on a CUDA device
(scripts/gpu_check.sh runs -m gpu with SIMPRUNE_TEST_ON_GPU=1). The gates shared with the other
backends (strict bitwise scipy, exact tree / partitions / valid HAC and the twin's Z bit for bit, the
chain's n/2 rounds, float32 input and storage, properties, the raw op's errors, opcheck) are in
tests/test_linkage_matrix.py.
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

import simprune
from simprune.backends import has_kernel, has_triton, triton_interpret
from simprune.hierarchy import linkage_rounds
from simprune.testing import (
    REDUCIBLE,
    assert_bitwise,
    assert_same_partitions,
    assert_same_tree,
    assert_valid_hac,
)
from tests._helpers import data, scipy_z

if not has_triton():
    pytest.skip("triton is not installed", allow_module_level=True)

import simprune.kernels.linkage as kl  # noqa: E402
import simprune.kernels.linkage_strict as ks  # noqa: E402

INTERPRET = triton_interpret()
ON_GPU = torch.cuda.is_available() and not INTERPRET
interpreted = pytest.mark.skipif(
    not INTERPRET, reason="runs the Triton kernels on CPU tensors (TRITON_INTERPRET=1)"
)
on_gpu = pytest.mark.skipif(not ON_GPU, reason="Triton on the GPU (TRITON_INTERPRET unset)")
needs_twin = pytest.mark.skipif(
    not has_kernel("linkage_rounds_cpu", "CPU"), reason="simprune._C (linkage_rounds_cpu) not built"
)


def twin(d, method):
    z, stats = linkage_rounds(torch.as_tensor(d), method)
    return z.numpy(), stats.tolist()


@interpreted
@pytest.mark.parametrize("method", REDUCIBLE)
def test_public_api_backend_triton(method, rng):
    x = torch.from_numpy(rng.standard_normal((40, 5)))
    z = simprune.linkage(x, method, backend="triton")
    assert_same_tree(z.numpy(), sch.linkage(x.numpy(), method), method)


def test_interpreter_block_is_spanned_by_the_test_sizes():
    if INTERPRET:
        assert ks.STRICT_BLOCK == 64  # n = 65 and 100 (test_linkage_matrix.py) span two chunks
    assert ks.GPU_BLOCK >= 32 * ks.GPU_WARPS  # one owner thread per chunk element on the GPU


# ---------------------------------------------------------------------------------------------------
# The primitives one by one, outputs poisoned before each kernel runs.


@interpreted
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


@interpreted
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


@interpreted
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


# ---------------------------------------------------------------------------------------------------
# Single linkage: Boruvka MST (what backend="triton" runs for method="single").

BORUVKA_CASES = [
    (name, n)
    for name in ("gaussian", "mixture", "channel_like", "chain_1d", "chain_geometric")
    for n in (2, 3, 31, 150, 300)
]


@interpreted
@pytest.mark.parametrize("name,n", BORUVKA_CASES)
def test_boruvka_tie_free_is_scipy_bitwise(name, n):
    z, stats = kl.linkage_boruvka_triton(torch.from_numpy(data(name, n)))
    assert_bitwise(z.numpy(), scipy_z(name, n, "single"))
    iters = stats.tolist()[0]
    assert 1 <= iters <= max(1, int(np.ceil(np.log2(n))))  # Boruvka: at most log2 n passes
    if name == "chain_geometric" and n > 2:
        # Every point hooks onto its right neighbour: one iteration, one chain of n - 1 edges that
        # pointer doubling resolves (stats[2]: the edges added in that iteration).
        assert stats.tolist() == [1, 0, n - 1]


@interpreted
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


# ---------------------------------------------------------------------------------------------------
# The compiled kernels (for sm_90, no GPU needed): no fused multiply-add.


def _compile_and_report(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_no_fma_and_no_spill_in_the_lance_williams_kernels():
    """Compiled for sm_90 the way the launcher compiles them (enable_fp_fusion=False), the fp64
    Lance-Williams kernels hold no fused multiply-add: scipy's rounding, operation by operation. And
    ptxas (Triton's own) spills no register in any of them (phase 2 at 32 x 32 tiles spilled 32-36 B
    for ward)."""
    stdout = _compile_and_report(
        """
        import os, re, subprocess, tempfile, triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import simprune.kernels.linkage as kl
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        bad, spills = [], []
        for spec in kl.AOT_SPECS:
            if not spec["name"].startswith("lw_"):
                continue
            src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"])
            opts = dict(kl._LAUNCH)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            if re.search(r"\\bfma\\.", k.asm["ptx"]):
                bad.append(spec["name"])
            if os.path.exists(ptxas):
                with tempfile.TemporaryDirectory() as t:
                    f = os.path.join(t, "k.ptx")
                    open(f, "w").write(k.asm["ptx"])
                    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f, "-o", os.devnull],
                                         capture_output=True, text=True).stderr
                m = re.search(r"(\\d+) bytes spill stores, (\\d+) bytes spill loads", out)
                if m is None or m.groups() != ("0", "0"):
                    spills.append((spec["name"], m.groups() if m else out[-200:]))
        print("FMA:", bad)
        print("SPILL:", spills)
        """
    )
    assert "FMA: []" in stdout, stdout
    assert "SPILL: []" in stdout, stdout


def test_compiled_strict_kernels_have_barriers_and_no_fma():
    """Compiled for sm_90 as the launcher compiles them (enable_fp_fusion=False): no fused
    multiply-add (scipy's rounding, operation by operation), IEEE division and square root for
    ward, and the CTA barriers that publish one thread's stores to the others."""
    stdout = _compile_and_report(
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
    rows = {r.split()[0]: [int(v) for v in r.split()[1:]] for r in stdout.splitlines()}
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
# On a GPU: the compiled kernels.


@pytest.mark.gpu
@on_gpu
@needs_twin
@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", [("gaussian", 1000), ("channel_like", 513), ("quantised", 300)])
def test_gpu_rounds_same_as_twin(name, n, method):
    d = data(name, n)
    z, stats = kl.linkage_rounds_triton(torch.from_numpy(d).cuda(), method)
    zt, st_twin = twin(d, method)
    assert_bitwise(z.cpu().numpy(), zt)  # no FMA contraction: the twin's arithmetic
    assert stats.tolist() == st_twin
    z_api = simprune.linkage(torch.from_numpy(d).cuda(), method, backend="triton")
    assert_bitwise(z_api.cpu().numpy(), zt)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("method", REDUCIBLE)
def test_gpu_strict_bitwise_scipy(method):
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
