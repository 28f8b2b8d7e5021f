"""Cost of calibration-driven pruning: the statistics pass + the data-merge solves, against a plain
forward over the same images, and the cost of very wide groups.

    python benchmarks/bench_calibration.py                  # ResNet-50, 224x224, 256 images, CPU
    python benchmarks/bench_calibration.py --threads 1 2 \
        --json benchmarks/results/calibration_cpu.json --markdown benchmarks/results/calibration_cpu.md
    python benchmarks/bench_calibration.py --images 64 --wide 1024 4096 14336

1. **ResNet-50** (random weights; cost does not depend on them), ``--images`` images at 224x224 in
   batches of ``--batch``, for each ``--threads`` count: a plain ``model(x)`` over all of them (eval
   mode, no gradient) against :func:`simprune.pruning.stats.collect_stats` (one pass with the
   consumer hooks: every group's mean and covariance) + :func:`simprune.pruning.merge.
   data_merge_blocks` (what ``prune`` solves: every group's ridge Cholesky solves for the kept sets
   of a -30 % MACs plan, as dense blocks), interleaved
   (forward, statistics, solves, forward, ...: the same load on all), medians of ``--repeat``, the
   1-minute load average beside every median. The ratio (issue 15's target: <= 2) is the price of
   the data over a forward pass. Also the statistics' Gram multiply-adds per image (what the pass
   adds to the forward: rows x the computed blocks of the (C + 1)^2 Gram) against the forward's
   MACs (Torch-Pruning's count).
2. **Wide groups** (``--wide C ...``): Linear(256 -> C) -> ReLU -> Linear(C -> 256) with
   ``--tokens`` tokens: the statistics pass (C^2 per sample, C^2 float64 accumulators: 1.64 GB at
   C = 14336, plus a float32 (C + 1)^2 work Gram) and the data merge for half the channels kept
   (:func:`data_merge_blocks`: one Cholesky of C/2 with C/2 right-hand sides, O(C^3), and the
   |R| x |K| coefficients as one dense block), each as seconds and against the forward of the same
   tokens (C^2 per token against the two layers' 2 x 256 x C: a ratio of about C / 512 for this
   small block, about 1.2 for a LLaMA MLP, C / (3 x 4096)); and what a smaller ``--wide-budget``
   (default 1 GiB) does: one pass, or the refusal of a group whose accumulators do not fit (raised
   before any forward).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, print_table, write_results  # noqa: E402
from simprune.pruning import prune  # noqa: E402
from simprune.pruning.groups import build_dependency_graph, collect_groups  # noqa: E402
from simprune.pruning.merge import data_merge_blocks  # noqa: E402
from simprune.pruning.stats import (  # noqa: E402
    DEFAULT_MEMORY_BUDGET,
    _gram_edges,
    accumulator_bytes,
    collect_stats,
)

COLUMNS = ["section", "threads", "step", "seconds", "x forward", "load 1 min", "note"]


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _forward(model: nn.Module, x: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for b in torch.split(x, batch):
            model(b)


def _gram_macs(c: int) -> int:
    """Multiply-adds per sample of the statistics' Gram: the blocks of the (C + 1)^2 product on and
    above the diagonal (the ones column gives the sums)."""
    e = _gram_edges(c + 1)
    return sum((e[i + 1] - e[i]) * (c + 1 - e[i]) for i in range(len(e) - 1))


def _stats_and_solves(
    model: nn.Module, groups: list, x: torch.Tensor, ex: torch.Tensor, batch: int, kept: dict
) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    st = collect_stats(model, groups, x, ex, batch_size=batch)
    t1 = time.perf_counter()
    items = [(g, st[g.root_name], kept[g.root_name]) for g in groups if g.root_name in kept]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data_merge_blocks(items)
    return t1 - t0, time.perf_counter() - t1, st


def _med(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def resnet50(args: argparse.Namespace, raw: dict[str, Any]) -> list[dict[str, Any]]:
    import torch_pruning as tp

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    ex = torch.randn(1, 3, args.size, args.size)
    x = torch.randn(args.images, 3, args.size, args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, plan, _ = prune(model, ex, macs_reduction=0.3, verify=False, progress=False)
        fwd_macs = float(tp.utils.count_ops_and_params(model, ex)[0])
    kept = {gp.root: gp.kept for gp in plan.groups if gp.removed}
    dg = build_dependency_graph(model, ex)
    groups = collect_groups(dg, model)[0]
    acc = sum(accumulator_bytes(g.n_channels) for g in groups)
    rows: list[dict[str, Any]] = []
    shape = f"ResNet-50 {args.images} x 3 x {args.size} x {args.size}, batch {args.batch}"
    for th in args.threads:
        torch.set_num_threads(th)
        fwd, stat, solve, loads = [], [], [], [_load()]
        st: dict = {}
        for _ in range(args.repeat):  # interleaved: the same load on both
            t0 = time.perf_counter()
            _forward(model, x, args.batch)
            fwd.append(time.perf_counter() - t0)
            s, v, st = _stats_and_solves(model, groups, x, ex, args.batch, kept)
            stat.append(s)
            solve.append(v)
            loads.append(_load())
        gram = sum(s.n * _gram_macs(s.n_channels) for s in st.values()) / args.images
        med, ms, mv = _med(fwd), _med(stat), _med(solve)
        load = f"{min(loads)}-{max(loads)}"
        raw[f"resnet50_threads{th}"] = {
            "forward_s": fwd,
            "statistics_s": stat,
            "solves_s": solve,
            "load_1min": loads,
            "forward_macs_per_image": fwd_macs,
            "gram_macs_per_image": gram,
            "groups": len(groups),
            "groups_pruned": len(kept),
            "samples_per_group": {k: v.n for k, v in st.items()},
        }
        note = f"{len(groups)} groups, {len(kept)} pruned at -30 % MACs; medians of {len(fwd)}"
        for step, sec, extra in [
            ("plain forward", med, f"{fwd_macs / 1e9:.2f} GMAC/image; {note}"),
            (
                "statistics pass (forward + hooks)",
                ms,
                f"Gram {gram / 1e9:.2f} GMAC/image ({gram / fwd_macs:.2f} x forward MACs); "
                f"accumulators {acc / 2**20:.0f} MiB float64",
            ),
            ("data-merge solves (all groups)", mv, ""),
            ("statistics + solves", ms + mv, "issue 15 target: <= 2 x forward"),
        ]:
            rows.append(
                {
                    "section": shape,
                    "threads": th,
                    "step": step,
                    "seconds": round(sec, 3),
                    "x forward": round(sec / med, 3),
                    "load 1 min": load,
                    "note": extra,
                }
            )
    return rows


def wide(args: argparse.Namespace, raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in args.wide:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, c), nn.ReLU(), nn.Linear(c, 256)).eval()
        x = torch.randn(args.tokens, 256)
        groups = collect_groups(build_dependency_graph(model, x[:1]), model)[0]
        g = next(gr for gr in groups if gr.root_name == "0")
        # A smaller budget: one pass, or the refusal (raised before any forward).
        try:
            collect_stats(model, [g], x[:1], x[:1], memory_budget=args.wide_budget)
            small = f"fits memory_budget={args.wide_budget / 2**30:.2f} GiB"
        except ValueError as e:
            small = f"memory_budget={args.wide_budget / 2**30:.2f} GiB refuses it: {e}"
        t0 = time.perf_counter()
        _forward(model, x, args.tokens)
        tf = time.perf_counter() - t0
        load = _load()
        t0 = time.perf_counter()
        st = collect_stats(model, [g], x, x[:1], batch_size=args.tokens)["0"]
        ts = time.perf_counter() - t0
        # The data merge for half the channels kept: one Cholesky of C/2, C/2 right-hand sides.
        t0 = time.perf_counter()
        data_merge_blocks([(g, st, list(range(0, c, 2)))])
        tv = time.perf_counter() - t0
        entries = (c // 2) * (c - c // 2)
        merges = f"{entries / 1e6:.1f}M coefficients (one dense |R| x |K| block)"
        mem = accumulator_bytes(c) + 4 * (c + 1) ** 2
        section = f"wide Linear(256 -> {c}) -> ReLU -> Linear, {args.tokens} tokens"
        common = {"section": section, "threads": torch.get_num_threads(), "load 1 min": load}
        rows += [
            {**common, "step": "forward", "seconds": round(tf, 4), "x forward": 1.0},
            {
                **common,
                "step": "statistics pass",
                "seconds": round(ts, 3),
                "x forward": round(ts / tf, 1),
                "note": f"float64 accumulators {accumulator_bytes(c) / 2**20:.0f} MiB + float32 "
                f"work Gram {4 * (c + 1) ** 2 / 2**20:.0f} MiB ({mem / 2**30:.2f} GiB); "
                f"default memory_budget {DEFAULT_MEMORY_BUDGET / 2**30:.0f} GiB: 1 pass; {small}",
            },
            {
                **common,
                "step": "data merge (C/2 kept)",
                "seconds": round(tv, 3),
                "x forward": round(tv / tf, 1),
                "note": merges,
            },
        ]
        raw[f"wide_{c}"] = {"forward_s": tf, "statistics_s": ts, "solve_s": tv, "load": load}
        del st
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts to run")
    ap.add_argument("--wide", type=int, nargs="*", default=[1024, 4096, 14336])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--wide-budget", type=int, default=1 << 30, help="bytes (the refusal demo)")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    args.threads = args.threads or [torch.get_num_threads()]
    info = machine_info()
    info["threads"] = " ".join(str(t) for t in args.threads)
    info["loadavg_before"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(info)
    raw: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if not args.skip_resnet:
        rows += resnet50(args, raw)
        print_table(rows, COLUMNS[:-1], title="ResNet-50: statistics + solves against a forward")
    if args.wide:
        torch.set_num_threads(args.threads[-1])
        w = wide(args, raw)
        print_table(w, COLUMNS[:-1], title="Wide groups")
        rows += w
    info["loadavg_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load after: {info['loadavg_after']}")
    write_results(
        rows,
        COLUMNS,
        info,
        "Calibration statistics pass + data-merge solves (CPU)",
        json_path=args.json,
        markdown_path=args.markdown,
        extra={"raw": raw},
    )


if __name__ == "__main__":
    main()
