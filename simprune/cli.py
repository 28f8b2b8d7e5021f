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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
