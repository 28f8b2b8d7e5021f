"""Evidence on real data: prune the shipped MNIST ResNet by channel similarity and by peer criteria at
equal MACs, recalibrate BatchNorm, fine-tune briefly, evaluate, plot.

This module is the engine of ``simprune demo`` (:func:`run_demo`) and of ``scripts/run_ablation.py``
(:func:`run_config`), which writes ``docs/results.md``.

Peer criteria at equal MACs: every peer keeps *the same number of channels in every group* as
simprune's plan at that MACs level (so the MACs are identical by construction); only the selection
differs. Per group a peer keeps the top-k channels by

* ``l1``: the L1 norm of the channel's filter, summed over the group's coupled producers (Li et al.);
* ``bn_gamma``: ``|gamma|`` summed over the group's BatchNorms (network slimming's criterion, without
  its sparsity training);
* ``fpgm``: the sum of Euclidean distances of the channel's filter to the other filters of the same
  layer, summed over producers (FPGM keeps the channels far from the geometric median);
* ``random``: a seeded random score.

Peers never merge: removed channels are simply dropped, as those methods do -- except in the
controls with calibration data (``"l1:data"``, ``"fpgm:data"``): the same selection, then the data
merge of :func:`simprune.prune` (each removed channel reconstructed from the kept ones by least
squares on 1000 training images, :mod:`simprune.pruning.stats`), which separates what the selection
adds from what the reconstruction adds.

A criterion ``"NAME:MERGE"`` runs criterion NAME with merge MERGE (``data``: the data merge;
``data_seq``: the layer-by-layer data merge, :func:`simprune.pruning.merge.sequential_data_merge_plans`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .datasets import load_mnist5k
from .pruning import PruningPlan, apply_plan, prune
from .pruning.calibrate import recalibrate_bn as _recalibrate_bn
from .pruning.groups import ChannelGroup, build_dependency_graph, group_at
from .pruning.macs import CostModel
from .pruning.merge import data_merge_plans, sequential_data_merge_plans
from .pruning.plan import GroupPlan, describe_inputs, plan_groups
from .pruning.stats import attach_stats, collect_stats
from .zoo import evaluate, load_baseline

SIM_METRICS = ("gaussian", "wasserstein", "linear", "cosine")
PEER_CRITERIA = ("l1", "bn_gamma", "fpgm", "random")
# Criteria with their own allocation: Torch-Pruning's MetaPruner with global pruning, the ratio
# bisected to the same MACs (a different per-layer width allocation than simprune's plan).
TP_GLOBAL_CRITERIA = ("tp_l1", "tp_bn_gamma", "tp_fpgm", "tp_random")
# With calibration data (1000 training images): the data merge, the activation metric, and the
# peers' selections followed by the data merge.
DATA_CRITERIA = (
    "sim_gaussian:data",
    "sim_gaussian:data_seq",
    "sim_activation:data",
    "l1:data",
    "fpgm:data",
)
CRITERIA = (
    tuple(f"sim_{m}" for m in SIM_METRICS) + PEER_CRITERIA + TP_GLOBAL_CRITERIA + DATA_CRITERIA
)
CALIBRATION_IMAGES = 1000  # training images for the statistics of the data merge

LABELS = {
    "sim_gaussian": "simprune gaussian (+merge)",
    "sim_wasserstein": "simprune wasserstein (+merge)",
    "sim_linear": "simprune linear (+merge)",
    "sim_cosine": "simprune cosine (+merge)",
    "l1": "L1-norm",
    "bn_gamma": "BN-gamma",
    "fpgm": "FPGM",
    "random": "random",
    "tp_l1": "TP global L1 (own widths)",
    "tp_bn_gamma": "TP global BN-gamma (own widths)",
    "tp_fpgm": "TP global FPGM (own widths)",
    "tp_random": "TP global random (own widths)",
    "sim_activation": "simprune activation",
}
MERGE_LABELS = {
    "data": "+ data merge",
    "data_seq": "+ data merge, layer by layer",
}


def label(criterion: str, merge: str = "ls") -> str:
    """The table label of a criterion run with a merge mode."""
    base = LABELS.get(criterion, criterion)
    if merge in MERGE_LABELS:
        return f"{base.removesuffix(' (+merge)')} {MERGE_LABELS[merge]}"
    return base


def parse_criterion(spec: str) -> tuple[str, str | None]:
    """``"NAME"`` or ``"NAME:MERGE"`` -> (NAME, MERGE or None)."""
    name, _, merge = spec.partition(":")
    return name, merge or None


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image of ``x`` (N, 1, 28, 28) by up to ``max_shift`` pixels, padding with the
    background value: the augmentation of ``scripts/train_baseline.py`` (same draws from ``g``)."""
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(28)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(28)[None, :])[:, None, None, :]
    return pad[
        torch.arange(n)[:, None, None, None],
        torch.zeros(1, dtype=torch.long)[:, None, None],
        rows,
        cols,
    ]


