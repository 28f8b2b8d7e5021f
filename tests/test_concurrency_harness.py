"""The CUDA linkage kernels run on host threads (csrc/harness, issue 17): concurrency checked without
a GPU.

The Triton interpreter runs programs one after another and the CPU twin is sequential, so a missing
barrier or a race in the CUDA kernels cannot show up in the other CPU tests. Here the kernels of
csrc/cuda/linkage_rounds.cu (the cooperative rounds kernel and the batched one), linkage_boruvka.cu
and linkage_strict.cu are compiled unchanged as host C++20 (csrc/harness/cuda_host_shim.h: a warp is
a host thread, a lane a fiber, ``__syncthreads`` / ``grid.sync()`` barriers over the block / the whole
grid, shuffles through a per-warp array) with blocks of 64 threads, and:

* their Z equals the CPU twin's (``simprune.hierarchy.linkage_rounds``, with its statistics) or
  scipy's (strict mode; Borůvka on tie-free data) bit for bit, up to n = 2000;
* a ThreadSanitizer build (``-fsanitize=thread``) reports no data race, and the harness no barrier
  divergence or deadlock;
* the harness itself reports a planted race and planted barrier / warp divergence.

It emulates the logic and the barrier placement, not the GPU memory model (no weak ordering, no
warp-divergence semantics beyond lanes meeting at each warp primitive): cuda_host_shim.h says what
is and is not emulated. The binaries are built once (a hash of the sources and flags) under
build/concurrency_harness/ and reused; no test needs a GPU or the CUDA toolkit, only g++ (or $CXX)
with C++20.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch

from simprune.backends import has_kernel
from simprune.hierarchy import linkage_rounds
from simprune.testing import assert_bitwise, assert_same_partitions, bitwise_mismatch
from tests._helpers import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "csrc", "harness")
CACHE = os.path.join(ROOT, "build", "concurrency_harness")
THREADS = 64  # threads per block (the kernels' default is 512: far more host threads than needed)
DEFINES = [
    "-DSIMPRUNE_HOST_HARNESS",
    "-DSIMPRUNE_STRICT_DEVICE_ONLY",
    f"-DSIMPRUNE_HOST_HARNESS_THREADS={THREADS}",
    f"-DSIMPRUNE_HOST_HARNESS_STRICT_THREADS={THREADS}",
]
COMMON = ["-std=c++20", "-ffp-contract=off", "-pthread", "-Wall", "-Wno-unused-function"]
COMMON += ["-I", os.path.join(HARNESS, "include"), "-I", os.path.join(ROOT, "csrc", "include")]
FLAGS = {"plain": ["-O2"], "tsan": ["-O1", "-g", "-fsanitize=thread"]}

needs_twin = pytest.mark.skipif(
    not has_kernel("linkage_rounds_cpu", "CPU"), reason="the CPU twin needs simprune._C"
)


def _sources(root: str = ROOT) -> list[str]:
    harness = os.path.join(root, "csrc", "harness")
    files = [os.path.join(harness, "harness_main.cpp"), os.path.join(harness, "cuda_host_shim.h")]
    for base in (os.path.join(harness, "include"), os.path.join(root, "csrc", "include")):
        for d, _, names in os.walk(base):
            files += [os.path.join(d, f) for f in names]
    cuda = os.path.join(root, "csrc", "cuda")
    files += [os.path.join(cuda, f) for f in os.listdir(cuda)]  # any header the kernels include
    return sorted(files)


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def _build(kind: str, root: str = ROOT) -> str:
    """The harness binary of this kind ("plain" or "tsan") for the sources under root, compiled
    once per source hash."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or $CXX) on PATH: the concurrency harness is not built")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha1(version.encode())
    for f in _sources(root):
        h.update(os.path.relpath(f, root).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    flags = [*COMMON, *DEFINES, *FLAGS[kind]]
    if root != ROOT:
        flags = [f.replace(ROOT, root) for f in flags]
    h.update(" ".join(COMMON + DEFINES + FLAGS[kind]).encode())
    os.makedirs(CACHE, exist_ok=True)
    exe = os.path.join(CACHE, f"harness-{kind}-{h.hexdigest()[:16]}")
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one compile when several sessions start at once
        if not os.path.exists(exe):
            tmp = f"{exe}.tmp{os.getpid()}"
            main = os.path.join(root, "csrc", "harness", "harness_main.cpp")
            cmd = [cxx, *flags, main]
            out = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                if kind == "tsan" and "tsan" in out.stderr and "cannot find" in out.stderr:
                    pytest.skip(
                        f"{cxx} has no ThreadSanitizer runtime (libtsan): {out.stderr[-300:]}"
                    )
                if "barrier: No such file" in out.stderr:
                    pytest.skip(f"{cxx} lacks C++20 <barrier>; the harness needs g++ >= 11")
                raise AssertionError(
                    f"harness build failed:\n{' '.join(cmd)}\n{out.stderr[-5000:]}"
                )
            os.replace(tmp, exe)
            # Keep the newest few binaries of this kind (each source change builds a new one).
            old = sorted(
                (
                    f
                    for f in os.listdir(CACHE)
                    if f.startswith(f"harness-{kind}-") and ".tmp" not in f
                ),
                key=lambda f: os.path.getmtime(os.path.join(CACHE, f)),
            )
            for f in old[:-4]:
                os.remove(os.path.join(CACHE, f))
    return exe


@pytest.fixture(scope="session")
def harness():
    return _build("plain")


@pytest.fixture(scope="session")
def harness_tsan():
    return _build("tsan")


def _run(exe, tmp_path, algo, method, problems, storage="f64", blocks=2, env=None):
    """Runs the harness on condensed float64 vectors; returns [(Z, stats)] per problem."""
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(src, "wb") as f:
        np.array([len(problems)], dtype=np.int64).tofile(f)
        for d in problems:
            n = int(round((1 + np.sqrt(1 + 8 * len(d))) / 2)) if len(d) else 1
            np.array([n], dtype=np.int64).tofile(f)
            np.ascontiguousarray(d, dtype=np.float64).tofile(f)
    cmd = [exe, algo, method, storage, str(blocks), str(src), str(dst)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    raw = dst.read_bytes() if dst.exists() else b""
    res, off = [], 0
    for d in problems:
        n = int(round((1 + np.sqrt(1 + 8 * len(d))) / 2)) if len(d) else 1
        z = (
            np.frombuffer(raw, np.float64, 4 * (n - 1), off).reshape(n - 1, 4)
            if out.returncode == 0
            else None
        )
        off += 8 * 4 * (n - 1)
        stats = np.frombuffer(raw, np.int64, 3, off).tolist() if out.returncode == 0 else None
        off += 24
        res.append((z, stats))
    return out, res


def _ok(out):
    assert out.returncode == 0, f"harness exit {out.returncode}:\n{out.stderr[-6000:]}"


def twin(d, method, storage="f64"):
    """The CPU twin's Z and statistics."""
    dtype = torch.float32 if storage == "f32" else torch.float64
    z, stats = linkage_rounds(torch.from_numpy(np.asarray(d)), method, dtype)
    return z.numpy(), stats.tolist()


# ---------------------------------------------------------------------------------------------------
# The rounds kernel (cooperative: several blocks with grid barriers while the width is > 512, then
# block 0 alone with block barriers), bit for bit the CPU twin, statistics included.

ROUNDS_CASES = [
    # (data set, n, method, storage, blocks)
    ("gaussian", 2000, "ward", "f64", 4),
    ("mixture", 1000, "average", "f64", 3),
    ("quantised", 600, "complete", "f64", 2),  # ties
    ("channel_like", 800, "weighted", "f32", 2),
    ("dead_duplicate", 300, "average", "f64", 2),  # zero-height ties; below 512: one block
]


@needs_twin
@pytest.mark.parametrize("name,n,method,storage,blocks", ROUNDS_CASES)
def test_rounds_kernel_equals_the_twin(harness, tmp_path, name, n, method, storage, blocks):
    d = data(name, n)
    out, [(z, stats)] = _run(harness, tmp_path, "rounds", method, [d], storage, blocks)
    _ok(out)
    zt, st = twin(d, method, storage)
    assert_bitwise(z, zt)
    assert stats == st, f"(rounds, compactions, widest): harness {stats}, twin {st}"


@needs_twin
@pytest.mark.parametrize("method", ["complete", "ward"])
def test_grouped_kernel_equals_the_twin(harness, tmp_path, method):
    # The batched kernel: one block per problem in one launch, sizes around the block width.
    sizes = [1, 2, 3, 64, 65, 100, 513, 31]
    ds = [np.zeros(0)] + [data("gaussian", n) for n in sizes if n > 1]
    out, res = _run(harness, tmp_path, "grouped", method, ds)
    _ok(out)
    for d, (z, _) in zip(ds, res, strict=True):
        if len(d):
            assert_bitwise(z, twin(d, method)[0])


# ---------------------------------------------------------------------------------------------------
# Borůvka (single linkage): scipy's Z bit for bit on tie-free data; under ties the MST weights and
# the partitions (unique) are scipy's.


@pytest.mark.parametrize(
    "name,n,storage",
    [
        ("gaussian", 1500, "f64"),
        ("chain_1d", 700, "f64"),
        ("chain_geometric", 1000, "f64"),
        ("mixture", 800, "f32"),
        ("dead_duplicate", 600, "f64"),
        ("quantised", 300, "f64"),
    ],
)
def test_boruvka_equals_scipy(harness, tmp_path, name, n, storage):
    d = data(name, n)
    out, [(z, stats)] = _run(harness, tmp_path, "boruvka", "single", [d], storage, 3)
    _ok(out)
    # float32 storage: single linkage does no arithmetic, so it is the float64 run on the rounded
    # distances.
    ref = sch.linkage(d.astype(np.float32).astype(np.float64) if storage == "f32" else d, "single")
    if name in ("dead_duplicate", "quantised"):
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(ref[:, 2]))
        assert_same_partitions(z, ref)
    else:
        assert_bitwise(z, ref)
    assert 1 <= stats[0] <= int(np.ceil(np.log2(n)))  # Borůvka iterations


# ---------------------------------------------------------------------------------------------------
# Strict mode: scipy's nn_chain / Prim replayed in one block, bit for bit scipy, ties included.


@pytest.mark.parametrize("method", ["single", "complete", "average", "weighted", "ward"])
def test_strict_kernels_equal_scipy(harness, tmp_path, method):
    d = data("quantised", 400)
    out, [(z, _)] = _run(harness, tmp_path, "strict", method, [d], blocks=2)
    _ok(out)
    assert_bitwise(z, sch.linkage(d, method))


def test_strict_kernel_equals_scipy_at_2k(harness, tmp_path):
    d = data("channel_like", 2000)
    out, [(z, _)] = _run(harness, tmp_path, "strict", "average", [d], blocks=2)
    _ok(out)
    assert_bitwise(z, sch.linkage(d, "average"))


# ---------------------------------------------------------------------------------------------------
# ThreadSanitizer: no data race in any of the kernels (one run each, the rounds kernel in its
# cooperative multi-block phase: n > 512).

_REPORT = re.compile(r"WARNING: ThreadSanitizer: (.*?)\n(.*?)(?=\n==================|\Z)", re.S)


def _tsan_env():
    env = dict(os.environ)
    # Every report, not just the first; exit status 66 when there was one.
    env["TSAN_OPTIONS"] = "halt_on_error=0 exitcode=66 report_signal_unsafe=0 " + env.get(
        "TSAN_OPTIONS", ""
    )
    return env


_TSAN_RUNS: dict = {}


def _tsan_run(exe, tmp_path, algo, method, name, n, storage="f64", blocks=2):
    """One sanitized run per case and session (the phase-D test below reuses the rounds run)."""
    key = (exe, algo, method, name, n, storage, blocks)
    if key not in _TSAN_RUNS:
        problems = [data(name, n), data(name, 70)] if algo == "grouped" else [data(name, n)]
        _TSAN_RUNS[key] = _run(
            exe, tmp_path, algo, method, problems, storage, blocks, env=_tsan_env()
        )
    out, res = _TSAN_RUNS[key]
    if "unexpected memory mapping" in out.stderr or "FATAL: ThreadSanitizer" in out.stderr:
        pytest.skip(f"ThreadSanitizer cannot run here: {out.stderr[-400:]}")
    return out, res


def _reports(stderr):
    """[(kind, {(file, line) of the two accesses' top frames})] of every ThreadSanitizer report."""
    found = []
    for kind, body in _REPORT.findall(stderr):
        tops = re.findall(
            r"(?:Write|Read|Atomic \w+) of size \d+ .*?\n\s+#0 .*? (\S+?):(\d+)", body
        )
        tops += re.findall(
            r"Previous (?:write|read|atomic \w+) of size \d+ .*?\n\s+#0 .*? (\S+?):(\d+)", body
        )
        found.append((kind, {(os.path.basename(f), int(line)) for f, line in tops}))
    return found


def _unexpected(stderr):
    """Every ThreadSanitizer report (none is known or tolerated)."""
    return _reports(stderr)


TSAN_CASES = [
    # (algo, method, data set, n, storage, blocks)
    ("rounds", "average", "gaussian", 600, "f64", 2),
    ("rounds", "ward", "gaussian", 300, "f32", 1),
    ("grouped", "complete", "gaussian", 100, "f64", 1),
    ("boruvka", "single", "dead_duplicate", 300, "f64", 2),
    ("strict", "average", "quantised", 200, "f64", 1),
    ("strict", "single", "quantised", 200, "f64", 1),
]


@pytest.mark.parametrize("algo,method,name,n,storage,blocks", TSAN_CASES)
def test_thread_sanitizer_finds_no_race(
    harness_tsan, tmp_path, algo, method, name, n, storage, blocks
):
    d = data(name, n)
    out, res = _tsan_run(harness_tsan, tmp_path, algo, method, name, n, storage, blocks)
    bad = _unexpected(out.stderr)
    assert not bad and "WARNING: ThreadSanitizer" not in out.stderr, out.stderr[-8000:]
    _ok(out)
    # The sanitized run computes the same Z.
    if algo == "strict":
        assert_bitwise(res[0][0], sch.linkage(d, method))
    elif algo == "boruvka":
        assert_same_partitions(res[0][0], sch.linkage(d, method))


def test_rounds_phase_d_poisoning_is_race_free(harness_tsan, tmp_path):
    # The race this harness found (two merging pairs both writing S[j1][j2] in phase D), fixed in
    # linkage_rounds.cu: a slot dying this round is left to its own row write.
    out, _ = _tsan_run(harness_tsan, tmp_path, *TSAN_CASES[0][:4], *TSAN_CASES[0][4:])
    assert "WARNING: ThreadSanitizer" not in out.stderr, out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------
# The harness can fail: a planted race, a block barrier skipped by one warp, a warp primitive
# skipped by half the lanes.


def test_harness_reports_barrier_and_warp_divergence(harness):
    for which, what in (("block", "BARRIER DIVERGENCE"), ("warp", "WARP DIVERGENCE")):
        out = subprocess.run(
            [harness, "selftest", which], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 4 and what in out.stderr, (which, out.returncode, out.stderr)


def test_thread_sanitizer_reports_a_planted_race(harness_tsan):
    out = subprocess.run(
        [harness_tsan, "selftest", "race"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_tsan_env(),
    )
    if "FATAL: ThreadSanitizer" in out.stderr:
        pytest.skip(f"ThreadSanitizer cannot run here: {out.stderr[-400:]}")
    assert out.returncode == 66 and "data race" in out.stderr, out.stderr[-3000:]
    assert ("harness_main.cpp", _line_of("selftest_race_kernel")) in _reports(out.stderr)[0][1]


@needs_twin
def test_harness_catches_a_removed_grid_barrier(tmp_path):
    # The rounds kernel with the barrier after phase A (row argmins) removed: phase B then reads
    # nearest neighbours other blocks have not written yet. The harness must not compute the twin's Z.
    tree = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "csrc"), tree / "csrc")
    path = tree / "csrc" / "cuda" / "linkage_rounds.cu"
    text = path.read_text()
    b = text.index("// ---- B. reciprocal pairs")
    a = text.rindex("sync();", 0, b)
    path.write_text(text[:a] + "/* mutant: no barrier */" + text[a + len("sync();") :])
    exe = _build("plain", str(tree))
    d = data("gaussian", 600)
    out, [(z, _)] = _run(exe, tmp_path, "rounds", "average", [d], blocks=2)
    if out.returncode != 0 or bitwise_mismatch(z, twin(d, "average")[0]) is not None:
        return  # caught by the result
    # A plain run can be lucky (the other block happened to finish phase A first): under
    # ThreadSanitizer the missing barrier is a data race whatever the timing.
    exe = _build("tsan", str(tree))
    out, _ = _run(exe, tmp_path, "rounds", "average", [d], blocks=2, env=_tsan_env())
    if "unexpected memory mapping" in out.stderr or "FATAL: ThreadSanitizer" in out.stderr:
        pytest.skip(f"ThreadSanitizer cannot run here: {out.stderr[-400:]}")
    assert any(kind.startswith("data race") for kind, _ in _reports(out.stderr)), out.stderr[-3000:]


def _line_of(func):
    text = open(os.path.join(HARNESS, "harness_main.cpp")).read().splitlines()
    return next(i + 1 for i, line in enumerate(text) if func + "(" in line and "__global__" in line)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
