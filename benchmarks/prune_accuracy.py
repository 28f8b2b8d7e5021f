"""Accuracy right after pruning (no fine-tuning) of the shipped trained MNIST ResNet, per setting.

    python benchmarks/prune_accuracy.py [--macs 0.3 0.5]

Rows: simprune with each merge mode (ls / sum / none) and a few metrics, and Torch-Pruning's
MetaPruner with FPGMImportance and MagnitudeImportance (L2) at a uniform channel ratio found by
bisection to the same MACs. Test accuracy on the shipped 1000-image MNIST test split. One trained
model, no fine-tuning, no seeds to vary: indicative only (metric.md section 5 asks for the full
study).

Superseded by ``scripts/run_ablation.py`` / docs/results.md: without BatchNorm recalibration these
accuracies mostly measure stale running statistics (every criterion is near chance at -50 % MACs
and recovers to 62-93 % after recalibration), so they do not rank the criteria.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import torch_pruning as tp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, print_table  # noqa: E402
from simprune.datasets import load_mnist5k  # noqa: E402
from simprune.pruning import prune  # noqa: E402
from simprune.zoo import evaluate, load_baseline  # noqa: E402


def _tp_at_macs(model, x, imp_factory, target: float):
    macs0 = tp.utils.count_ops_and_params(model, x)[0]

    def run(ratio: float):
        m = copy.deepcopy(model)
        pr = tp.pruner.MetaPruner(
            m, x, importance=imp_factory(), pruning_ratio=ratio, ignored_layers=[m.fc]
        )
        pr.step()
        return m, 1 - tp.utils.count_ops_and_params(m, x)[0] / macs0

    lo, hi = 0.0, 0.95
    best = run(0.0)
    for _ in range(14):
        mid = (lo + hi) / 2
        m, red = run(mid)
        if abs(red - target) < abs(best[1] - target):
            best = (m, red)
        if red < target:
            lo = mid
        else:
            hi = mid
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs", type=float, nargs="+", default=[0.3, 0.5])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    model = load_baseline()
    xt, yt = load_mnist5k("test")
    x = xt[:1]
    base = evaluate(model, xt, yt)
    rows = [{"setting": "unpruned", "MACs_red": 0.0, "acc": base}]
    for target in args.macs:
        for metric in ("gaussian", "wasserstein", "cosine"):
            for merge in ("ls", "sum", False):
                if metric != "gaussian" and merge != "ls":
                    continue
                pm, _, rep = prune(
                    model, x, macs_reduction=target, metric=metric, merge=merge, progress=False
                )
                rows.append(
                    {
                        "setting": f"simprune {metric}, merge={merge or 'none'}",
                        "MACs_red": rep.macs_reduction,
                        "acc": evaluate(pm, xt, yt),
                    }
                )
        for name, factory in (
            ("TP FPGM (uniform ratio)", tp.importance.FPGMImportance),
            ("TP L2 magnitude (uniform ratio)", lambda: tp.importance.MagnitudeImportance(p=2)),
        ):
            m, red = _tp_at_macs(model, x, factory, target)
            rows.append({"setting": name, "MACs_red": red, "acc": evaluate(m, xt, yt)})
    print("machine:", machine_info())
    print_table(rows, ["setting", "MACs_red", "acc"], title="MNIST ResNet (shipped), no fine-tune")


if __name__ == "__main__":
    main()
