"""``simprune prune MODEL``: prune a torchvision, Hugging Face or saved model from the command line.

MODEL is ``torchvision:NAME`` (random initialisation unless ``--weights`` gives a state dict) or a path
to a model saved with ``torch.save(model)``, or to a state dict together with ``--arch
torchvision:NAME``, or ``hf:DIR`` (a Hugging Face model saved with ``save_pretrained`` in a local
directory; never downloaded), or ``hf:`` with ``--config FILE.json`` (a Hugging Face config: random
initialisation). Hugging Face models get ``--input-shape`` token ids (random in [0, vocab_size)) or
float inputs for their main input (``pixel_values``), passed by keyword.

Writes the pruned model (``torch.save`` of the module), the plan JSON, the report JSON and a PNG
(widths per layer, dendrogram of one group) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from torch import nn


def _torchvision(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise SystemExit(
            "error: torchvision:NAME models need torchvision (pip install torchvision)"
        ) from None
    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise SystemExit(f"error: torchvision has no model named {name!r}") from None


def _read(path: str, what: str, weights_only: bool) -> Any:
    if not os.path.exists(path):
        raise SystemExit(f"error: {what} {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
        raise SystemExit(
            f"error: cannot read {what} {path!r} (not a torch.save file?): {e}"
        ) from None


def _load_state(model: nn.Module, sd: Any, source: str, arch: str) -> None:
    """Load a state dict into ``model``, or exit naming what does not fit."""
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise SystemExit(f"error: {source} holds a {type(sd).__name__}, not a state dict")
    want = model.state_dict()
    problems = []
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in want.items()
        if k in sd and isinstance(sd[k], torch.Tensor) and sd[k].shape != v.shape
    ]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{more})")
    if problems:
        raise SystemExit(f"error: {source} does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(sd)


def _hf_class(tf: Any, config: Any) -> Any:
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(tf, arch, None)
        if cls is not None:
            return cls
    return tf.AutoModel


def load_hf_model(directory: str | None, config_file: str | None) -> nn.Module:
    """A Hugging Face model from a local ``save_pretrained`` directory, or a config JSON (random
    initialisation). Never touches the network (``local_files_only``)."""
    try:
        import transformers as tf
    except ImportError:
        raise SystemExit("error: hf: models need transformers (pip install transformers)") from None
    if config_file:
        if not os.path.isfile(config_file):
            raise SystemExit(f"error: --config {config_file!r} does not exist")
        try:
            with open(config_file) as f:
                d = json.load(f)
            model_type = d.pop("model_type")
            config = tf.AutoConfig.for_model(model_type, **d)
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(
                f"error: --config {config_file!r} is not a Hugging Face config JSON with a "
                f"model_type: {e}"
            ) from None
        cls = _hf_class(tf, config)
        return cls.from_config(config) if cls is tf.AutoModel else cls(config)
    if not directory or not os.path.isdir(directory):
        raise SystemExit(
            f"error: hf:{directory or ''} is not a local directory (a save_pretrained folder); "
            "give hf:DIR, or hf: with --config FILE.json"
        )
    try:
        config = tf.AutoConfig.from_pretrained(directory, local_files_only=True)
        return _hf_class(tf, config).from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SystemExit(
            f"error: cannot load a Hugging Face model from {directory!r}: {e}"
        ) from None


def hf_inputs(model: nn.Module, shape: list[int]) -> dict[str, torch.Tensor]:
    """Random example inputs for a Hugging Face model's main input, by keyword."""
    name = getattr(model, "main_input_name", "input_ids")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if name == "input_ids" and vocab:
        return {name: torch.randint(0, int(vocab), shape)}
    return {name: torch.randn(*shape)}


def load_model(
    spec: str, arch: str | None = None, weights: str | None = None, config: str | None = None
) -> nn.Module:
    """A model from ``torchvision:NAME``, ``hf:DIR`` (or ``hf:`` + ``config``) or a file (whole
    model, or state dict with ``arch``)."""
    if spec.startswith("hf:") or config:
        if not spec.startswith("hf:"):
            raise SystemExit("error: --config goes with MODEL hf: (a Hugging Face config JSON)")
        return load_hf_model(spec[3:] or None, config)
    if spec.startswith("torchvision:"):
        model = _torchvision(spec.split(":", 1)[1])
        if weights:
            sd = _read(weights, "--weights", weights_only=True)
            _load_state(model, sd, f"--weights {weights!r}", spec)
        return model
    if not os.path.exists(spec):
        raise SystemExit(f"error: {spec!r} is neither torchvision:NAME nor an existing file")
    obj = _read(spec, "MODEL", weights_only=False)
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        if not arch:
            raise SystemExit(
                f"error: {spec!r} holds a state dict; give its architecture with --arch "
                "torchvision:NAME"
            )
        if not arch.startswith("torchvision:"):
            raise SystemExit("error: --arch must be torchvision:NAME")
        model = _torchvision(arch.split(":", 1)[1])
        _load_state(model, obj, repr(spec), arch)
        return model
    raise SystemExit(f"error: {spec!r} holds a {type(obj).__name__}, not a model or a state dict")


