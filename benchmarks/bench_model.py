"""Whole-model plan time: simprune vs Torch-Pruning's FPGMImportance vs a CUP-style scipy pipeline.

    python -m benchmarks.bench_model                            # ResNet-50, WRN-101-2, ViT-B/16 MLPs
    python -m benchmarks.bench_model --models resnet50 --repeat 5
    python -m benchmarks.bench_model --quick                    # small inputs, one repeat (smoke run)

Three models, each traced once by Torch-Pruning's DependencyGraph so that all three pipelines see the
same channel groups:

* ``resnet50``, ``wide_resnet101_2`` (torchvision, random init; the classifier is ignored);
* ``vit_b_16_mlp``: ViT-B/16 with only the hidden neurons of its 12 MLP blocks prunable (every other
  Linear/Conv and the attention layers ignored): 12 groups of 3072 neurons x 769 features.

Rows (medians of ``--repeat`` interleaved runs after one untimed warm-up; speed is reported, never
asserted):

* ``simprune plan``: descriptors + distances + linkage + global cut (bisection to the MACs target), the
  stage timings :func:`simprune.prune` reports (as in ``benchmarks/bench_prune.py``); ``prune()``
  total adds tracing and the rewrite;
* ``CUP-style scipy``: per group, the raw filter + bias rows (``group_descriptors(g, "linear")``),
  ``scipy.spatial.distance.pdist`` + ``scipy.cluster.hierarchy.linkage(average)`` + ``fcluster``
  (``maxclust``: each layer keeps 1 - ratio of its channels), one layer after another -- the shape of
  CUP (Duggal et al. 2019), a per-layer clustering pipeline on the CPU;
* ``TP FPGMImportance``: Torch-Pruning's importance over every group of the same DependencyGraph
  (scoring only, no cut); ``TP MetaPruner+step``: tracing + importance + ranking + rewrite at a
  uniform channel ratio.

``x_plan`` is the row's time over simprune's plan time (> 1: simprune's plan is faster).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_prune import PLAN_STAGES  # noqa: E402
from benchmarks.common import machine_info, print_table, write_results  # noqa: E402

MODELS = ("resnet50", "wide_resnet101_2", "vit_b_16_mlp")
COLUMNS = ["x_plan", "model", "pipeline", "s", "stages", "groups", "channels", "macs_red"]


def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    """(model, example input, ignored layers) of a benchmark model, random weights, eval mode."""
    import torchvision

    torch.manual_seed(0)
    if name == "vit_b_16_mlp":
        # The MLP weights do not depend on the image size: a small image only makes tracing cheaper.
        model = torchvision.models.vit_b_16(image_size=size).eval()
        prunable = {blk.mlp[0] for blk in model.encoder.layers}
        kinds = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
        ignored = [m for m in model.modules() if isinstance(m, kinds) and m not in prunable]
    else:
        model = getattr(torchvision.models, name)().eval()
        ignored = [model.fc]
    _randomise_norms(model)
    return model, torch.randn(1, 3, size, size), ignored


def _randomise_norms(model: nn.Module) -> None:
    # Fresh BatchNorms (gamma = 1, beta = 0) give every channel the same energy, which no trained
    # network has (and the energy drives the representatives): draw gamma, beta of trained-like spread.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def _groups(model: nn.Module, x: torch.Tensor, ignored: list[nn.Module]) -> list[Any]:
    from simprune.pruning.groups import build_dependency_graph, collect_groups

    dg = build_dependency_graph(model, x, ignored)
    return collect_groups(dg, model, ignored)[0]


def cup_style(groups: list[Any], ratio: float) -> list[np.ndarray]:
    """CUP-style per-layer scipy pipeline: filter rows -> pdist -> average linkage -> fcluster."""
    import scipy.cluster.hierarchy as sch
    from scipy.spatial.distance import pdist

    from simprune.pruning.descriptors import group_descriptors

    labels = []
    for g in groups:
        v = group_descriptors(g, "linear").detach().to("cpu", torch.float64).numpy()
        n = v.shape[0]
        if n < 2:
            labels.append(np.ones(n, dtype=np.int32))
            continue
        z = sch.linkage(pdist(v, "euclidean"), "average")
        labels.append(sch.fcluster(z, max(1, math.ceil((1 - ratio) * n)), "maxclust"))
    return labels


def _tp_parts(
    model: nn.Module, x: torch.Tensor, ignored: list[nn.Module], tp_ratio: float
) -> tuple[Callable[[], Any], Callable[[], float]]:
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(model, x)
    groups = list(dg.get_all_groups(ignored_layers=ignored))
    fpgm = tp.importance.FPGMImportance()

    def importance() -> Any:
        return [fpgm(g) for g in groups]

    def step() -> float:
        m = copy.deepcopy(model)
        # ignored layers of the copy: the same modules, by name
        names = {mod: n for n, mod in model.named_modules()}
        mods = dict(m.named_modules())
        pruner = tp.pruner.MetaPruner(
            m, x, importance=tp.importance.FPGMImportance(), pruning_ratio=tp_ratio,
            ignored_layers=[mods[names[i]] for i in ignored],
        )  # fmt: skip
        pruner.step()
        return float(tp.utils.count_ops_and_params(m, x)[0])

    return importance, step


def run(
    models: list[str],
    *,
    size: int = 224,
    macs_reduction: float = 0.3,
    tp_ratio: float = 0.16,
    repeat: int = 3,
    backend: str = "auto",
    device: str = "cpu",
    with_tp_step: bool = True,
    warmup: bool = True,
) -> list[dict[str, Any]]:
    """One row per (model, pipeline); see the module docstring."""
    import torch_pruning as tp

    from simprune.pruning import prune

    warnings.simplefilter("ignore")
    rows: list[dict[str, Any]] = []
    for name in models:
        model, x, ignored = build(name, size)
        model, x = model.to(device), x.to(device)
        groups = _groups(model, x, ignored)
        macs0 = float(tp.utils.count_ops_and_params(model, x)[0])
        tp_imp, tp_step = _tp_parts(model, x, ignored, tp_ratio)

        def simprune_once(model=model, x=x, ignored=ignored) -> Any:
            return prune(
                model, x, macs_reduction=macs_reduction, ignored_layers=ignored,
                backend=backend, progress=False,
            )  # fmt: skip

        # Untimed warm-up of each side (first calls load the extension, lazy modules, BLAS).
        simprune_once()
        if warmup:
            cup_style(groups, macs_reduction)
            tp_imp()
        # Interleaved, so that load from other processes on a shared box hits every side alike.
        t: dict[str, list[float]] = {k: [] for k in ("plan", "total", "cup", "imp", "step")}
        stages: dict[str, list[float]] = {k: [] for k in PLAN_STAGES}
        report = None
        tp_macs = macs0
        for _ in range(repeat):
            t0 = time.perf_counter()
            _, _, report = simprune_once()
            t["total"].append(time.perf_counter() - t0)
            t["plan"].append(sum(report.timings[k] for k in PLAN_STAGES))
            for k in PLAN_STAGES:
                stages[k].append(report.timings[k])
            t0 = time.perf_counter()
            cup_style(groups, macs_reduction)
            t["cup"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tp_imp()
            if device != "cpu":
                torch.cuda.synchronize()
            t["imp"].append(time.perf_counter() - t0)
            if with_tp_step:
                t0 = time.perf_counter()
                tp_macs = tp_step()
                t["step"].append(time.perf_counter() - t0)
        assert report is not None
        med = {k: statistics.median(v) for k, v in t.items() if v}
        plan = med["plan"]
        stage_txt = " ".join(f"{k[:5]}={statistics.median(v):.3f}" for k, v in stages.items())
        common = {
            "model": name,
            "groups": len(groups),
            "channels": sum(g.n_units for g in groups),
            "repeat": repeat,
            "size": size,
        }
        rows.append(
            {
                **common,
                "pipeline": "simprune plan (descr+dist+linkage+cut)",
                "s": plan,
                "x_plan": 1.0,
                "stages": stage_txt,
                "macs_red": round(report.macs_reduction, 3),
            }
        )
        rows.append(
            {
                **common,
                "pipeline": "simprune prune() total (+trace+rewrite)",
                "s": med["total"],
                "x_plan": med["total"] / plan,
                "stages": f"trace={report.timings.get('trace', 0):.3f} "
                f"rewrite={report.timings.get('rewrite', 0):.3f} (last run)",
                "macs_red": round(report.macs_reduction, 3),
            }
        )
        rows.append(
            {
                **common,
                "pipeline": "CUP-style scipy (pdist+linkage+fcluster per layer)",
                "s": med["cup"],
                "x_plan": med["cup"] / plan,
            }
        )
        rows.append(
            {
                **common,
                "pipeline": "TP FPGMImportance, all groups (scores only)",
                "s": med["imp"],
                "x_plan": med["imp"] / plan,
            }
        )
        if "step" in med:
            rows.append(
                {
                    **common,
                    "pipeline": f"TP MetaPruner+step (ratio {tp_ratio})",
                    "s": med["step"],
                    "x_plan": med["step"] / plan,
                    "macs_red": round(1 - tp_macs / macs0, 3),
                }
            )
        print(f"  {name}: plan {plan:.3f}s, CUP-style {med['cup']:.3f}s", file=sys.stderr)
        del model, groups
    return rows


def suite(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    """The report's tables (see ``benchmarks/report.py``)."""
    if quick:
        rows = run(["resnet50"], size=64, repeat=1, device=device, with_tp_step=False, warmup=False)
    else:
        # ResNet-50 carries the whole-model goals: more repeats there; the big ones cost minutes.
        rows = run(["resnet50"], size=224, repeat=3, device=device)
        rows += run(["wide_resnet101_2", "vit_b_16_mlp"], size=224, repeat=2, device=device)
    return [
        {
            "name": "model",
            "title": f"Whole-model plan time ({device}, -30 % MACs; x_plan = time / simprune plan)",
            "columns": COLUMNS,
            "rows": rows,
        }
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--size", type=int, default=224, help="input image size (tracing only)")
    ap.add_argument("--macs-reduction", type=float, default=0.3)
    ap.add_argument("--tp-ratio", type=float, default=0.16, help="Torch-Pruning channel ratio")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-tp-step", action="store_true", help="skip MetaPruner+step (slow)")
    ap.add_argument("--quick", action="store_true", help="ResNet-50, 64x64, 1 run, no TP step")
    ap.add_argument("--json", help="write rows + conditions as JSON")
    ap.add_argument("--markdown", help="write the table as Markdown")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.size, args.repeat, args.no_tp_step = ["resnet50"], 64, 1, True
    rows = run(
        args.models,
        size=args.size,
        macs_reduction=args.macs_reduction,
        tp_ratio=args.tp_ratio,
        repeat=args.repeat,
        backend=args.backend,
        device=args.device,
        with_tp_step=not args.no_tp_step,
    )
    info = machine_info()
    info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print_table(rows, COLUMNS, title=f"Whole-model plan time ({args.device}), median seconds")
    print("conditions:", json.dumps(info))
    write_results(
        rows,
        COLUMNS,
        info,
        f"Whole-model plan time ({args.device})",
        json_path=args.json,
        markdown_path=args.markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
