"""Whole-model plan time: simprune.prune vs Torch-Pruning's FPGMImportance, same model, same run.

    python benchmarks/bench_prune.py                       # ResNet-50, 224x224, -30 % MACs, CPU
    python benchmarks/bench_prune.py --model resnet18 --size 64 --repeat 3

simprune's "plan" is descriptors + distances + linkage + cut (the timings ``prune`` reports); its
"total" adds tracing (deep copy, Torch-Pruning's DependencyGraph, the shape-recording forward) and the
rewrite, and the rewrite's verification (simprune.pruning.verify); "total, verify=False" is the
same prune() without it, so their ratio is the verification's cost (target <= 1.2). Torch-Pruning's
"importance" is FPGMImportance over every group of the same DependencyGraph; its "step" is
MetaPruner construction (tracing) + ``step()`` (importance, ranking, rewrite) at a uniform channel
ratio. Medians of ``--repeat`` interleaved runs after one warm-up (verify=True and False alternate
which runs first). Speed is only reported, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

import torch
import torch_pruning as tp
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, median_time, print_table  # noqa: E402
from simprune.pruning import prune  # noqa: E402

PLAN_STAGES = ("descriptors", "distances", "linkage", "cut")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--macs-reduction", type=float, default=0.3)
    ap.add_argument("--tp-ratio", type=float, default=0.16, help="Torch-Pruning channel ratio")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    x = torch.randn(1, 3, args.size, args.size)
    info = machine_info()
    print("machine:", info)

    dg = tp.DependencyGraph().build_dependency(model, x)
    groups = list(dg.get_all_groups(ignored_layers=[model.fc] if hasattr(model, "fc") else []))
    fpgm = tp.importance.FPGMImportance()
    macs0, _ = tp.utils.count_ops_and_params(model, x)

    def tp_step() -> float:
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            m, x, importance=tp.importance.FPGMImportance(), pruning_ratio=args.tp_ratio,
            ignored_layers=[m.fc] if hasattr(m, "fc") else [],
        )  # fmt: skip
        pruner.step()
        return float(tp.utils.count_ops_and_params(m, x)[0])

    # One untimed warm-up of each side (first calls load the extension and lazy modules).
    prune(model, x, macs_reduction=args.macs_reduction, backend=args.backend, progress=False)
    [fpgm(g) for g in groups]
    tp_step()
    # Interleaved, so that load from other processes on a shared box hits both sides alike.
    plans, totals, unverified, imps, steps = [], [], [], [], []
    report = None
    tp_macs = macs0
    for i in range(args.repeat):
        # verify=True and verify=False alternate which runs first (right after Torch-Pruning's
        # runs, whose memory traffic the first one pays).
        for verify in (True, False) if i % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            _, _, rep = prune(
                model, x, macs_reduction=args.macs_reduction, backend=args.backend,
                progress=False, verify=verify,
            )  # fmt: skip
            if verify:
                report = rep
                totals.append(time.perf_counter() - t0)
                plans.append(sum(rep.timings[k] for k in PLAN_STAGES))
            else:
                unverified.append(time.perf_counter() - t0)
        print("simprune run:", {k: round(v, 3) for k, v in report.timings.items()}, flush=True)
        imps.append(median_time(lambda: [fpgm(g) for g in groups], repeat=1, warmup=0))
        t0 = time.perf_counter()
        tp_macs = tp_step()
        steps.append(time.perf_counter() - t0)
    assert report is not None
    print(
        f"\nsimprune.prune({args.model}, 1x3x{args.size}x{args.size}, "
        f"macs_reduction={args.macs_reduction}):"
    )
    print(report.table(max_rows=None))
    t_imp = statistics.median(imps)
    t_step = statistics.median(steps)
    tp_red = 1 - tp_macs / macs0

    plan_s = statistics.median(plans)
    total_s = statistics.median(totals)
    unverified_s = statistics.median(unverified)
    rows = [
        {
            "what": "simprune plan (descr+dist+linkage+cut)",
            "s": plan_s,
            "vs_fpgm_importance": t_imp / plan_s,
        },
        {"what": "simprune prune() total", "s": total_s, "vs_tp_step": t_step / total_s},
        {
            "what": "simprune prune() total, verify=False",
            "s": unverified_s,
            "verify_cost": total_s / unverified_s,
        },
        {"what": "TP FPGMImportance, all groups", "s": t_imp},
        {"what": f"TP MetaPruner+step (ratio {args.tp_ratio}, MACs -{tp_red:.1%})", "s": t_step},
    ]
    stages = {k: round(report.timings[k], 3) for k in report.timings}
    print_table(
        rows,
        ["what", "s", "vs_fpgm_importance", "vs_tp_step", "verify_cost"],
        title=f"{args.model} plan time, CPU, median of {args.repeat} (last run: {stages})",
    )


if __name__ == "__main__":
    main()