def _shape(text: str) -> list[int]:
    try:
        dims = [int(t) for t in text.replace("x", ",").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad input shape {text!r}; e.g. 1,3,224,224") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"bad input shape {text!r}; e.g. 1,3,224,224")
    return dims


def run(args: argparse.Namespace) -> int:
    from ..viz import PlotUnavailableError, plot_pruning
    from .api import prune

    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: the PNG needs matplotlib: pip install matplotlib (or "
                "'simprune[plot]'), or pass --no-plot",
                file=sys.stderr,
            )
            return 2
    model = load_model(args.model, args.arch, args.weights, args.config).eval()
    hf = args.model.startswith("hf:")
    shape = args.input_shape or ([1, 32] if hf else [1, 3, 224, 224])
    x: Any = hf_inputs(model, shape) if hf else torch.randn(*shape)
    calib = None
    if args.calibration_data:
        try:
            calib = torch.load(args.calibration_data, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
            print(
                f"error: cannot read --calibration-data {args.calibration_data}: {e}",
                file=sys.stderr,
            )
            return 2
        if not isinstance(calib, torch.Tensor):
            print(
                f"error: --calibration-data must be a torch.save'd Tensor of inputs, got "
                f"{type(calib).__name__}",
                file=sys.stderr,
            )
            return 2
    targets = {
        "macs_reduction": args.macs_reduction,
        "params_reduction": args.params_reduction,
        "pruning_ratio": args.pruning_ratio,
    }
    if all(v is None for v in targets.values()):
        targets["macs_reduction"] = 0.3
    merge: Any = {"ls": "ls", "sum": "sum", "none": False}[args.merge]
    try:
        pruned, plan, report = prune(
            model,
            x,
            **{k: v for k, v in targets.items() if v is not None},
            metric=args.metric,
            method=args.method,
            cut=args.cut,
            keep_per_cluster=args.keep_per_cluster,
            representative=args.representative,
            merge=merge,
            min_keep_ratio=args.min_keep_ratio,
            round_to=args.round_to,
            backend=args.backend,
            inplace=True,
            calibration_data=calib,
            progress=not args.no_progress,
            output_transform=args.output_transform,
            scope=args.scope,
            prune_heads=args.prune_heads,
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table(max_rows=None if args.all_rows else 25))
    os.makedirs(args.out, exist_ok=True)
    paths = {
        "model": os.path.join(args.out, "pruned_model.pt"),
        "plan": os.path.join(args.out, "plan.json"),
        "report": os.path.join(args.out, "report.json"),
    }
    torch.save(pruned, paths["model"])
    plan.save(paths["plan"])
    with open(paths["report"], "w") as f:
        json.dump(report.to_dict(), f, indent=1)
    if not args.no_plot:
        paths["png"] = os.path.join(args.out, "pruning.png")
        try:
            shown = plot_pruning(report, paths["png"], args.dendrogram)
        except (PlotUnavailableError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"dendrogram: group {shown}")
    for k, v in paths.items():
        print(f"wrote {k}: {v}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``prune`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "prune",
        help="prune a model by channel similarity (torchvision:NAME, hf:DIR or a saved model)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        help="torchvision:NAME, hf:DIR (save_pretrained folder), hf: + --config FILE.json, a "
        "torch.save'd model, or a state dict + --arch",
    )
    p.add_argument("--config", help="Hugging Face config JSON for MODEL hf: (random init)")
    p.add_argument(
        "--output-transform",
        default=None,
        metavar="NAME",
        help="the model output to trace, e.g. logits (default: every tensor it returns)",
    )
    p.add_argument(
        "--scope",
        default="auto",
        choices=["auto", "all", "mlp"],
        help="mlp: MLP neurons only (default for hf: models); all: every channel group",
    )
    p.add_argument("--arch", help="torchvision:NAME for a state-dict MODEL file")
    p.add_argument("--weights", help="state dict to load into torchvision:NAME")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--macs-reduction", type=float, help="fraction of MACs to remove (default 0.3)")
    t.add_argument("--params-reduction", type=float, help="fraction of parameters to remove")
    t.add_argument("--pruning-ratio", type=float, help="fraction of prunable channels to remove")
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        help="e.g. 1,3,224,224 (default); hf: models: token ids 1,32 (default) or pixel_values",
    )
    p.add_argument(
        "--metric",
        default=None,
        choices=[
            "gaussian",
            "wasserstein",
            "linear",
            "cosine",
            "euclidean",
            "sqeuclidean",
            "activation",
        ],
        help="default: activation with --calibration-data, else gaussian",
    )
    p.add_argument(
        "--method", default="average", choices=["single", "complete", "average", "weighted", "ward"]
    )
    p.add_argument(
        "--prune-heads",
        action="store_true",
        help="also prune whole attention heads (transformers; grouped-query attention respected)",
    )
    p.add_argument("--cut", default="global", choices=["global", "uniform"])
    p.add_argument("--keep-per-cluster", type=int, default=1)
    p.add_argument("--representative", default="energy", choices=["energy", "medoid"])
    p.add_argument("--merge", default="ls", choices=["ls", "sum", "none"])
    p.add_argument("--min-keep-ratio", type=float, default=0.1)
    p.add_argument("--round-to", type=int, default=None)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "cpu", "triton", "cuda"])
    p.add_argument(
        "--calibration-data",
        metavar="FILE",
        help="a torch.save'd Tensor of inputs (N, ...): BatchNorm statistics re-estimated on it",
    )
    p.add_argument("--out", default="simprune_out", help="output directory")
    p.add_argument("--dendrogram", default=None, help="group root to plot (default: widest pruned)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--all-rows", action="store_true", help="print every group of the table")
    p.set_defaults(func=run)
    return p
