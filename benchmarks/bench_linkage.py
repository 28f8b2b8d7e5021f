"""CPU linkage: simprune's C++ backend against scipy and fastcluster, measured in the same run.

    python -m benchmarks.bench_linkage                       # n in {1k, 4k}, all methods, 2 threads
    python -m benchmarks.bench_linkage --n 8192 --methods average ward
    python -m benchmarks.bench_linkage --big                 # adds 8k and 16k (scipy: seconds each)
    python -m benchmarks.bench_linkage --rounds --json out.json --markdown out.md
    python -m benchmarks.bench_linkage --thread-split --n 4096 8192 16384 --methods average ward
    pytest benchmarks/bench_linkage.py --benchmark-only      # the pytest-benchmark suite (n = 1k)

Every row: one method at one n, on the same precomputed float64 condensed distances (scipy ``pdist`` of
a Gaussian N(0, I) set with d = 64, linkage.md 8.1 #1), so only the clustering is timed. Columns:

* ``cpu_s``: ``simprune.linkage(d, method, backend="cpu")`` (API included: input checks, dispatch),
  "exact" mode; ``strict_s`` the same in "strict" mode (same algorithm, different sort key);
  ``f32_s`` with ``storage=torch.float32`` (a float32 working copy: half the memory) and ``f32_rel``
  its largest relative height error against scipy (sorted heights);
* ``rounds_s``, ``R``: the round-synchronous twin of the GPU algorithm and its number of rounds
  (``--rounds``, up to ``--rounds-max-n``; square fp64 matrix);
* ``scipy_s``: ``scipy.cluster.hierarchy.linkage(d, method)``; ``fc_s``: ``fastcluster.linkage``;
* ``x_scipy``, ``x_fc``: speed-up of ``cpu_s`` over scipy and fastcluster (> 1: simprune faster).

``--thread-split``: the thread split of the C++ backend instead, side by side with fastcluster in the
same run, interleaved call by call (so the machine's load hits every column alike): ``t1_s`` one
thread, ``t2_s`` ``--threads`` threads with the kernel's default switch-over
(``SIMPRUNE_LINKAGE_PARALLEL_MIN_N`` unset), ``t2_min<N>_s`` with the switch-over at N
(``--min-active``), ``fc_s`` fastcluster; ratios ``split`` = t1_s / t2_s (>= 1: the split is not
slower), ``x_fc_1t`` and ``x_fc_2t`` = fc_s / t1_s and fc_s / t2_s. The load average (``uptime``)
is recorded before and after.

Times are medians (``benchmarks.common.median_time``). The thread count (``--threads``, default 2) is
applied to torch (``torch.set_num_threads``), which is what the C++ kernels use; scipy and fastcluster
are single-threaded. On a shared 2-core machine quote ratios, never lone absolute times. Speed is never
asserted: this script only reports.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, median_time, print_table, write_results  # noqa: E402
from simprune import testing  # noqa: E402

METHODS = ("single", "complete", "average", "weighted", "ward")


def _distances(n: int, dim: int = 64) -> np.ndarray:
    from scipy.spatial.distance import pdist

    return pdist(testing.gaussian(n, dim, seed=0))


def _repeat(n: int) -> int:
    # Keep a full default run within a few minutes on 2 cores (scipy takes seconds at 8k).
    return 5 if n <= 2048 else 3 if n <= 4096 else 2


def run(
    sizes: list[int], methods: list[str], threads: int, rounds_max_n: int
) -> list[dict[str, Any]]:
    import fastcluster
    import scipy.cluster.hierarchy as sch

    import simprune
    from simprune.hierarchy import linkage_rounds

    torch.set_num_threads(threads)
    rows = []
    for n in sizes:
        d_np = _distances(n)
        d = torch.from_numpy(d_np)
        rep = _repeat(n)
        for method in methods:
            row: dict[str, Any] = {"n": n, "method": method}
            z = simprune.linkage(d, method, backend="cpu").numpy()
            zs = sch.linkage(d_np, method)
            # Same tree as scipy (Gaussian data is tie-free): a benchmark of a wrong answer is void.
            row["same_Z"] = bool(np.array_equal(z[:, [0, 1, 3]], zs[:, [0, 1, 3]]))
            row["cpu_s"] = median_time(
                lambda m=method, d=d: simprune.linkage(d, m, backend="cpu"), repeat=rep
            )
            row["strict_s"] = median_time(
                lambda m=method, d=d: simprune.linkage(d, m, mode="strict", backend="cpu"),
                repeat=rep,
            )
            z32 = simprune.linkage(d, method, storage=torch.float32, backend="cpu").numpy()
            row["f32_s"] = median_time(
                lambda m=method, d=d: simprune.linkage(d, m, storage=torch.float32, backend="cpu"),
                repeat=rep,
            )
            # float32 storage: largest relative error of the sorted heights against scipy's.
            hs = np.sort(zs[:, 2])
            row["f32_rel"] = float(np.max(np.abs(np.sort(z32[:, 2]) - hs) / np.maximum(hs, 1e-300)))
            # single: the GPU design uses Boruvka, not rounds (RNN rounds degenerate: ~n rounds).
            if n <= rounds_max_n and method != "single":
                row["rounds_s"] = median_time(
                    lambda m=method, d=d: linkage_rounds(d, m), repeat=rep
                )
                rz, stats = linkage_rounds(d, method)
                row["R"] = int(stats[0])
            row["scipy_s"] = median_time(lambda m=method, d=d_np: sch.linkage(d, m), repeat=rep)
            row["fc_s"] = median_time(
                lambda m=method, d=d_np: fastcluster.linkage(d, m), repeat=rep
            )
            row["x_scipy"] = row["scipy_s"] / row["cpu_s"]
            row["x_fc"] = row["fc_s"] / row["cpu_s"]
            rows.append(row)
            print(
                f"  n={n} {method}: cpu {row['cpu_s']:.4f}s scipy {row['scipy_s']:.4f}s "
                f"fastcluster {row['fc_s']:.4f}s",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def run_thread_split(
    sizes: list[int], methods: list[str], threads: int, min_active: list[int], repeat: int
) -> list[dict[str, Any]]:
    """One thread vs ``threads`` threads (the default switch-over, and each of ``min_active``) vs
    fastcluster, interleaved: each repetition times every variant once, medians at the end."""
    import statistics
    import time

    import fastcluster

    import simprune

    env = "SIMPRUNE_LINKAGE_PARALLEL_MIN_N"
    saved_env, saved_threads = os.environ.get(env), torch.get_num_threads()

    def setup(nthreads: int, min_n: int | None):
        def apply():  # outside the timed region (set_num_threads resizes the thread pool)
            torch.set_num_threads(nthreads)
            if min_n is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = str(min_n)

        return apply

    rows = []
    try:
        for n in sizes:
            d_np = _distances(n)
            d = torch.from_numpy(d_np)
            for method in methods:
                ours = {"t1_s": setup(1, None), "t2_s": setup(threads, None)}
                ours.update({f"t2_min{mn}_s": setup(threads, mn) for mn in min_active})
                variants: dict[str, tuple[Any, Any]] = {
                    k: (apply, lambda m=method, d=d: simprune.linkage(d, m, backend="cpu"))
                    for k, apply in ours.items()
                }
                variants["fc_s"] = (
                    lambda: None,
                    lambda m=method, d=d_np: fastcluster.linkage(d, m),
                )
                ref = None
                for key, (apply, fn) in variants.items():  # warm-up; every variant: the same Z
                    apply()
                    z = fn()
                    if key != "fc_s":
                        ref = z.numpy() if ref is None else ref
                        assert np.array_equal(z.numpy(), ref), (n, method, key)
                times: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(repeat):
                    for key, (apply, fn) in variants.items():
                        apply()
                        t0 = time.perf_counter()
                        fn()
                        times[key].append(time.perf_counter() - t0)
                row: dict[str, Any] = {"n": n, "method": method}
                row.update({k: statistics.median(v) for k, v in times.items()})
                row["split"] = row["t1_s"] / row["t2_s"]
                row["x_fc_1t"] = row["fc_s"] / row["t1_s"]
                row["x_fc_2t"] = row["fc_s"] / row["t2_s"]
                row["load"] = _load()
                rows.append(row)
                print(f"  n={n} {method}: {row}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = saved_env
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--big", action="store_true", help="add n = 8192 and 16384")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", action="store_true", help="also time the round-synchronous twin")
    p.add_argument(
        "--rounds-max-n", type=int, default=4096, help="largest n for --rounds (8 n^2 bytes)"
    )
    p.add_argument(
        "--thread-split",
        action="store_true",
        help="1 thread vs --threads threads vs fastcluster, interleaved (see the docstring)",
    )
    p.add_argument(
        "--min-active",
        type=int,
        nargs="*",
        default=[],
        help="--thread-split: also time these switch-over points (SIMPRUNE_LINKAGE_PARALLEL_MIN_N)",
    )
    p.add_argument("--repeat", type=int, default=5, help="--thread-split: repetitions")
    p.add_argument("--json", help="write rows + conditions as JSON")
    p.add_argument("--markdown", help="write the table as Markdown")
    args = p.parse_args(argv)
    sizes = sorted(set(args.n + ([8192, 16384] if args.big else [])))
    info = machine_info()
    info["threads"] = args.threads
    info["data"] = "gaussian d=64, fp64 condensed"
    import fastcluster

    info["fastcluster"] = fastcluster.__version__
    if args.thread_split:
        info["load_before"] = _load()
        rows = run_thread_split(sizes, args.methods, args.threads, args.min_active, args.repeat)
        info["load_after"] = _load()
        columns = ["n", "method", "t1_s", "t2_s"]
        columns += [f"t2_min{mn}_s" for mn in args.min_active]
        columns += ["fc_s", "split", "x_fc_1t", "x_fc_2t", "load"]
        title = f"CPU linkage thread split: 1 vs {args.threads} threads vs fastcluster"
    else:
        rows = run(sizes, args.methods, args.threads, args.rounds_max_n if args.rounds else 0)
        columns = ["n", "method", "same_Z", "cpu_s", "strict_s", "f32_s", "f32_rel"]
        columns += ["rounds_s", "R"] if args.rounds else []
        columns += ["scipy_s", "fc_s", "x_scipy", "x_fc"]
        title = f"CPU linkage, {args.threads} threads (times: median seconds)"
    print("\n" + ", ".join(f"{k}={v}" for k, v in info.items()))
    print_table(rows, columns, title=title)
    write_results(
        rows,
        columns,
        info,
        "CPU linkage benchmark" + (" (thread split)" if args.thread_split else ""),
        json_path=args.json,
        markdown_path=args.markdown,
    )
    return 0


# ---- pytest-benchmark suite (pytest benchmarks/bench_linkage.py --benchmark-only) -----------------

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def d1k():
        return _distances(1024)

    @pytest.mark.parametrize("impl", ["simprune_cpu", "scipy", "fastcluster"])
    @pytest.mark.parametrize("method", ["average", "ward", "single"])
    def test_linkage_1k(benchmark, d1k, impl, method):
        import simprune
        from simprune.backends import has_kernel

        if impl == "simprune_cpu":
            if not has_kernel("linkage_cpu", "CPU"):
                pytest.skip("simprune._C has no linkage_cpu kernel")
            d = torch.from_numpy(d1k)
            benchmark(lambda: simprune.linkage(d, method, backend="cpu"))
        elif impl == "scipy":
            import scipy.cluster.hierarchy as sch

            benchmark(lambda: sch.linkage(d1k, method))
        else:
            import fastcluster

            benchmark(lambda: fastcluster.linkage(d1k, method))


if __name__ == "__main__":
    sys.exit(main())
