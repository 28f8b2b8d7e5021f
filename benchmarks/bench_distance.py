"""Distance kernels against torch.cdist (and scipy cdist on CPU), measured in the same run.

    python benchmarks/bench_distance.py                 # CPU: n in {1k, 4k}, d in {2, 64, 1024}
    python benchmarks/bench_distance.py --device cuda   # GPU: n in {1k, 4k, 16k}
    python benchmarks/bench_distance.py --n 16384 --d 64 --json out.json --markdown out.md
    python benchmarks/bench_distance.py --d 64 256 1024 --impl cpu --threads 2 --repeat 9 --paired

Every row: one implementation at one size, fp32 input, fp32 square output (condensed where the row
says so), on the channel-like near-duplicate set (linkage.md 8.1 #3: mean 0.5, sigma 0.05, 5 % of rows
near-copies at noise 1e-3). Columns:

* ``ms``: median time (GPU: ``triton.testing.do_bench``; CPU: ``benchmarks.common.median_time``);
* ``x_cdist``: speed-up over ``torch.cdist`` (fp32, TF32 off) on the same device in the same run
  (``--paired``: the median of per-pair ratios, each implementation timed alternately with cdist);
* ``GB/s``: output bytes written / time; ``GFLOP/s``: 2 n^2 d / time (the GEMM-equivalent work of the
  full square, whatever the kernel actually computes);
* ``roof%`` (GPU only): max(write floor, compute floor) / time, with the write floor = output bytes /
  the card's datasheet bandwidth and the compute floor = n^2 d flops (upper triangle) at the peak of
  the precision the kernel uses (3xTF32: TF32 peak / 3; fp32 CUDA cores for direct differences);
* ``max_rel_err``: max relative error against the float64 reference over the pairs with a non-zero
  distance; ``exact_0``: whether every exact zero (the diagonal) came out exactly zero;
* ``repaired`` (Triton): pairs recomputed exactly by the repair kernel.
  Speed is never asserted: this script only reports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, median_time, print_table  # noqa: E402
from simprune import testing  # noqa: E402

# Datasheet peaks (dense): bytes/s and flop/s. TF32 tensor cores; fp32 CUDA cores (FMA = 2 flops).
PEAKS = {
    "H100": {"bw": 3.35e12, "tf32": 495e12, "fp32": 67e12, "fp64": 67e12},
    "H200": {"bw": 4.8e12, "tf32": 495e12, "fp32": 67e12, "fp64": 67e12},
    "A100": {"bw": 2.0e12, "tf32": 156e12, "fp32": 19.5e12, "fp64": 19.5e12},
}


def _card_peaks() -> dict | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return None


def _errors(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool]:
    """(max relative error over the pairs with a non-zero reference, exact zeros kept exactly?)"""
    got, ref = got.double().reshape(-1), ref.reshape(-1)
    err = (got - ref).abs()
    zeros_ok = not bool(((ref == 0) & (err != 0)).any())
    nz = ref != 0
    rel = float((err[nz] / ref[nz]).max()) if bool(nz.any()) else 0.0
    return rel, zeros_ok


def _timer(device: str, repeat: int = 3):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") / 1e3
    return lambda fn: median_time(fn, repeat=repeat, warmup=1, max_seconds=20.0)


def implementations(device: str, with_interpreter: bool):
    """(name, fn(x) -> result, precision used for the roofline, condensed?) available here."""
    import simprune

    impls = [("torch.cdist", lambda x: torch.cdist(x, x).square_(), "fp32", False)]
    avail = simprune.available_backends("pairwise_distance", device)
    for b in ("triton", "cuda", "cpu", "torch"):
        if b not in avail:
            continue
        if b == "triton" and device == "cpu" and not with_interpreter:
            continue
        prec = {"triton": "3xtf32", "cuda": "fp32", "cpu": "fp32", "torch": "fp64"}[b]
        impls.append(
            (f"simprune[{b}]", lambda x, b=b: simprune.pairwise_distance(x, backend=b), prec, False)
        )
        if b in ("triton", "cuda"):
            impls.append(
                (
                    f"simprune[{b}] condensed",
                    lambda x, b=b: simprune.pairwise_distance(x, condensed=True, backend=b),
                    prec,
                    True,
                )
            )
        if b == "triton":
            impls.append(
                (
                    "simprune[triton] fast",
                    lambda x: simprune.pairwise_distance(x, precision="fast", backend="triton"),
                    "tf32",
                    False,
                )
            )
    if device == "cpu":
        from scipy.spatial.distance import cdist

        impls.append(
            (
                "scipy cdist",
                lambda x: torch.from_numpy(cdist(x.numpy(), x.numpy(), "sqeuclidean")),
                "fp64",
                False,
            )
        )
    return impls


def _paired(base, fn, repeat: int) -> tuple[float, float]:
    """CPU: time ``base`` and ``fn`` alternately, ``repeat`` pairs (after one warm-up call each).

    Returns (median time of fn, median of the per-pair ratios base / fn): each pair runs within
    about a second, so a load that changes slowly on a shared machine cancels out of the ratio."""
    base()
    fn()
    times, ratios = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        times.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return statistics.median(times), statistics.median(ratios)


def run(
    ns,
    ds,
    device: str,
    with_interpreter: bool,
    scipy_budget: float,
    only=None,
    repeat: int = 3,
    paired: bool = False,
) -> list[dict]:
    import simprune

    torch.backends.cuda.matmul.allow_tf32 = False  # cdist's GEMM in full fp32
    timer = _timer(device, repeat)
    peaks = _card_peaks() if device == "cuda" else None
    rows = []
    for n in ns:
        for d in ds:
            x = torch.tensor(testing.channel_like(n, d, seed=0), dtype=torch.float32, device=device)
            ref = simprune.pairwise_distance_ref(x, None, "sqeuclidean", False, torch.float64)
            iu = None
            cdist_t = None
            cdist_fn = None
            for name, fn, prec, cond in implementations(device, with_interpreter):
                if only and name != "torch.cdist" and not any(o in name for o in only):
                    continue
                if name == "scipy cdist" and n * n * d > scipy_budget:
                    rows.append({"impl": name, "n": n, "d": d, "ms": "skipped (size)"})
                    continue
                out = fn(x)
                repaired = None
                if name.startswith("simprune[triton]"):
                    # The same call to the kernel itself, for its statistics (not timed).
                    from simprune.kernels.distance import pairwise_distance_triton

                    stats: dict[str, int] = {}
                    prec_mode = "fast" if name.endswith("fast") else "exact"
                    pairwise_distance_triton(
                        x, None, "sqeuclidean", cond, None, prec_mode, stats=stats
                    )
                    repaired = stats.get("flagged")
                if cond:
                    if iu is None:
                        iu = torch.triu_indices(n, n, offset=1, device=device)
                    err, zeros_ok = _errors(out.to(device), ref[iu[0], iu[1]])
                else:
                    err, zeros_ok = _errors(out.to(device), ref)
                del out
                ratio = None
                if paired and device == "cpu" and cdist_fn is not None:
                    t, ratio = _paired(cdist_fn, lambda fn=fn, x=x: fn(x), repeat)
                else:
                    t = timer(lambda fn=fn, x=x: fn(x))
                out_bytes = (n * (n - 1) // 2 if cond else n * n) * 4
                row = {
                    "impl": name,
                    "n": n,
                    "d": d,
                    "ms": round(t * 1e3, 4),
                    "GB/s": float(f"{out_bytes / t / 1e9:.4g}"),
                    "GFLOP/s": float(f"{2 * n * n * d / t / 1e9:.4g}"),
                    "max_rel_err": float(f"{err:.3g}"),
                    "exact_0": "yes" if zeros_ok else "no",
                    "repaired": "" if repaired is None else repaired,
                }
                if name == "torch.cdist":
                    cdist_t = t
                    cdist_fn = lambda fn=fn, x=x: fn(x)  # noqa: E731
                if ratio is not None:
                    row["x_cdist"] = round(ratio, 2)
                elif cdist_t:
                    row["x_cdist"] = round(cdist_t / t, 2)
                if peaks:
                    p = {"3xtf32": peaks["tf32"] / 3, "tf32": peaks["tf32"]}.get(
                        prec, peaks.get(prec)
                    )
                    floor = max(out_bytes / peaks["bw"], (n * n * d) / p if p else 0.0)
                    row["roof%"] = round(100 * floor / t, 1)
                rows.append(row)
            x = ref = None  # free before the next size
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def to_markdown(rows: list[dict], columns: list[str], info: dict) -> str:
    lines = [
        "# Distance benchmark",
        "",
        "Conditions: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, nargs="*", help="default: 1k 4k (CPU), 1k 4k 16k (GPU)")
    ap.add_argument("--d", type=int, nargs="*", default=[2, 64, 1024])
    ap.add_argument("--json", help="write rows + machine info here")
    ap.add_argument("--markdown", help="write a Markdown table here")
    ap.add_argument(
        "--interpreter",
        action="store_true",
        help="on CPU, also run the Triton kernels under TRITON_INTERPRET=1 (correctness only: slow)",
    )
    ap.add_argument(
        "--scipy-budget", type=float, default=2e9, help="skip scipy cdist above n*n*d (CPU time)"
    )
    ap.add_argument(
        "--impl",
        nargs="*",
        help="only the implementations whose name contains one of these (torch.cdist always runs)",
    )
    ap.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=3, help="CPU: timed calls per row (median)")
    ap.add_argument(
        "--paired",
        action="store_true",
        help="CPU: time each implementation alternately with torch.cdist; x_cdist is then the "
        "median of the per-pair ratios (robust to a slowly changing load on a shared machine)",
    )
    args = ap.parse_args(argv)
    if args.interpreter:
        os.environ["TRITON_INTERPRET"] = "1"
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = args.n or ([1024, 4096, 16384] if args.device == "cuda" else [1024, 4096])
    load_before = os.getloadavg()
    rows = run(
        ns,
        args.d,
        args.device,
        args.interpreter,
        args.scipy_budget,
        args.impl,
        args.repeat,
        args.paired,
    )
    info = machine_info()
    info["device"] = args.device
    info["threads"] = torch.get_num_threads()
    # Timings on a shared machine are only as good as its load: record it with them (uptime's
    # 1/5/15-minute load averages, before and after the run).
    info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    info["uptime_load_before"] = " ".join(f"{v:.2f}" for v in load_before)
    info["uptime_load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    cols = ["impl", "n", "d", "ms", "x_cdist", "GB/s", "GFLOP/s", "max_rel_err", "exact_0"]
    if args.device == "cuda":
        cols.insert(7, "roof%")
        cols.append("repaired")
    print_table(rows, cols, title=f"pairwise distance, fp32, channel-like data ({args.device})")
    print("conditions:", json.dumps(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(to_markdown(rows, cols, info))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
