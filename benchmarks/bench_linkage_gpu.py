"""GPU linkage: simprune's CUDA and Triton backends against scipy, fastcluster and the CPU backend,
measured in the same run (linkage.md 8.2 / 8.4).

    python benchmarks/bench_linkage_gpu.py                          # n in {1k, 4k, 16k}, all methods
    python benchmarks/bench_linkage_gpu.py --big                    # adds 32k and 65k (H100: 80 GB)
    python benchmarks/bench_linkage_gpu.py --n 4096 --methods average --backends cuda
    python benchmarks/bench_linkage_gpu.py --layers                 # ResNet-50-like set of layers
    python benchmarks/bench_linkage_gpu.py --json out.json --markdown out.md

Every row: one method at one n on the same float64 condensed distances (``torch.pdist`` in float64 on
the GPU of a Gaussian N(0, I) set with d = 64, linkage.md 8.1 #1), so only the clustering is timed.
Columns:

* ``cuda_s`` / ``triton_s``: ``simprune.linkage(d, method, backend=...)`` on the GPU tensor, API
  included (input checks, the square matrix, the rounds, the merge log's copy to the host, sort and
  relabel, Z back on the device); median of a few runs after a warm-up; the host-looped Triton
  path runs up to ``--triton-max-n``;
* ``cuda_f32_s``, ``f32_same_Z``, ``f32_rel``: the CUDA path with ``storage=torch.float32`` (half the
  memory and traffic), whether its Z[:, [0, 1, 3]] still equals scipy's (it may legitimately differ
  where two merges are within float32 rounding) and its largest relative height error against scipy
  (sorted heights);
* ``R``, ``widest``, ``mean_pr``: rounds, the most merges in one round and the mean merges per round
  (CUDA path's statistics; "MST" for single, which runs Boruvka);
* ``same_Z``: Z[:, [0, 1, 3]] equal to scipy's (where scipy ran) -- a benchmark of a wrong answer is
  void; ``twin``: bitwise equal to the CPU twin of the algorithm (n <= ``--twin-max-n``);
* ``scipy_s``, ``fc_s``, ``cpu_s``: scipy 1.17, fastcluster and simprune's C++ CPU backend (all
  threads), run up to ``--baseline-max-n``; above that, scipy and fastcluster are **extrapolated** as
  t(n) = t(n0) (n / n0)^2 from the largest measured n0 (NN-chain is Theta(n^2)) and marked ``~``;
* ``x_scipy``, ``x_fc``, ``x_cpu``: speed-ups of the CUDA path (> 1: the GPU is faster).

With ``--layers``: the ResNet-50-like set (53 layers, 64 to 2048 channels each): ``batched_s`` is
``simprune.linkage_batched`` (one launch, one thread block per layer), ``<backend>_s`` one
``simprune.linkage`` call per layer, ``scipy_s`` the loop of scipy calls (``x_scipy`` = scipy_s /
batched_s). Speed is never asserted: this script only reports.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, markdown_table, median_time, print_table, write_results  # noqa: E402
from simprune import testing  # noqa: E402

METHODS = ("single", "complete", "average", "weighted", "ward")


def _distances(n: int, device: str, dim: int = 64) -> torch.Tensor:
    x = torch.from_numpy(testing.gaussian(n, dim, seed=0)).to(device)
    return torch.pdist(x)  # float64, scipy's condensed order


def resnet50_widths() -> list[int]:
    """Output channels of the 53 convolutions of a ResNet-50 (stem, bottlenecks, downsamples)."""
    widths = [64]
    for blocks, mid in ((3, 64), (4, 128), (6, 256), (3, 512)):
        for b in range(blocks):
            widths += [mid, mid, 4 * mid] + ([4 * mid] if b == 0 else [])
    return widths


def _repeat(n: int) -> int:
    return 5 if n <= 4096 else 3


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import fastcluster
    import scipy.cluster.hierarchy as sch

    import simprune
    from simprune.backends import available_backends
    from simprune.hierarchy import linkage_rounds

    dev = "cuda"
    backends = [b for b in args.backends if b in available_backends("linkage", dev)]
    missing = sorted(set(args.backends) - set(backends))
    if missing:
        print(f"  backends not available here: {missing}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    ref: dict[str, tuple[int, float, float]] = {}  # method -> (n0, scipy_s, fc_s) for extrapolation
    for n in args.n:
        try:
            d = _distances(n, dev)
        except torch.OutOfMemoryError as e:
            print(f"  n={n}: distances do not fit ({e})", file=sys.stderr)
            continue
        d_np = d.cpu().numpy() if n <= max(args.baseline_max_n, args.twin_max_n) else None
        rep = _repeat(n)
        for method in args.methods:
            row: dict[str, Any] = {"n": n, "method": method}
            zs = None
            if n <= args.baseline_max_n and d_np is not None:
                zs = sch.linkage(d_np, method)
                # CPU baselines take seconds from 4k on: one timed run there (after the one above).
                br = dict(repeat=3, warmup=1) if n < 4096 else dict(repeat=1, warmup=0)
                row["scipy_s"] = median_time(lambda m=method, x=d_np: sch.linkage(x, m), **br)
                row["fc_s"] = median_time(lambda m=method, x=d_np: fastcluster.linkage(x, m), **br)
                dc = torch.from_numpy(d_np)
                row["cpu_s"] = median_time(
                    lambda m=method, x=dc: simprune.linkage(x, m, backend="cpu"), **br
                )
                ref[method] = (n, row["scipy_s"], row["fc_s"])
            elif method in ref:
                n0, s0, f0 = ref[method]
                row["scipy_s"] = s0 * (n / n0) ** 2
                row["fc_s"] = f0 * (n / n0) ** 2
                row["extrap"] = "~"
            for b in backends:
                if b == "triton" and n > args.triton_max_n:
                    continue  # the host-looped path: one synchronisation per round
                try:
                    z = simprune.linkage(d, method, backend=b).cpu().numpy()
                    row[f"{b}_s"] = median_time(
                        lambda m=method, bb=b, x=d: simprune.linkage(x, m, backend=bb),
                        repeat=rep,
                        device=dev,
                    )
                except (RuntimeError, torch.OutOfMemoryError) as e:
                    row[f"{b}_s"] = f"error: {str(e)[:60]}"
                    continue
                if b == "cuda" and method == "single":
                    row["R"] = "MST"  # single runs Boruvka (<= log2 n passes), not the rounds
                elif b == "cuda":
                    _, st = torch.ops.simprune.linkage_rounds_cuda(d, method)
                    r, _, widest = st.cpu().tolist()
                    row.update(R=r, widest=widest, mean_pr=(n - 1) / r)
                if b == "cuda":
                    _float32_storage(row, d, method, zs, rep)
                    if zs is not None:
                        row["same_Z"] = bool(np.array_equal(z[:, [0, 1, 3]], zs[:, [0, 1, 3]]))
                    if n <= args.twin_max_n and d_np is not None:
                        zt = linkage_rounds(torch.from_numpy(d_np), method)[0].numpy()
                        row["twin"] = bool(np.array_equal(z.view(np.uint64), zt.view(np.uint64)))
            t = row.get("cuda_s")
            if isinstance(t, float):
                for key, col in (("scipy_s", "x_scipy"), ("fc_s", "x_fc"), ("cpu_s", "x_cpu")):
                    if key in row:
                        row[col] = row[key] / t
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)
        del d
        torch.cuda.empty_cache()
    return rows


def _float32_storage(row: dict[str, Any], d: torch.Tensor, method: str, zs, rep: int) -> None:
    """The CUDA path with float32 storage: time, and agreement with scipy where scipy ran."""
    import simprune

    f32 = torch.float32
    try:
        z = simprune.linkage(d, method, storage=f32, backend="cuda").cpu().numpy()
        row["cuda_f32_s"] = median_time(
            lambda: simprune.linkage(d, method, storage=f32, backend="cuda"),
            repeat=rep,
            device="cuda",
        )
    except (RuntimeError, torch.OutOfMemoryError) as e:
        row["cuda_f32_s"] = f"error: {str(e)[:60]}"
        return
    if zs is not None:
        row["f32_same_Z"] = bool(np.array_equal(z[:, [0, 1, 3]], zs[:, [0, 1, 3]]))
        hs, h = np.sort(zs[:, 2]), np.sort(z[:, 2])
        row["f32_rel"] = float(np.max(np.abs(h - hs) / np.maximum(hs, 1e-300)))


def run_layers(args: argparse.Namespace) -> dict[str, Any]:
    import scipy.cluster.hierarchy as sch

    import simprune

    widths = resnet50_widths()
    ds = [_distances(w, "cuda", dim=64) for w in widths]
    ds_np = [d.cpu().numpy() for d in ds]
    out: dict[str, Any] = {"layers": len(widths), "channels": sum(widths), "method": "average"}

    def gpu_loop(b: str) -> None:
        for d in ds:
            simprune.linkage(d, "average", backend=b)

    try:
        zb = simprune.linkage_batched(ds, "average", backend="cuda")
        out["batched_s"] = median_time(
            lambda: simprune.linkage_batched(ds, "average", backend="cuda"), repeat=3, device="cuda"
        )
        out["batched_same_Z"] = all(
            np.array_equal(z.cpu().numpy()[:, [0, 1, 3]], sch.linkage(x, "average")[:, [0, 1, 3]])
            for z, x in zip(zb, ds_np, strict=True)
        )
    except Exception as e:  # noqa: BLE001 - report, don't abort the run
        out["batched_s"] = f"error: {str(e)[:60]}"
    for b in args.backends:
        try:
            out[f"{b}_s"] = median_time(lambda bb=b: gpu_loop(bb), repeat=3, device="cuda")
        except Exception as e:  # noqa: BLE001 - report, don't abort the run
            out[f"{b}_s"] = f"error: {str(e)[:60]}"
    out["scipy_s"] = median_time(lambda: [sch.linkage(x, "average") for x in ds_np], repeat=3)
    if isinstance(out.get("batched_s"), float):
        out["x_scipy"] = out["scipy_s"] / out["batched_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--big", action="store_true", help="add n = 32768 and 65536")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--backends", nargs="+", default=["cuda", "triton"], choices=["cuda", "triton"])
    p.add_argument("--baseline-max-n", type=int, default=4096, help="largest n for scipy/fc/cpu")
    p.add_argument("--twin-max-n", type=int, default=4096, help="largest n for the twin check")
    p.add_argument("--triton-max-n", type=int, default=4096, help="largest n for backend triton")
    p.add_argument("--layers", action="store_true", help="the ResNet-50-like set of layers")
    p.add_argument("--json", help="write rows + conditions as JSON")
    p.add_argument("--markdown", help="write the table as Markdown")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_linkage_gpu: no CUDA device", file=sys.stderr)
        return 2
    args.n = sorted(set(args.n + ([32768, 65536] if args.big else [])))
    info = machine_info()
    info["data"] = "gaussian d=64, fp64 condensed (torch.pdist on the GPU)"
    import fastcluster

    info["fastcluster"] = fastcluster.__version__
    rows = run(args)
    columns = ["n", "method", "same_Z", "twin", "R", "widest", "mean_pr"]
    columns += [f"{b}_s" for b in args.backends]
    if "cuda" in args.backends:
        columns += ["cuda_f32_s", "f32_same_Z", "f32_rel"]
    columns += ["cpu_s", "scipy_s", "fc_s", "extrap", "x_scipy", "x_fc", "x_cpu"]
    print("\n" + ", ".join(f"{k}={v}" for k, v in info.items()))
    print_table(rows, columns, title="GPU linkage (times: median seconds; ~ = extrapolated)")
    layers = run_layers(args) if args.layers else None
    if layers:
        print_table([layers], list(layers), title="ResNet-50-like layers (average linkage)")
    write_results(
        rows,
        columns,
        info,
        "GPU linkage benchmark",
        json_path=args.json,
        markdown_path=args.markdown,
        extra={"layers": layers},
        extra_markdown="\n" + markdown_table([layers], list(layers)) if layers else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