# ----------------------------------------------------------------------------------------------
# BatchNorm recalibration and fine-tuning


def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> nn.Module:
    """BatchNorm statistics re-estimated on ``x`` (in place): :func:`simprune.pruning.recalibrate_bn`
    with the batch size of the demo and the ablation study."""
    return _recalibrate_bn(model, x, batch_size=batch_size)


@dataclass
class FinetuneConfig:
    """One short fine-tune: SGD (Nesterov momentum), cosine-decayed learning rate, the baseline's
    augmentation. ``images=None`` is one full epoch of the 4000 training images."""

    epochs: int = 1
    images: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    config: FinetuneConfig | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """Fine-tune ``model`` in place (left in eval mode). ``seed`` fixes data order and shifts."""
    cfg = config or FinetuneConfig()
    g = torch.Generator().manual_seed(seed)
    n = len(x) if cfg.images is None else min(cfg.images, len(x))
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)[:n]
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            loss = F.cross_entropy(model(random_shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Peer criteria at simprune's widths


def _producer_matrix(mod: Any) -> torch.Tensor:
    w = mod.weight.detach()
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed:
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1).to(torch.float64)


def peer_scores(group: ChannelGroup, criterion: str, generator: torch.Generator) -> torch.Tensor:
    """Per-unit score (n_units,) of a channel group under a peer criterion: the top-k are kept.

    ``bn_gamma`` on a group without a BatchNorm falls back to ``l1``.
    """
    n = group.n_channels
    s = torch.zeros(n, dtype=torch.float64)
    if criterion == "random":
        s = torch.rand(n, generator=generator, dtype=torch.float64)
    elif criterion == "bn_gamma" and any(
        isinstance(m.module, nn.modules.batchnorm._BatchNorm) for m in group.members
    ):
        for m in group.members:
            if (
                isinstance(m.module, nn.modules.batchnorm._BatchNorm)
                and m.module.weight is not None
            ):
                g = m.module.weight.detach().abs().to(torch.float64)
                s[torch.tensor(m.root_idxs)] += g[torch.tensor(m.idxs)]
    elif criterion in ("l1", "bn_gamma", "fpgm"):
        for m in group.producers():
            w = _producer_matrix(m.module)
            if criterion == "fpgm":
                per = torch.cdist(w, w).sum(1)
            else:
                per = w.abs().sum(1)
            s[torch.tensor(m.root_idxs)] += per[torch.tensor(m.idxs)]
    else:
        raise ValueError(f"unknown peer criterion {criterion!r}; expected one of {PEER_CRITERIA}")
    # A pruning unit is one position in every conv group (grouped convs): sum over the groups.
    return s.reshape(group.ch_groups, group.n_units).sum(0)


def peer_plan(
    model: nn.Module,
    widths_from: PruningPlan,
    criterion: str,
    example_inputs: Any,
    *,
    seed: int = 0,
) -> PruningPlan:
    """A plan with the same kept count per group as ``widths_from``, chosen by ``criterion``."""
    dg = build_dependency_graph(model, example_inputs)
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for k, gp in enumerate(widths_from.groups):
        grp = group_at(dg, model, gp.root, k)
        keep_units = len(gp.kept) // gp.ch_groups
        score = peer_scores(grp, criterion, gen)
        # Stable order: ties keep the lower index (deterministic plans).
        order = torch.sort(-score, stable=True).indices[:keep_units]
        groups.append(
            GroupPlan(
                root=gp.root,
                n_channels=gp.n_channels,
                ch_groups=gp.ch_groups,
                members=[list(m) for m in gp.members],
                kept=grp.unit_channels(sorted(int(u) for u in order)),
                merges=[],
            )
        )
    return PruningPlan(
        groups,
        describe_inputs(example_inputs),
        settings={"criterion": criterion, "seed": seed, "widths_from": widths_from.settings},
        versions=dict(widths_from.versions),
    )


def _tp_importance(criterion: str, seed: int) -> Any:
    import torch_pruning as tp

    if criterion == "tp_l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "tp_bn_gamma":
        return tp.importance.BNScaleImportance()
    if criterion == "tp_fpgm":
        return tp.importance.FPGMImportance()
    if criterion == "tp_random":
        torch.manual_seed(seed)  # RandomImportance draws from the global generator
        return tp.importance.RandomImportance()
    raise ValueError(f"unknown Torch-Pruning criterion {criterion!r}")


def tp_global_prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    criterion: str,
    macs_reduction: float,
    *,
    seed: int = 0,
    max_pruning_ratio: float = 0.9,
    iters: int = 16,
) -> tuple[nn.Module, float]:
    """Torch-Pruning MetaPruner, global pruning, its ratio bisected to ``macs_reduction`` (measured
    with simprune's cost model). Returns (pruned model, MACs reduction reached)."""
    import torch_pruning as tp

    cm = CostModel(model, example_inputs)
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]

    def run(ratio: float) -> tuple[nn.Module, float]:
        m = copy.deepcopy(model)
        names = {id(mm): n for n, mm in model.named_modules()}
        ignored = [m.get_submodule(names[id(f)]) for f in fc]
        pr = tp.pruner.MetaPruner(
            m,
            example_inputs,
            importance=_tp_importance(criterion, seed),
            pruning_ratio=ratio,
            global_pruning=True,
            max_pruning_ratio=max_pruning_ratio,
            ignored_layers=ignored,
        )
        pr.step()
        return m, 1.0 - cm.measure(m)[0] / cm.macs0

    lo, hi = 0.0, 1.0
    best = (copy.deepcopy(model), 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        m, red = run(mid)
        if abs(red - macs_reduction) < abs(best[1] - macs_reduction):
            best = (m, red)
        if red < macs_reduction:
            lo = mid
        else:
            hi = mid
    return best


# ----------------------------------------------------------------------------------------------
# One configuration, end to end


@dataclass
class RunConfig:
    """One cell of the study: a criterion at a MACs level (simprune settings for ``sim_*``)."""

    criterion: str = "sim_gaussian"
    macs: float = 0.3
    method: str = "average"
    cut: str = "global"
    representative: str = "energy"
    merge: str = "ls"  # "ls" | "sum" | "off" | "data" | "data_seq" (peers: "data" or none)
    seed: int = 0

    def key(self) -> str:
        return (
            f"{self.criterion}|{self.macs}|{self.method}|{self.cut}|{self.representative}|"
            f"{self.merge}|{self.seed}"
        )


class Data:
    """The shipped MNIST split, loaded once."""

    def __init__(self) -> None:
        self.x_train, self.y_train = load_mnist5k("train")
        self.x_test, self.y_test = load_mnist5k("test")
        self.example = self.x_test[:1]


def _sim_prune(
    model: nn.Module, data: Data, cfg: RunConfig, metric: str
) -> tuple[nn.Module, PruningPlan]:
    calib = cfg.merge in ("data", "data_seq") or metric == "activation"
    pm, plan, _ = prune(
        model,
        data.example,
        macs_reduction=cfg.macs,
        metric=metric,
        method=cfg.method,
        cut=cfg.cut,
        representative=cfg.representative,
        merge=False if cfg.merge == "off" else "data" if cfg.merge == "data_seq" else cfg.merge,
        calibration_data=data.x_train[:CALIBRATION_IMAGES] if calib else None,
        progress=False,
    )
    if calib:
        if cfg.merge == "data_seq":
            data_merge(model, data, plan, sequential=True)
        # The model as pruned (prune() has also re-estimated BatchNorm on the data): the replay.
        pm = apply_plan(model, plan, data.example)
    return pm, plan


def data_merge(
    model: nn.Module, data: Data, plan: PruningPlan, *, sequential: bool = False
) -> PruningPlan:
    """Replace the merges of ``plan`` (in place) by the data merge on the calibration images:
    one-shot (:func:`simprune.pruning.merge.data_merge_plans`) or layer by layer
    (:func:`simprune.pruning.merge.sequential_data_merge_plans`)."""
    cal = data.x_train[:CALIBRATION_IMAGES]
    dg = build_dependency_graph(model, data.example)
    groups = plan_groups(model, dg, plan.groups)
    if sequential:
        sequential_data_merge_plans(model, groups, plan.groups, cal, data.example)
    else:
        attach_stats(groups, collect_stats(model, groups, cal, data.example))
        data_merge_plans(groups, plan.groups)
    plan.settings["merge"] = "data_seq" if sequential else "data"
    return plan


def prune_config(
    model: nn.Module,
    data: Data,
    cfg: RunConfig,
    width_plans: dict[tuple[float, str, str], PruningPlan] | None = None,
) -> tuple[nn.Module, PruningPlan | None]:
    """The pruned model of one configuration (and its plan; None for Torch-Pruning's own)."""
    if cfg.criterion.startswith("sim_"):
        pm, plan = _sim_prune(model, data, cfg, cfg.criterion[4:])
        if cfg.criterion == "sim_gaussian" and width_plans is not None:
            # Widths depend on the metric, linkage and cut only (not on merge/representative).
            width_plans.setdefault((cfg.macs, cfg.method, cfg.cut), plan)
        return pm, plan
    if cfg.criterion in PEER_CRITERIA:
        # Widths: simprune's default plan (gaussian) with this config's linkage and cut.
        key = (cfg.macs, cfg.method, cfg.cut)
        ref = None if width_plans is None else width_plans.get(key)
        if ref is None:
            base = RunConfig("sim_gaussian", cfg.macs, cfg.method, cfg.cut)
            ref = _sim_prune(model, data, base, "gaussian")[1]
            if width_plans is not None:
                width_plans[key] = ref
        plan = peer_plan(model, ref, cfg.criterion, data.example, seed=cfg.seed)
        if cfg.merge in ("data", "data_seq"):
            data_merge(model, data, plan, sequential=cfg.merge == "data_seq")
        return apply_plan(model, plan, data.example), plan
    if cfg.criterion in TP_GLOBAL_CRITERIA:
        return tp_global_prune(model, data.example, cfg.criterion, cfg.macs, seed=cfg.seed)[0], None
    raise ValueError(f"unknown criterion {cfg.criterion!r}; expected one of {CRITERIA}")


def run_config(
    cfg: RunConfig,
    data: Data,
    *,
    model: nn.Module | None = None,
    finetune_config: FinetuneConfig | None = None,
    recal_images: int = 1000,
    width_plans: dict[tuple[float, str, str], PruningPlan] | None = None,
    keep_model: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Prune, evaluate (as pruned and after BN recalibration), fine-tune, evaluate again.

    Returns a row: the config, MACs/params before/after (simprune's cost model), ``acc_pruned``,
    ``acc_recal``, ``acc_ft`` (fine-tuned from the recalibrated model) and timings.
    ``finetune_config=None`` is the default (one epoch); ``FinetuneConfig(epochs=0)`` skips it.
    """
    torch.manual_seed(cfg.seed)
    base = load_baseline() if model is None else model
    cm = CostModel(base, data.example)
    t0 = time.perf_counter()
    pruned, plan = prune_config(base, data, cfg, width_plans)
    t_prune = time.perf_counter() - t0
    macs1, params1 = cm.measure(pruned)
    acc_pruned = evaluate(pruned, data.x_test, data.y_test)
    recal = recalibrate_bn(copy.deepcopy(pruned), data.x_train[:recal_images])
    acc_recal = evaluate(recal, data.x_test, data.y_test)
    fcfg = finetune_config or FinetuneConfig()
    t0 = time.perf_counter()
    acc_ft = None
    if fcfg.epochs > 0:
        # From the recalibrated model: with stale statistics a short fine-tune ends with running
        # statistics still partly stale (momentum 0.1 per step).
        pruned = recal
        finetune(pruned, data.x_train, data.y_train, seed=cfg.seed, config=fcfg, on_step=on_step)
        acc_ft = evaluate(pruned, data.x_test, data.y_test)
    t_ft = time.perf_counter() - t0
    row: dict[str, Any] = asdict(cfg)
    row.update(
        macs_before=cm.macs0,
        macs_after=macs1,
        macs_reduction=1.0 - macs1 / cm.macs0,
        params_before=cm.params0,
        params_after=params1,
        acc_pruned=acc_pruned,
        acc_recal=acc_recal,
        acc_ft=acc_ft,
        finetune=asdict(fcfg),
        recal_images=recal_images,
        seconds_prune=t_prune,
        seconds_finetune=t_ft,
    )
    if keep_model:
        row["_model"] = pruned
        row["_plan"] = plan
    return row


# ----------------------------------------------------------------------------------------------
# The demo


# Without data: simprune's default (gaussian + least-squares merge) and the peers at its widths;
# with the 1000 calibration images: simprune's default with data (the activation metric + the data
# merge) and the two best peers followed by the same data merge (the controls of docs/results.md).
DEMO_CRITERIA = (
    "sim_gaussian",
    "l1",
    "bn_gamma",
    "fpgm",
    "random",
    "sim_activation:data",
    "l1:data",
    "fpgm:data",
)


def _fmt_table(rows: Sequence[dict[str, Any]], baseline: dict[str, Any]) -> str:
    head = (
        f"{'criterion':<36} {'MACs':>18} {'params':>8} {'pruned':>7} {'+BN recal':>9} "
        f"{'+fine-tune':>10}"
    )
    lines = [head, "-" * len(head)]
    lines.append(
        f"{'unpruned baseline':<36} {baseline['macs'] / 1e6:>7.2f} M {'':>8} "
        f"{baseline['params'] / 1e3:>6.1f}k {baseline['acc']:>7.1%}"
    )
    for r in rows:
        ft = "" if r["acc_ft"] is None else f"{r['acc_ft']:.1%}"
        red = f"(-{r['macs_reduction']:.1%})"
        lines.append(
            f"{label(r['criterion'], r['merge']):<36} "
            f"{r['macs_after'] / 1e6:>7.2f} M {red:>8} {r['params_after'] / 1e3:>6.1f}k "
            f"{r['acc_pruned']:>7.1%} {r['acc_recal']:>9.1%} {ft:>10}"
        )
    return "\n".join(lines)


def plot_accuracy_vs_macs(
    rows: Sequence[dict[str, Any]], baseline: dict[str, Any], path: str | os.PathLike[str]
) -> None:
    """PNG: test accuracy vs MACs per criterion; panels: as pruned, after BN recalibration, after
    the fine-tune."""
    from .viz import _pyplot

    plt = _pyplot()
    cols = [("acc_pruned", "as pruned"), ("acc_recal", "+ BN recalibration")]
    if any(r["acc_ft"] is not None for r in rows):
        cols.append(("acc_ft", "+ fine-tune"))
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    crits = list(dict.fromkeys(label(r["criterion"], r["merge"]) for r in rows))
    markers = "os^vDPX*"
    for ax, (key, title) in zip(axes, cols, strict=True):
        for k, c in enumerate(crits):
            pts = sorted(
                (r["macs_after"] / 1e6, r[key])
                for r in rows
                if label(r["criterion"], r["merge"]) == c and r[key] is not None
            )
            pts.append((baseline["macs"] / 1e6, baseline["acc"]))
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(
                xs,
                [100 * v for v in ys],
                marker=markers[k % len(markers)],
                lw=2.2 if c.startswith("simprune") else 1.2,
                label=c,
            )
        ax.set_title(title)
        ax.set_xlabel("MACs per image (M)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%) on 1000 MNIST images")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("MnistResNet pruned at equal MACs: accuracy per criterion")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    out_dir: str | os.PathLike[str] = "out/demo",
    *,
    macs: Sequence[float] = (0.3, 0.5),
    criteria: Sequence[str] = DEMO_CRITERIA,
    finetune_images: int | None = None,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
    plot: bool = True,
) -> list[dict[str, Any]]:
    """The main demo: the shipped MNIST ResNet pruned at each MACs level by simprune's similarity
    (+merge) and by peer criteria at the same widths, and with calibration data (``NAME:data``
    criteria: simprune's default with data, the peers + data merge); accuracy as pruned, after BN
    recalibration and after a short fine-tune; table on stdout, PNG plot, pruned models and plans in ``out_dir``.

    ``threads``: torch CPU threads (default 1: this small network hardly scales across threads,
    and on a shared machine OpenMP threads spin; measured 2.4 CPU-s for a 1000-image fine-tune on
    one thread against about 14 on two under load).

    Returns the rows (one per criterion and MACs level).
    """
    import sys
    import warnings

    from tqdm import tqdm  # the console bar: see simprune.pruning.progress for why not tqdm.auto

    if threads:
        torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            tqdm.write(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr)

    data = Data()
    model = load_baseline()
    cm = CostModel(model, data.example)
    baseline = {
        "macs": cm.macs0,
        "params": cm.params0,
        "acc": evaluate(model, data.x_test, data.y_test),
    }
    say(f"baseline MnistResNet: {cm.macs0 / 1e6:.2f} M MACs, test accuracy {baseline['acc']:.1%}")
    fcfg = FinetuneConfig(images=finetune_images)
    width_plans: dict[tuple[float, str, str], PruningPlan] = {}
    rows: list[dict[str, Any]] = []
    n_runs = len(macs) * len(criteria)
    # One bar over the runs; the current run's step (pruning, then fine-tune k/n) is its postfix.
    bar = tqdm(
        total=n_runs,
        desc="simprune demo",
        unit="run",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )

    def on_step(step: int, total: int) -> None:
        if step == total or step % 8 == 0:
            bar.set_postfix_str(f"fine-tune {step}/{total}")

    with bar:
        for level in macs:
            for crit in criteria:
                k = len(rows) + 1
                name, merge = parse_criterion(crit)
                text = label(name, merge or "ls")
                bar.set_description(f"({k}/{n_runs}) {text} -{level:.0%} MACs")
                bar.set_postfix_str("pruning")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row = run_config(
                        RunConfig(name, level, seed=seed, **({"merge": merge} if merge else {})),
                        data,
                        model=model,
                        finetune_config=fcfg,
                        width_plans=width_plans,
                        keep_model=True,
                        on_step=on_step if progress else None,
                    )
                pruned, plan = row.pop("_model"), row.pop("_plan")
                tag = f"{crit.replace(':', '_')}_macs{round(level * 100)}"
                if plan is not None:
                    plan.save(os.path.join(out_dir, f"{tag}.plan.json"))
                torch.save(pruned.state_dict(), os.path.join(out_dir, f"{tag}.finetuned.pt"))
                ft = "-" if row["acc_ft"] is None else f"{row['acc_ft']:.1%}"
                say(
                    f"({k}/{n_runs}) {text}, MACs -{row['macs_reduction']:.1%}: "
                    f"accuracy {row['acc_pruned']:.1%} pruned, {row['acc_recal']:.1%} after BN "
                    f"recalibration, {ft} fine-tuned"
                )
                rows.append(row)
                bar.update(1)
        bar.set_description("simprune demo", refresh=False)
        bar.set_postfix_str("done")
    ft_desc = (
        "one epoch (4000 images)"
        if finetune_images is None
        else f"one pass over {finetune_images} of the 4000 training images"
    )
    print(
        f"\nMnistResNet on the shipped MNIST sample (1000 test images); fine-tune: {ft_desc}, "
        f"SGD lr {fcfg.lr} cosine, seed {seed}; BN recalibration on 1000 training images.\n"
        "Peers keep the same per-group widths as simprune's plan (identical MACs); simprune "
        "merges removed channels into their representatives, peers drop them; '+ data merge': "
        f"each removed channel reconstructed from the kept ones by least squares on "
        f"{CALIBRATION_IMAGES} training images.\n"
    )
    print(_fmt_table(rows, baseline))
    if plot:
        path = os.path.join(out_dir, "accuracy_vs_macs.png")
        plot_accuracy_vs_macs(rows, baseline, path)
        print(f"\nplot: {path}")
    import json

    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"baseline": baseline, "rows": rows}, f, indent=1)
    print(
        f"pruned models (state dicts after fine-tune) and plans: {out_dir}/  "
        "(rebuild: simprune.apply_plan(simprune.zoo.load_baseline(), plan) then load_state_dict)"
    )
    say("done")
    return rows
