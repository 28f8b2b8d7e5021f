"""Command line: ``simprune demo | info | prune`` (``python -m simprune ...``)."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_engine_demo

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simprune", description="Channel-similarity engine for pruning PyTorch networks."
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="descriptors -> distances -> linkage for every conv layer of a CNN, vs scipy",
        description="Run every conv layer of a (randomly initialised) torchvision CNN through "
        "descriptors, distances and linkage on each available backend, timed and checked against "
        "scipy's pdist + linkage.",
    )
    d.add_argument("--model", default="torchvision:resnet50", help="torchvision:NAME")
    d.add_argument(
        "--method",
        default="average",
        choices=["single", "complete", "average", "weighted", "ward"],
    )
    d.add_argument("--max-layers", type=int, default=None, help="only the first N conv layers")
    d.add_argument("--no-scipy", action="store_true", help="skip the scipy baseline")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="what this installation can run (backends, extension, Triton)")
    i.set_defaults(func=_info)
    from .prune.cli import add_parser as add_prune_parser

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
