"""Plain-tensor functional API: similarity scores and clusters of channels, for any pruning tool.

Channels are the rows of a tensor ``x`` of shape ``(n_channels, ...)`` (a Conv or Linear weight, or
any descriptor matrix; everything after dim 0 is flattened). Nothing here needs a model, a
dependency graph or Torch-Pruning.

* :func:`score_channels` -- one score per channel, lower = prune first. A channel removed at a
  merge of the dendrogram scores that merge's height; the last survivor scores ``+inf``. Removing
  the ``k`` lowest-scoring channels equals cutting the dendrogram into ``n - k`` clusters and keeping
  each cluster's highest-priority channel (the representative).
* :func:`cluster_channels` -- labels, representatives and scores for ``n_keep=`` clusters or a height
  ``threshold=``.
* :func:`channel_dendrogram` -- the linkage matrix itself (scipy format).

A list of tensors (one per layer) is processed in one batched engine call (one distance launch on
CUDA for all layers, then one linkage per layer) and gives a list of results.

:func:`score_channels` takes the *channels* and runs the whole chain (descriptors, distances,
linkage, scoring); :func:`simprune.redundancy_scores` (top level) scores a *linkage matrix* given a
priority. The two agree:
``score_channels(x) == simprune.redundancy_scores(channel_dendrogram(x), channel_energy(v))``.

>>> import torch
>>> from simprune import functional as F
>>> w = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [5.0, 5.0]])
>>> F.score_channels(w, metric="euclidean")  # channel 0 goes first, [5, 5] (most energy) last
tensor([0.1000, 6.3772, 1.3798,    inf], dtype=torch.float64)
>>> labels, kept, scores = F.cluster_channels(w, n_keep=3, metric="euclidean")
>>> labels.tolist(), kept.tolist()
([0, 0, 1, 2], [1, 2, 3])
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from ._checks import as_tensor
from .dendrogram import cut_n_clusters, cut_threshold, redundancy_scores, representatives
from .engine import channel_energy, check_metric_and_method, dendrograms, height_scale, metric_info
from .similarity import channel_descriptors

__all__ = [
    "ChannelClusters",
    "channel_dendrogram",
    "cluster_channels",
    "height_scale",
    "score_channels",
]


class ChannelClusters(NamedTuple):
    """``labels, representatives, scores = cluster_channels(...)``.

    labels : (n,) int64, 0-based cluster label of each channel
    representatives : (n_clusters,) int64, kept channel indices, sorted ascending
    scores : (n,) float64 redundancy scores (see :func:`score_channels`)
    """

    labels: torch.Tensor
    representatives: torch.Tensor
    scores: torch.Tensor


def _pick_metric(metric: str | None, gamma: Any, beta: Any) -> str:
    if metric is None:
        return "gaussian" if gamma is not None and beta is not None else "linear"
    metric_info(metric)
    return metric


def _as_list(x: Any, name: str, n: int) -> list[Any]:
    if x is None:
        return [None] * n
    if isinstance(x, (list, tuple)) and len(x) == n:
        return list(x)
    raise ValueError(f"with a list of layers, {name} must be None or a list of {n} tensors")


def _descriptors(x: Any, metric: str, gamma: Any, beta: Any, bias: Any) -> torch.Tensor:
    t = as_tensor(x, "x")
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(
            f"x must have shape (n_channels, ...) with n_channels >= 1, got {tuple(t.shape)}"
        )
    return channel_descriptors(t, metric=metric, gamma=gamma, beta=beta, bias=bias)


def _priority(p: Any, v: torch.Tensor) -> torch.Tensor:
    n = v.shape[0]
    if isinstance(p, str):
        if p != "energy":
            raise ValueError(
                f"priority must be 'energy', None or a tensor of shape ({n},), got {p!r}"
            )
        return channel_energy(v).cpu()
    if p is None:
        return torch.zeros(n, dtype=torch.float64)
    t = as_tensor(p, "priority").detach().cpu().to(torch.float64)
    if t.shape != (n,):
        raise ValueError(f"priority must have shape ({n},), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("priority contains NaN or Inf")
    return t


def _prepare(
    x: Any, metric: str | None, method: str, gamma: Any, beta: Any, bias: Any
) -> tuple[bool, str, list[torch.Tensor]]:
    batched = isinstance(x, (list, tuple))
    xs = list(x) if batched else [x]
    if batched and not xs:
        raise ValueError("x is an empty list of layers")
    gs = _as_list(gamma, "gamma", len(xs)) if batched else [gamma]
    bs = _as_list(beta, "beta", len(xs)) if batched else [beta]
    cs = _as_list(bias, "bias", len(xs)) if batched else [bias]
    m = _pick_metric(metric, gs[0], bs[0])
    check_metric_and_method(m, method)
    vs = []
    for k, (xi, g, b, c) in enumerate(zip(xs, gs, bs, cs, strict=True)):
        try:
            vs.append(_descriptors(xi, m, g, b, c))
        except (TypeError, ValueError) as e:
            if not batched:
                raise
            raise type(e)(f"layer {k}: {e}") from e
    return batched, m, vs


def channel_dendrogram(
    x: Any,
    *,
    metric: str | None = None,
    method: str = "average",
    gamma: Any = None,
    beta: Any = None,
    bias: Any = None,
    normalize: bool = False,
    backend: str = "auto",
) -> Any:
    """Linkage matrix of the channels (rows) of ``x``: float64 ``(n-1, 4)``, scipy format, on CPU.

    Parameters are those of :func:`score_channels`; ``normalize=True`` divides the heights by
    :func:`height_scale`. A list of tensors gives a list of matrices (one batched engine call).
    """
    batched, m, vs = _prepare(x, metric, method, gamma, beta, bias)
    zs = dendrograms(vs, m, method, backend)
    out = []
    for v, z in zip(vs, zs, strict=True):
        zt = torch.from_numpy(z.copy())
        if normalize and z.shape[0]:
            zt[:, 2] /= height_scale(v, m)
        out.append(zt)
    return out if batched else out[0]


def score_channels(
    x: Any,
    *,
    metric: str | None = None,
    method: str = "average",
    priority: Any = "energy",
    gamma: Any = None,
    beta: Any = None,
    bias: Any = None,
    normalize: bool = False,
    backend: str = "auto",
) -> Any:
    """Per-channel redundancy scores of plain tensors: lower = prune first.

    Descriptors of the channels (rows of ``x``) are clustered hierarchically; walking the merges in
    order, each cluster is represented by its highest-``priority`` channel and at a merge of height h
    the weaker representative is removed and scores h; the last survivor scores ``+inf``. Removing
    the ``k`` lowest scores therefore equals cutting the dendrogram into ``n - k`` clusters and keeping
    each cluster's representative (:func:`cluster_channels` with ``n_keep=n - k``). Under tied heights
    the tie is resolved by merge order (see :func:`simprune.redundancy_scores`).

    Parameters
    ----------
    x : Tensor (n_channels, ...) or a list of such tensors
        One row per channel (a Conv/Linear weight, or any descriptor matrix). A list runs every
        layer through one batched engine call and returns a list.
    metric : {None, "gaussian", "wasserstein", "linear", "cosine", "euclidean", "sqeuclidean"}
        Descriptor metric (:func:`simprune.channel_descriptors`). None: ``gaussian`` when ``gamma``
        and ``beta`` (the following BatchNorm) are given, else ``linear`` (rows as given, plus the
        bias if any). Squared-Euclidean metrics cluster on the Euclidean distance.
    method : scipy linkage method ("average" default, "single", "complete", "weighted", "ward", ...)
    priority : "energy" (default: squared descriptor norm, gamma^2 + beta^2 for gaussian), None
        (lowest index survives) or a tensor (n_channels,) of any per-channel importance.
    gamma, beta, bias : (n_channels,) BatchNorm scale/shift and layer bias (lists for a list ``x``).
    normalize : divide the heights by the RMS descriptor norm (:func:`height_scale`), making scores
        comparable across layers (what :func:`simprune.prune`'s global cut ranks).
    backend : engine backend ("auto", "torch", "cpu", "triton", "cuda").

    Returns
    -------
    Tensor (n_channels,) float64 on CPU, or a list of them.

    >>> import torch
    >>> from simprune.functional import score_channels
    >>> w = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    >>> score_channels(w, metric="cosine")  # channel 0 has channel 1's direction, less energy
    tensor([0., 1., inf], dtype=torch.float64)
    """
    batched, m, vs = _prepare(x, metric, method, gamma, beta, bias)
    if batched:
        if isinstance(priority, (list, tuple)):
            prs = _as_list(priority, "priority", len(vs))
        else:
            prs = [priority] * len(vs)
    else:
        prs = [priority]
    pts = [_priority(p, v) for p, v in zip(prs, vs, strict=True)]
    zs = dendrograms(vs, m, method, backend)
    out = []
    for v, z, p in zip(vs, zs, pts, strict=True):
        if z.shape[0] == 0:
            out.append(torch.full((1,), math.inf, dtype=torch.float64))
            continue
        s = redundancy_scores(torch.from_numpy(z), p)
        if normalize:
            s = s / height_scale(v, m)
        out.append(s)
    return out if batched else out[0]


def cluster_channels(
    x: Any,
    *,
    n_keep: int | None = None,
    threshold: float | None = None,
    metric: str | None = None,
    method: str = "average",
    priority: Any = "energy",
    gamma: Any = None,
    beta: Any = None,
    bias: Any = None,
    normalize: bool = False,
    backend: str = "auto",
) -> ChannelClusters:
    """Cluster the channels (rows) of ``x`` and pick one representative per cluster.

    Exactly one of ``n_keep`` (exactly that many clusters: the first ``n - n_keep`` merges, see
    :func:`simprune.cut_n_clusters`) or ``threshold`` (clusters whose cophenetic distance is at most
    ``threshold``, scipy's ``fcluster(..., "distance")``; on the scale-free heights when
    ``normalize=True``). Each cluster keeps its highest-``priority`` channel (ties: lowest index).
    Other parameters are those of :func:`score_channels`.

    Returns
    -------
    ChannelClusters(labels, representatives, scores)
        With ``n_keep``: ``representatives`` are exactly the channels that are *not* among the
        ``n - n_keep`` lowest ``scores``.

    >>> import torch
    >>> from simprune.functional import cluster_channels
    >>> w = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
    >>> res = cluster_channels(w, threshold=1.0, metric="euclidean", priority=None)
    >>> res.labels.tolist(), res.representatives.tolist()
    ([0, 0, 1, 1], [0, 2])
    """
    if (n_keep is None) == (threshold is None):
        raise ValueError("give exactly one of n_keep= or threshold=")
    if isinstance(x, (list, tuple)):
        raise TypeError("cluster_channels takes one layer; use score_channels for a list")
    _, m, vs = _prepare(x, metric, method, gamma, beta, bias)
    v = vs[0]
    n = v.shape[0]
    if n_keep is not None:
        if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)):
            raise TypeError(f"n_keep must be an int, got {type(n_keep).__name__}")
        if not 1 <= int(n_keep) <= n:
            raise ValueError(f"n_keep must be in [1, n_channels={n}], got {n_keep}")
    else:
        t = float(threshold)  # type: ignore[arg-type]
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    p = _priority(priority, v)
    z = torch.from_numpy(dendrograms([v], m, method, backend)[0])
    if n == 1:
        labels = torch.zeros(1, dtype=torch.int64)
        scores = torch.full((1,), math.inf, dtype=torch.float64)
    else:
        scale = height_scale(v, m) if normalize else 1.0
        if n_keep is not None:
            labels = cut_n_clusters(z, int(n_keep))
        else:
            zs = z.clone()
            zs[:, 2] /= scale
            labels = cut_threshold(zs, t)
        scores = redundancy_scores(z, p) / scale
    kept = representatives(labels, energy=p)
    return ChannelClusters(labels, kept, scores)
