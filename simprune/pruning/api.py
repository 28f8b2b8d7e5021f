"""``simprune.prune``: similarity-based structured pruning of a whole network in one call."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..dendrogram import cut_n_clusters
from ..engine import check_metric_and_method, default_metric
from .budget import CutResult, GroupCurve, make_curve, solve_global, solve_uniform
from .calibrate import check_data_type, recalibrate_bn
from .descriptors import check_finite_model
from .distributed import (
    EnginePass,
    all_reduce_stats,
    broadcast_buffers,
    engine_pass,
    rank_of,
    resolve_process_group,
)
from .groups import ChannelGroup, build_dependency_graph, check_connected, collect_groups
from .macs import CostModel
from .merge import MERGE_MODES, assign, choose_kept, data_merge_plans, expand_units
from .plan import GroupPlan, PruningPlan, describe_inputs, execute
from .progress import Progress
from .report import GroupRow, PruneReport
from .stats import GroupStats, attach_stats, collect_stats
from .transformers import (
    conv1d_to_linear,
    describe_output_transform,
    head_groups,
    linear_to_conv1d,
    mlp_groups,
    probe_channels,
    resolve_scope,
    set_use_cache,
    verify_all,
)

CUTS = ("global", "uniform")
# Within the bisection's resolution the target is met to this relative tolerance (issue: +-1 %).
TARGET_TOLERANCE = 0.01


class PruneResult(NamedTuple):
    """``model, plan, report = simprune.prune(...)``."""

    model: nn.Module
    plan: PruningPlan
    report: PruneReport


def _versions() -> dict[str, str]:
    import torch_pruning

    from .. import __version__

    return {
        "simprune": __version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning.__version__,
    }


def _target(
    macs_reduction: float | None, params_reduction: float | None, pruning_ratio: float | None
) -> tuple[str, float]:
    given = {
        k: v
        for k, v in (
            ("macs_reduction", macs_reduction),
            ("params_reduction", params_reduction),
            ("pruning_ratio", pruning_ratio),
        )
        if v is not None
    }
    if len(given) != 1:
        raise ValueError(
            "give exactly one target: macs_reduction=, params_reduction= or pruning_ratio= "
            f"(got {sorted(given) or 'none'})"
        )
    ((name, value),) = given.items()
    if not (isinstance(value, (int, float)) and 0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return name, float(value)


def _map_ignored(
    model: nn.Module, work: nn.Module, ignored: Sequence[nn.Module]
) -> list[nn.Module]:
    if work is model:
        return list(ignored)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for m in ignored:
        if id(m) not in names:
            raise ValueError(f"ignored_layers: {type(m).__name__} module is not part of the model")
        out.append(work.get_submodule(names[id(m)]))
    return out


def prune(
    model: nn.Module,
    example_inputs: Any,
    *,
    macs_reduction: float | None = None,
    params_reduction: float | None = None,
    pruning_ratio: float | None = None,
    metric: str | None = None,
    method: str = "average",
    cut: str = "global",
    keep_per_cluster: int = 1,
    representative: str = "energy",
    merge: bool | str = True,
    min_keep_ratio: float = 0.1,
    round_to: int | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    inplace: bool = False,
    calibration_data: Any = None,
    backend: str = "auto",
    verify: bool = True,
    progress: bool = True,
    process_group: Any = None,
    output_transform: Any = None,
    scope: str = "auto",
    prune_heads: bool = False,
) -> PruneResult:
    """Prune a network by channel similarity: cluster each channel group, keep representatives.

    Channel groups come from Torch-Pruning's DependencyGraph (coupled channels across residual adds,
    concatenations and depthwise convs move together). Each group's channels get descriptors
    (metric.md: the probabilistic channel-similarity metric derived from the paper's stated model,
    ``gaussian``, for Conv/Linear + BatchNorm; ``linear`` without BN), one engine pass computes all
    distance matrices and dendrograms, one global scale-free threshold (bisection) meets the target,
    each cluster keeps its representatives, the removed channels are merged into them, and
    Torch-Pruning's prune functions rewrite the layers.

    Parameters
    ----------
    model : nn.Module
        Left untouched unless ``inplace=True``.
    example_inputs : Tensor, tuple of Tensors, or dict of keyword arguments
        Inputs for tracing and for recording output sizes (a batch of 1 is enough); a dict is
        passed as ``model(**example_inputs)`` (e.g. ``{"input_ids": ids, "attention_mask": m}``).
    macs_reduction, params_reduction, pruning_ratio : float in [0, 1)
        Exactly one. MACs/params: fraction of the whole model's MACs as Torch-Pruning's
        ``count_ops_and_params`` counts them (per sample; attention included) or of all parameters
        to remove, met within +-1 %. ``pruning_ratio``: fraction of
        the prunable channels to remove (with ``cut="uniform"``: of every group's channels, as in
        Torch-Pruning).
    metric : str, optional
        "gaussian", "wasserstein", "linear", "cosine", "euclidean", "sqeuclidean" or
        "activation". None (default): "activation" when ``calibration_data`` is given (and
        ``prune_heads`` is off), else "gaussian" -- the choice docs/results.md measures (with data,
        the activation metric's selection was ahead of the gaussian one at -50 % and -70 % MACs);
        "gaussian", with a warning, when the data cannot measure some group (no consumer input
        holds all of its channels).
        Descriptor metric (simprune.similarity); BN metrics fall back to ``linear`` without a BN.
        "activation" needs ``calibration_data``: D_ij = Var(z_i - z_j) of the channels as the
        consumers read them, measured (simprune.pruning.descriptors.activation_descriptors).
        The plan records the metric used.
    method : linkage method (scipy's names); "average" clusters on sqrt(D).
    cut : {"global", "uniform"}
        "global": one threshold t on the scale-free heights for all groups (a group's merge heights
        divided by the RMS norm of its descriptors, sqrt(mean channel energy): for ``gaussian``,
        sqrt(E[(y_i - y_j)^2] / mean_k E[y_k^2]); cosine heights are used as they are), found by
        bisection, merges tied at the final height split across groups in proportion to their size;
        "uniform": every group loses the same fraction (bisection on that fraction for MACs/params
        targets). Groups whose channels reach the model output (classifier classes) are never
        pruned.
    keep_per_cluster : channels kept per cluster.
    representative : {"energy", "medoid"}
        Which channels of a cluster stay: largest energy (squared descriptor norm) or medoid.
    merge : {True, "ls", "sum", "data", False}
        Fold removed channels into the kept ones in every consumer. True: "data" when
        ``calibration_data`` is given, else "ls". "ls": into the representative with the
        least-squares coefficient of the descriptors <v_j, v_r>/<v_r, v_r>; "sum": coefficient 1;
        "data": each removed channel is reconstructed from all kept channels of its group by ridge
        least squares on their statistics at the consumers' inputs, measured on
        ``calibration_data`` (simprune.pruning.stats), W_K += W_R B^T, and its mean goes into the
        consumers' biases (simprune.pruning.merge.data_merge_blocks; groups without measurable
        statistics fall back to "ls" with a warning).
    min_keep_ratio : every group keeps at least max(1, ceil(min_keep_ratio * n)) units.
    round_to : keep a multiple of ``round_to`` channels per group (rounded up, at most all).
    ignored_layers : modules whose output channels are never pruned.
    inplace : prune ``model`` itself.
    calibration_data : Tensor or iterable of batches, optional
        Real inputs. Used (1) before the cut, in one streaming pass of the unpruned model, for the
        mean and covariance of every group's channels at its consumers' inputs, which
        ``merge="data"`` (the default with data) and ``metric="activation"`` (channel distances
        Var(z_i - z_j)) use; (2) after the rewrite, to re-estimate every BatchNorm's running
        statistics
        (:func:`recalibrate_bn`: a Tensor of inputs, or batches such as a ``DataLoader`` of
        ``(x, y)``; a few hundred to a few thousand samples, drawn like the data the model will
        see -- a slice of a class-sorted set is not). Pruning and merging make the stored
        statistics stale; on the MNIST evidence this recovers most of the accuracy lost (-30 % MACs:
        36.4 % -> 97.2 % test accuracy) without training. None (default): statistics are left as they are.
    backend : engine backend for distances and linkage ("auto", "torch", "cpu", "triton", "cuda").
        "cpu" runs the engine pass on the CPU (the C++ kernels) also for a model on a GPU: only the
        descriptors travel (a few MB for a ResNet-50).
    verify : check the rewrite against the real forward (default; simprune.pruning.verify): where
        each channel lands in each consumer's input is probed, every consumer's weights are
        compared with the original's at those positions (corrected where Torch-Pruning removed the
        wrong features), and the pruned model must equal the original with the removed channels'
        inputs dropped (merged) on the example inputs. A group that fails is excluded (not pruned)
        with a warning naming it and why, and the cut is re-solved without it; the report lists
        ``excluded`` groups and ``corrected`` consumers. ``verify=False`` trusts Torch-Pruning.
    progress : print progress on stderr.
    output_transform : None, str or callable
        Which outputs to trace (simprune.pruning.transformers): None, every tensor the model
        returns (nested tuples, dicts and ``ModelOutput``s; cache objects ignored); a name
        (``"logits"``; recorded in the plan); a callable ``output -> tensor(s)``.
    scope : {"auto", "all", "mlp"}
        Which channels may go. "all": every channel group Torch-Pruning finds (conv channels,
        Linear features, the residual stream); "mlp": only the hidden neurons of MLP blocks (Linear
        -> element-wise ops -> Linear: gated LLaMA/Mistral/Qwen2 MLPs, GPT-2, BERT/ViT
        intermediate/output, timm ``Mlp``), found from their roots with a bounded search, the
        residual stream, norms and attention untouched (simprune.pruning.transformers.mlp_groups).
        "auto" (default): "mlp" for a Hugging Face ``PreTrainedModel`` (Torch-Pruning cannot
        enumerate every group of a transformer), "all" otherwise. GPT-2's ``Conv1D`` layers are
        pruned as Linear layers and returned as ``Conv1D``.
    prune_heads : also prune whole attention heads (scope "mlp"; off by default: attention is then
        never touched). A head is one unit -- its query, key and value rows and its output
        projection columns; with grouped-query attention a key/value head and all the query heads
        that share it -- clustered by the descriptors of those rows, merged into its representative
        in the output projection, and the module's head counts updated
        (simprune.pruning.transformers: LLaMA/Mistral/Qwen2/ViT ``q/k/v/o_proj``, BERT, GPT-2).
        The heads' rewrite is checked against the original with the removed heads' inputs of the
        output projection dropped (merged).
    process_group : torch.distributed process group, optional
        Spread the engine pass over its ranks (simprune.pruning.distributed): each rank clusters
        its share of the groups (by cost, n^2 * d), the dendrograms are gathered and every rank
        solves the same cut and returns the same pruned model and plan as a single process would.
        None (default): the default group when torch.distributed is initialised (``torchrun``)
        with more than one rank; False: never. Every rank must call ``prune`` with the same model,
        inputs and settings; ``calibration_data`` is each rank's share: the statistics are
        combined over the ranks (all-reduce), and BatchNorm statistics re-estimated on rank 0's
        share are copied to every rank. Single process or not, the engine pass streams the
        groups to the engine device in bounded batches; ``report.engine`` has its peak memory.

    Returns
    -------
    PruneResult(model, plan, report)
        The pruned model (same training mode as the input), the :class:`PruningPlan` (JSON,
        replayable with :func:`apply_plan`) and a :class:`PruneReport` (``print(report)`` shows the
        table).

    Raises
    ------
    ValueError
        Bad arguments, NaN/inf weights (naming the tensor), an unreachable target (with the largest
        reachable one).
    simprune.pruning.TracingError
        The model cannot be traced (naming the layer or op).
    """
    target_name, target_value = _target(macs_reduction, params_reduction, pruning_ratio)
    metric_by_default = metric is None
    metric = default_metric(metric, calibration_data is not None and not prune_heads)
    check_metric_and_method(metric, method)
    if cut not in CUTS:
        raise ValueError(f"unknown cut {cut!r}; expected one of {CUTS}")
    if not (isinstance(keep_per_cluster, int) and keep_per_cluster >= 1):
        raise ValueError(f"keep_per_cluster must be an int >= 1, got {keep_per_cluster!r}")
    if representative not in ("energy", "medoid"):
        raise ValueError(
            f"unknown representative {representative!r}; expected 'energy' or 'medoid'"
        )
    merge_mode: str | None
    if merge is True:
        merge_mode = "ls"
        if calibration_data is not None:
            merge_mode = "data"
    elif merge is False or merge is None:
        merge_mode = None
    elif merge in (*MERGE_MODES, "data"):
        merge_mode = str(merge)
    else:
        raise ValueError(f"merge must be True, False, 'ls', 'sum' or 'data', got {merge!r}")
    for what, needs in (
        ("merge='data'", merge_mode == "data"),
        (f"metric={metric!r}", metric == "activation"),
    ):
        if needs and calibration_data is None:
            raise ValueError(f"{what} needs calibration_data (inputs to measure the channels on)")
    if not 0.0 <= min_keep_ratio <= 1.0:
        raise ValueError(f"min_keep_ratio must be in [0, 1], got {min_keep_ratio!r}")
    if round_to is not None and not (isinstance(round_to, int) and round_to >= 1):
        raise ValueError(f"round_to must be None or an int >= 1, got {round_to!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if calibration_data is not None:
        check_data_type(calibration_data)
    check_finite_model(model)
    pg = resolve_process_group(process_group)
    scope = resolve_scope(model, "mlp" if prune_heads and scope == "auto" else scope)
    if prune_heads and scope != "mlp":
        raise ValueError("prune_heads=True needs scope='mlp' (the default for it)")
    if prune_heads and (merge_mode == "data" or metric == "activation"):
        raise ValueError(
            "prune_heads=True does not support merge='data' or metric='activation' yet (with "
            "calibration_data pass merge='ls')"
        )
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)

    timings: dict[str, float] = {}
    with Progress(progress and rank_of(pg) == 0) as bar:  # ranks: progress on rank 0 only
        bar.stage("tracing")
        t0 = time.perf_counter()
        work = model if inplace else copy.deepcopy(model)
        training = work.training
        converted = conv1d_to_linear(work)  # GPT-2's Conv1D: pruned as nn.Linear (transformers.py)
        # The unpruned model the rewrite is checked against (the caller's, untouched, unless inplace).
        original = None
        if verify:
            original = copy.deepcopy(work) if inplace or converted else model
        trace_args = (example_inputs, ignored_layers, output_transform, scope, prune_heads)
        dg, groups, skipped, cm = _trace(model, work, *trace_args)
        timings["trace"] = time.perf_counter() - t0
        stats: dict[str, GroupStats] = {}
        if merge_mode == "data" or metric == "activation":
            bar.stage("calibration statistics")
            t0 = time.perf_counter()
            stats = all_reduce_stats(  # ranks: each rank's share -> all the data
                lambda: collect_stats(work, groups, calibration_data, example_inputs), pg
            )
            attach_stats(groups, stats)
            timings["statistics"] = time.perf_counter() - t0
            unmeasured = [g.root_name for g in groups if g.stats is None]
            if metric_by_default and metric == "activation" and unmeasured:
                # The default must not fail where the data cannot measure a group: the whole cut
                # then uses the weight descriptors (one metric for all groups' heights).
                warnings.warn(
                    f"simprune.prune: no consumer input of group(s) {unmeasured[:5]}"
                    f"{' ...' if len(unmeasured) > 5 else ''} holds all of their channels, so the "
                    "default metric with calibration data ('activation') cannot measure them; the "
                    "'gaussian' metric is used for all groups (pass metric='activation' to refuse "
                    "instead)",
                    stacklevel=2,
                )
                metric = "gaussian"

        dendrograms: dict[str, np.ndarray] = {}
        settings: dict[str, Any] = dict(
            target=(target_name, target_value), metric=metric, method=method, cut=cut,
            keep_per_cluster=keep_per_cluster, representative=representative,
            merge_mode=merge_mode, min_keep_ratio=min_keep_ratio, round_to=round_to,
        )  # fmt: skip
        ep = _engine_pass(groups, bar, timings, metric, method, backend, pg, settings)
        probe = None
        if verify:
            t0 = time.perf_counter()
            probe = probe_channels(work, example_inputs, groups)
            timings["probe"] = time.perf_counter() - t0
        excluded: dict[str, str] = {}
        corrected: list[tuple[str, str]] = []
        widths0 = {s.name: s.out0 for s in cm.layers if s.kind != "norm"}
        while True:
            t0 = time.perf_counter()
            plan_groups, cut_res = _plan(
                groups, ep, cm, dendrograms, frozen=set(excluded), **settings
            )
            timings["cut"] = timings.get("cut", 0.0) + time.perf_counter() - t0
            bar.stage("rewriting")
            t0 = time.perf_counter()
            execute(work, dg, plan_groups, groups)
            timings["rewrite"] = timings.get("rewrite", 0.0) + time.perf_counter() - t0
            if original is None or probe is None:
                break
            bar.stage("verifying")
            t0 = time.perf_counter()
            res = verify_all(original, work, groups, plan_groups, probe, example_inputs)
            timings["verify"] = timings.get("verify", 0.0) + time.perf_counter() - t0
            corrected += res.corrected
            if res.ok:
                for name, why in corrected:
                    warnings.warn(
                        f"simprune.prune: consumer {name!r} corrected: {why}", stacklevel=2
                    )
                break
            for gi, why in sorted(res.failed.items()):
                root = groups[gi].root_name
                excluded[root] = why
                warnings.warn(
                    f"simprune.prune: group {root!r} excluded (not pruned): {why}; the cut is "
                    "re-solved without it",
                    stacklevel=2,
                )
            # Start again from the unpruned model, without the failed groups.
            corrected = []
            work = copy.deepcopy(original)
            names0 = [g.root_name for g in groups]
            dg, groups, _, cm = _trace(model, work, *trace_args)
            if [g.root_name for g in groups] != names0:
                raise RuntimeError("internal: re-tracing the model gave different channel groups")
            attach_stats(groups, stats)
        work.train(training)
        if inplace and work is not model:
            # The final rewrite was made on a fresh copy: the caller's module becomes it.
            model.__dict__.update(work.__dict__)
            work = model
        if calibration_data is not None:
            bar.stage("recalibrating BatchNorm")
            t0 = time.perf_counter()
            recalibrate_bn(work, calibration_data)
            broadcast_buffers(work, pg)  # ranks: rank 0's BatchNorm statistics everywhere
            timings["calibrate"] = time.perf_counter() - t0
        bar.stage("done")

    macs1, params1 = cm.measure(work)
    plan = PruningPlan(
        plan_groups,
        describe_inputs(example_inputs),
        settings={
            "target": {target_name: target_value},
            "metric": metric,
            "method": method,
            "cut": cut,
            "keep_per_cluster": keep_per_cluster,
            "representative": representative,
            "merge": merge_mode,
            "min_keep_ratio": min_keep_ratio,
            "round_to": round_to,
            "threshold": cut_res.threshold,
            "verify": verify,
            "excluded": sorted(excluded),
            "uniform_ratio": cut_res.ratio,
            "output_transform": describe_output_transform(output_transform),
            "scope": scope,
            "prune_heads": prune_heads,
        },
        versions=_versions(),
    )
    layers = {}
    for name, w0 in widths0.items():
        mod = work.get_submodule(name)
        w1 = getattr(mod, "out_channels", None) or getattr(mod, "out_features", None)
        layers[name] = [int(w0), int(w1 or 0)]
    report = PruneReport(
        groups=[
            GroupRow(
                gp.root,
                gp.n_channels,
                len(gp.kept),
                sum(1 for _, kind in gp.members if kind in ("producer", "depthwise")),
            )
            for gp in plan_groups
        ],
        macs_before=cm.macs0,
        macs_after=macs1,
        params_before=cm.params0,
        params_after=params1,
        target={target_name: target_value, "cut": cut},
        threshold=cut_res.threshold,
        skipped=[[r, why] for r, why in skipped],
        excluded=[[r, why] for r, why in excluded.items()],
        corrected=[[c, why] for c, why in corrected],
        timings=timings,
        layers=layers,
        dendrograms=dendrograms,
        engine=ep.stats,
    )
    if plan.n_removed == 0:
        warnings.warn(
            "simprune.prune removed no channel (target too small, or every group is at its "
            "min_keep_ratio guard / ignored)",
            stacklevel=2,
        )
    if converted:
        linear_to_conv1d(work)
    set_use_cache(work, use_cache)
    return PruneResult(work, plan, report)


def _trace(
    model: nn.Module,
    work: nn.Module,
    example_inputs: Any,
    ignored_layers: Any,
    output_transform: Any = None,
    scope: str = "all",
    prune_heads: bool = False,
) -> tuple[Any, list[ChannelGroup], list[tuple[str, str]], CostModel]:
    """Dependency graph, channel groups (and the skipped ones) and the cost model of ``work``."""
    ignored = _map_ignored(model, work, ignored_layers or [])
    set_use_cache(work, False)  # restored by prune: no key/value cache while pruning
    dg = build_dependency_graph(work, example_inputs, ignored, output_transform)
    if scope == "mlp":
        groups, skipped = mlp_groups(dg, work, ignored)
    else:
        groups, skipped = collect_groups(dg, work, ignored)
    if prune_heads:
        heads, skipped_heads = head_groups(work, len(groups), ignored)
        groups = [*groups, *heads]
        skipped = [*skipped, *skipped_heads]
    cm = CostModel(work, example_inputs)
    if output_transform is None:
        # With a transform, layers outside the traced outputs (a pooler) are legitimately absent.
        check_connected(dg, work, cm.ran, ignored)
    cm.bind(groups)
    return dg, groups, skipped, cm


def _engine_pass(
    groups: list[ChannelGroup],
    bar: Progress,
    timings: dict[str, float],
    metric: str,
    method: str,
    backend: str,
    pg: Any,
    settings: dict[str, Any],
) -> EnginePass:
    """Descriptors -> distances -> linkage: every group's dendrogram (this rank's descriptors),
    streamed to the engine device in bounded batches, spread over the ranks of ``pg``."""

    def step(k: int, n: int) -> None:
        bar.stage("engine pass (descriptors, distances, linkage)", k, n)

    return engine_pass(
        groups, metric, method, backend, process_group=pg, timings=timings, progress=step,
        context={"backend": backend, **settings},
    )  # fmt: skip


def _plan(
    groups: list[ChannelGroup],
    ep: EnginePass,
    cm: CostModel,
    dendrograms: dict[str, np.ndarray],
    *,
    frozen: set[str],
    target: tuple[str, float],
    metric: str,
    method: str,
    cut: str,
    keep_per_cluster: int,
    representative: str,
    merge_mode: str | None,
    min_keep_ratio: float,
    round_to: int | None,
) -> tuple[list[GroupPlan], CutResult]:
    """Cut -> representatives and merges for all groups; ``frozen`` groups (root names) keep all.

    Every rank solves the same cut from the gathered dendrograms; each group's representatives and
    merges come from its owner (``ep.map_groups``)."""
    curves: list[GroupCurve] = []
    for g, z, scale in zip(groups, ep.zs, ep.scales, strict=True):
        if z.shape[0]:
            zs_scaled = z.copy()
            zs_scaled[:, 2] /= scale
            dendrograms[g.root_name] = zs_scaled
        curve = make_curve(
            z, scale, ch_groups=g.ch_groups, keep_per_cluster=keep_per_cluster,
            min_keep_ratio=1.0 if g.root_name in frozen else min_keep_ratio,
        )  # fmt: skip
        curves.append(curve)

    name, value = target
    total_ch = float(sum(g.n_channels for g in groups))
    if name == "macs_reduction":

        def cost(r: np.ndarray) -> float:
            return cm.cost(r)[0]

        goal = (1.0 - value) * cm.macs0
    elif name == "params_reduction":

        def cost(r: np.ndarray) -> float:
            return cm.cost(r)[1]

        goal = (1.0 - value) * cm.params0
    else:

        def cost(r: np.ndarray) -> float:
            return total_ch - float(np.sum(r))

        goal = (1.0 - value) * total_ch

    if cut == "uniform":
        res = solve_uniform(
            curves, cost, None if name == "pruning_ratio" else goal,
            ratio=value if name == "pruning_ratio" else None, round_to=round_to,
        )  # fmt: skip
    else:
        res = solve_global(curves, cost, goal, round_to=round_to)
    # A uniform ratio is a per-group request that the guards may clamp (as in Torch-Pruning); a
    # global quantity that cannot be met is an error.
    explicit_ratio = cut == "uniform" and name == "pruning_ratio"
    if not explicit_ratio and res.cost0 > 0 and value > 0:
        if (res.min_cost - goal) / res.cost0 > TARGET_TOLERANCE:
            reached = 1.0 - res.min_cost / res.cost0
            raise ValueError(
                f"cannot reach {name}={value}: the most this model allows is {reached:.4f} with "
                f"min_keep_ratio={min_keep_ratio}, keep_per_cluster={keep_per_cluster}, "
                f"round_to={round_to} and the ignored layers"
                + (f" (groups excluded by verification: {sorted(frozen)})" if frozen else "")
            )
        if abs(res.cost - goal) / res.cost0 > TARGET_TOLERANCE:
            warnings.warn(
                f"{name}={value} met only to {1.0 - res.cost / res.cost0:.4f}: the closest cut "
                "(channel groups are removed in steps; round_to and grouped convs coarsen them)",
                stacklevel=3,
            )

    def group_plan(i: int) -> GroupPlan:
        g, z, curve, m = groups[i], ep.zs[i], curves[i], res.merges[i]
        n = g.n_units
        if m == 0:
            kept_units = list(range(n))
            unit_merges: list[tuple[int, int, float]] = []
        else:
            v = ep.vs[i]
            assert v is not None, "internal: a group planned by a rank that does not own it"
            vc = v.detach().cpu().to(torch.float64)
            labels = cut_n_clusters(torch.from_numpy(z), n - m)
            kept_t = choose_kept(
                vc, labels, method=representative, keep_per_cluster=keep_per_cluster
            )
            if len(kept_t) != curve.kept(m):
                raise AssertionError("internal: kept count differs from the cut's count")
            kept_units = kept_t.tolist()
            unit_merges = assign(vc, labels, kept_t, merge_mode) if merge_mode else []
        return GroupPlan(
            root=g.root_name,
            n_channels=g.n_channels,
            ch_groups=g.ch_groups,
            members=[[mm.name, mm.kind] for mm in g.members],
            kept=g.unit_channels(kept_units),
            merges=[[j, r, a] for j, r, a in expand_units(g, unit_merges)],
        )

    plans = ep.map_groups(group_plan)
    if merge_mode == "data":
        data_merge_plans(groups, plans)
    return plans, res
