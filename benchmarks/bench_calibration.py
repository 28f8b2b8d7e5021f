"""Cost of calibration-driven pruning: the statistics pass + the data-merge solves, against a plain
forward over the same images, and the cost of very wide groups.

    python benchmarks/bench_calibration.py                  # ResNet-50, 224x224, 256 images, CPU
    python benchmarks/bench_calibration.py --images 64 --wide 1024 4096 14336

1. **ResNet-50** (random weights; cost does not depend on them), ``--images`` images at 224x224 in
   batches of ``--batch``: a plain ``model(x)`` over all of them (eval mode, no gradient) against
   :func:`simprune.pruning.stats.collect_stats` (one pass with the consumer hooks: every group's
   mean and covariance) + :func:`simprune.pruning.merge.data_merges` (every group's ridge Cholesky
   solves for the kept sets of a -30 % MACs plan), interleaved, medians of ``--repeat``. The ratio
   (target <= 2) is the price of the data over a forward pass; speed is only reported.
2. **Wide groups** (``--wide C ...``): Linear(256 -> C) -> ReLU -> Linear(C -> 256) with
   ``--tokens`` tokens: the statistics pass (C^2 per sample, C^2 float64 accumulators: 1.64 GB at
   C = 14336) and the solve for half the channels kept (one Cholesky of C/2, O(C^3)), each as
   seconds and against the forward of the same tokens (C^2 per token against the two layers' 2 x 256 x C:
   a ratio of about C / 512 for this small block, about 1.2 for a LLaMA MLP, C / (3 x 4096)); the
   plan entries (|R| x |K|) and, up to ``MAX_MERGE_ENTRIES``, the time of :func:`data_merges` with
   them (beyond it a group keeps the descriptor merge).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, print_table  # noqa: E402
from simprune.pruning import prune  # noqa: E402
from simprune.pruning.groups import build_dependency_graph, collect_groups  # noqa: E402
from simprune.pruning.merge import (  # noqa: E402
    MAX_MERGE_ENTRIES,
    data_merges,
    ridge_solve_batched,
)
from simprune.pruning.stats import accumulator_bytes, collect_stats  # noqa: E402


def _forward(model: nn.Module, x: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for b in torch.split(x, batch):
            model(b)


def _stats_and_solves(
    model: nn.Module, groups: list, x: torch.Tensor, ex: torch.Tensor, batch: int, kept: dict
) -> tuple[float, float]:
    t0 = time.perf_counter()
    st = collect_stats(model, groups, x, ex, batch_size=batch)
    t1 = time.perf_counter()
    items = [(g, st[g.root_name], kept[g.root_name]) for g in groups if g.root_name in kept]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data_merges(items)
    return t1 - t0, time.perf_counter() - t1


def resnet50(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    ex = torch.randn(1, 3, args.size, args.size)
    x = torch.randn(args.images, 3, args.size, args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, plan, _ = prune(model, ex, macs_reduction=0.3, verify=False, progress=False)
    kept = {gp.root: gp.kept for gp in plan.groups if gp.removed}
    dg = build_dependency_graph(model, ex)
    groups = collect_groups(dg, model)[0]
    fwd, stat, solve = [], [], []
    for _ in range(args.repeat):  # interleaved: the same load on both
        t0 = time.perf_counter()
        _forward(model, x, args.batch)
        fwd.append(time.perf_counter() - t0)
        s, v = _stats_and_solves(model, groups, x, ex, args.batch, kept)
        stat.append(s)
        solve.append(v)
    med = sorted(fwd)[len(fwd) // 2]
    ms = sorted(stat)[len(stat) // 2]
    mv = sorted(solve)[len(solve) // 2]
    acc = sum(accumulator_bytes(g.n_channels) for g in groups)
    print(
        f"\nResNet-50, {args.images} images {args.size}x{args.size}, batch {args.batch}, "
        f"{len(groups)} groups ({len(kept)} pruned at -30 % MACs), accumulators "
        f"{acc / 2**20:.0f} MiB float64; medians of {len(fwd)}\n"
    )
    cols = ["step", "seconds", "x forward"]
    table = [
        ["plain forward", f"{med:.2f}", "1.00"],
        ["statistics pass (forward + hooks)", f"{ms:.2f}", f"{ms / med:.2f}"],
        ["data-merge solves (all groups)", f"{mv:.2f}", f"{mv / med:.2f}"],
        ["statistics + solves", f"{ms + mv:.2f}", f"{(ms + mv) / med:.2f}"],
    ]
    print_table([dict(zip(cols, r, strict=True)) for r in table], cols)


def wide(args: argparse.Namespace) -> None:
    rows = []
    for c in args.wide:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, c), nn.ReLU(), nn.Linear(c, 256)).eval()
        x = torch.randn(args.tokens, 256)
        groups = collect_groups(build_dependency_graph(model, x[:1]), model)[0]
        g = next(gr for gr in groups if gr.root_name == "0")
        t0 = time.perf_counter()
        _forward(model, x, args.tokens)
        tf = time.perf_counter() - t0
        t0 = time.perf_counter()
        st = collect_stats(model, [g], x, x[:1], batch_size=args.tokens)["0"]
        ts = time.perf_counter() - t0
        # The solve alone (B for half the channels kept: one Cholesky of C/2, C/2 right-hand sides).
        k = torch.arange(0, c, 2)
        r = torch.arange(1, c, 2)
        s_kk, s_kr = st.cov[k][:, k], st.cov[k][:, r]
        t0 = time.perf_counter()
        ridge_solve_batched([(s_kk, s_kr, 1e-6 * float(s_kk.diagonal().mean()))], s_kk.device)
        tv = time.perf_counter() - t0
        entries = (c // 2) * (c - c // 2)
        tp_ = "-"
        if entries <= MAX_MERGE_ENTRIES:
            t0 = time.perf_counter()
            data_merges([(g, st, k.tolist())])
            tp_ = f"{time.perf_counter() - t0:.2f}"
        rows.append(
            [
                str(c),
                f"{accumulator_bytes(c) / 2**20:.0f} MiB",
                f"{tf:.3f}",
                f"{ts:.2f} ({ts / tf:.0f}x)",
                f"{tv:.2f}",
                f"{entries / 1e6:.1f}M",
                tp_,
            ]
        )
        del st, s_kk, s_kr
    print(f"\nWide groups: Linear(256 -> C) -> ReLU -> Linear(C -> 256), {args.tokens} tokens\n")
    cols = [
        "C",
        "accumulators",
        "forward s",
        "statistics s (x fwd)",
        "solve s (C/2 kept)",
        "plan entries",
        "data_merges s (solve + entries)",
    ]
    print_table([dict(zip(cols, r, strict=True)) for r in rows], cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--wide", type=int, nargs="*", default=[1024, 4096, 14336])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print({k: info[k] for k in list(info)[:8]})
    print(f"torch threads {torch.get_num_threads()}; load {os.getloadavg()}")
    if not args.skip_resnet:
        resnet50(args)
    if args.wide:
        wide(args)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
