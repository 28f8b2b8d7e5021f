"""Pruned-model latency: the original vs the model simprune.prune returns, next to the MACs ratio.

    python -m benchmarks.bench_latency                       # ResNet-50 + MobileNetV2, 224x224, CPU
    python -m benchmarks.bench_latency --models resnet50 --batches 1 --repeat 20
    python -m benchmarks.bench_latency --quick               # 64x64 inputs, few repeats (smoke run)

Users judge pruning by real speed-up, not by MACs. For each model (torchvision, random weights, eval
mode, ``torch.inference_mode``) and each target (-30 % and -50 % MACs, global cut, with and without
``round_to=8``), the pruned model and the original run the same input at batch 1 and batch 32;
forward times are medians of ``--repeat`` runs after warm-up (``benchmarks.common.median_time``), the
original and the pruned model measured one after the other in the same run. Columns:

* ``speedup``: original time / pruned time (> 1: the pruned model is faster);
* ``macs_x``: original MACs / pruned MACs (Torch-Pruning's counter on both): the speed-up MACs promise;
* ``params_x``: original / pruned parameter count;
* ``orig_ms``, ``pruned_ms``: median forward time in milliseconds.

Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, median_time, print_table, write_results  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2")
COLUMNS = [
    "speedup",
    "macs_x",
    "params_x",
    "model",
    "target",
    "round_to",
    "batch",
    "orig_ms",
    "pruned_ms",
    "widths_div8",
]


def _forward_ms(model: nn.Module, x: torch.Tensor, repeat: int, device: str) -> float:
    def fwd() -> None:
        with torch.inference_mode():
            model(x)

    return 1e3 * median_time(fwd, repeat=repeat, warmup=2, device=device, max_seconds=60.0)


def _widths_div8(model: nn.Module) -> str:
    # How many conv/linear output widths are multiples of 8 (what round_to=8 is for).
    outs = [
        m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    return f"{sum(o % 8 == 0 for o in outs)}/{len(outs)}"


def run(
    models: list[str],
    *,
    size: int = 224,
    reductions: tuple[float, ...] = (0.3, 0.5),
    round_tos: tuple[int | None, ...] = (None, 8),
    batches: tuple[int, ...] = (1, 32),
    repeat: int = 10,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One row per (model, target, round_to, batch); see the module docstring."""
    import torch_pruning as tp
    import torchvision

    from simprune.pruning import prune

    warnings.simplefilter("ignore")
    rows: list[dict[str, Any]] = []
    for name in models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval().to(device)
        x1 = torch.randn(1, 3, size, size, device=device)
        macs0, params0 = tp.utils.count_ops_and_params(model, x1)
        for red in reductions:
            for rt in round_tos:
                pruned, _, report = prune(
                    model, x1, macs_reduction=red, round_to=rt, progress=False
                )
                pruned.eval()
                macs1, params1 = tp.utils.count_ops_and_params(pruned, x1)
                for b in batches:
                    x = torch.randn(b, 3, size, size, device=device)
                    # The original is re-measured beside each pruned model: on a shared machine
                    # only a pair measured under the same load makes an honest ratio.
                    o = _forward_ms(model, x, repeat, device)
                    p = _forward_ms(pruned, x, repeat, device)
                    rows.append(
                        {
                            "model": name,
                            "target": f"-{red:.0%} MACs",
                            "round_to": rt if rt is not None else "-",
                            "batch": b,
                            "size": size,
                            "orig_ms": o,
                            "pruned_ms": p,
                            "speedup": o / p,
                            "macs_x": macs0 / macs1,
                            "params_x": params0 / params1,
                            "macs_red_simprune": round(report.macs_reduction, 3),
                            "widths_div8": _widths_div8(pruned),
                            "repeat": repeat,
                        }
                    )
                    print(
                        f"  {name} -{red:.0%} round_to={rt} b={b}: {o:.1f} -> {p:.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                del pruned
    return rows


def suite(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    """The report's tables (see ``benchmarks/report.py``)."""
    if quick:
        rows = run(
            ["resnet50"], size=64, reductions=(0.3,), batches=(1, 8), repeat=3, device=device
        )
    else:
        rows = run(list(MODELS), size=224, repeat=5 if device == "cpu" else 30, device=device)
    size = rows[0]["size"] if rows else "?"
    return [
        {
            "name": "latency",
            "title": f"Pruned-model latency ({device}, {size}x{size}, median ms; "
            "speedup = original / pruned, macs_x = MACs ratio)",
            "columns": COLUMNS,
            "rows": rows,
        }
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--reductions", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="ResNet-50, 64x64, -30 %%, batch 1 and 8")
    ap.add_argument("--json", help="write rows + conditions as JSON")
    ap.add_argument("--markdown", help="write the table as Markdown")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.size, args.batches, args.reductions, args.repeat = (
            ["resnet50"],
            64,
            [1, 8],
            [0.3],
            3,
        )
    rows = run(
        args.models,
        size=args.size,
        reductions=tuple(args.reductions),
        batches=tuple(args.batches),
        repeat=args.repeat,
        device=args.device,
    )
    info = machine_info()
    info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print_table(
        rows, COLUMNS, title=f"Pruned-model latency ({args.device}, {args.size}x{args.size})"
    )
    print("conditions:", json.dumps(info))
    write_results(
        rows,
        COLUMNS,
        info,
        f"Pruned-model latency ({args.device})",
        json_path=args.json,
        markdown_path=args.markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
