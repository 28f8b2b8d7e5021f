"""Command line: ``simprune demo | info | prune`` (``python -m simprune ...``)."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    if not args.engine:
        from .demo import DEMO_CRITERIA, run_demo

        run_demo(
            args.out,
            macs=args.macs,
            criteria=args.criteria or DEMO_CRITERIA,
            finetune_images=None if args.finetune_images == 0 else args.finetune_images,
            seed=args.seed,
            threads=args.threads,
            progress=not args.quiet,
            plot=not args.no_plot,
        )
        return 0
    from .engine_demo import run_engine_demo

    rows = run_engine_demo(
        args.model,
        method=args.method,
        max_layers=args.max_layers,
        scipy_baseline=not args.no_scipy,
    )
    if not args.no_scipy and not all(r["same"] for r in rows):
        print("error: some layer's dendrogram differs from scipy's", file=sys.stderr)
        return 1
    return 0


def _info(args: argparse.Namespace) -> int:
    from .backends import backend_info

    print(json.dumps(backend_info(), indent=2))
    return 0


def _selfcheck(args: argparse.Namespace) -> int:
    from .selfcheck import format_rows, selfcheck

    rows = selfcheck(args.device, args.backend)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": _jsonable_info(), "rows": rows}, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


def _jsonable_info() -> dict:
    from .backends import backend_info

    return json.loads(json.dumps(backend_info(), default=str))


def build_parser() -> argparse.ArgumentParser:
    from .demo import CRITERIA

    p = argparse.ArgumentParser(
        prog="simprune", description="Channel-similarity engine for pruning PyTorch networks."
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="prune the shipped MNIST ResNet by similarity and by peer criteria at equal MACs",
        description="The main demo: the shipped MNIST ResNet (98.7 % test accuracy) pruned at "
        "-30 % and -50 % MACs by simprune's channel similarity (+merge) and, at the same per-layer "
        "widths, by L1-norm, BN-gamma, FPGM and random selection, then with 1000 calibration "
        "images (simprune's activation metric + data merge; L1/FPGM + the same data merge); test "
        "accuracy as pruned, after "
        "BatchNorm recalibration and after a short fine-tune; a table, a PNG plot, the pruned "
        "models and plans. --engine runs the engine demo instead (every conv layer of a "
        "torchvision CNN through descriptors -> distances -> linkage, timed and checked against "
        "scipy).",
    )
    d.add_argument("--out", default="out/demo", help="output folder (plot, plans, models)")
    d.add_argument(
        "--macs", type=float, nargs="+", default=[0.3, 0.5], help="MACs reductions to prune to"
    )
    d.add_argument(
        "--criteria",
        nargs="+",
        default=None,
        choices=list(CRITERIA),
        metavar="NAME",
        help=f"criteria among {', '.join(CRITERIA)} (NAME:data: with the data merge on 1000 "
        "training images; default: sim_gaussian l1 bn_gamma fpgm random sim_activation:data "
        "l1:data fpgm:data)",
    )
    d.add_argument(
        "--finetune-images",
        type=int,
        default=0,
        help="fine-tune on one pass over this many training images (default 0: one full epoch "
        "of the 4000)",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this model)"
    )
    d.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    d.add_argument(
        "--engine", action="store_true", help="run the engine demo (options below) instead"
    )
    d.add_argument("--model", default="torchvision:resnet50", help="--engine: torchvision:NAME")
    d.add_argument(
        "--method",
        default="average",
        choices=["single", "complete", "average", "weighted", "ward"],
    )
    d.add_argument(
        "--max-layers", type=int, default=None, help="--engine: only the first N conv layers"
    )
    d.add_argument("--no-scipy", action="store_true", help="--engine: skip the scipy baseline")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="what this installation can run (backends, extension, Triton)")
    i.set_defaults(func=_info)
    c = sub.add_parser(
        "selfcheck",
        help="every available backend against the reference on small problems (exit 1 on failure)",
        description="Runs each engine op (distances, linkage exact/strict/float32 storage, batched "
        "linkage) on every backend available for each device, against the float64 reference and "
        "scipy, with the test suite's tolerances. Seconds; the first thing to run on a new GPU.",
    )
    c.add_argument(
        "--device",
        nargs="+",
        default=None,
        choices=["cpu", "cuda"],
        help="devices to check (default: cpu, plus cuda when a GPU is visible)",
    )
    c.add_argument(
        "--backend",
        nargs="+",
        default=None,
        choices=["torch", "cpu", "triton", "cuda"],
        help="only these backends (default: every available one)",
    )
    c.add_argument("--json", help="also write the rows (and `simprune info`) as JSON here")
    c.set_defaults(func=_selfcheck)
    from .pruning.cli import add_parser as add_prune_parser

    add_prune_parser(sub)
    _add_bench_parser(sub)
    return p


def _benchmarks_report():  # -> the benchmarks.report module, or None outside a source checkout
    import importlib
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "benchmarks", "report.py")) and root not in sys.path:
        sys.path.insert(0, root)  # the suites live beside the package, in the source checkout
    try:
        return importlib.import_module("benchmarks.report")
    except ImportError:
        return None


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="run the benchmark suites and print ratio tables (python -m benchmarks.report)",
        description="Distance, linkage, whole-model plan, pruned-model latency and very-wide "
        "benchmarks against their peers in the same run; results appended to "
        "benchmarks/results/. Needs the source checkout (benchmarks/ is not installed).",
    )
    report = _benchmarks_report()
    if report is not None:
        report.add_arguments(b)

    def run(args: argparse.Namespace) -> int:
        if report is None:
            print(
                "error: simprune bench needs the benchmarks/ folder of a source checkout "
                "(pip install -e . from the repository)",
                file=sys.stderr,
            )
            return 2
        return int(report.run_from_args(args))

    b.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
