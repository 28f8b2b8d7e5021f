"""The engine pass: channel descriptors in, dendrograms out -- and the tables it needs.

Every caller that turns descriptor matrices into dendrograms (:func:`simprune.prune`, the functional
API :mod:`simprune.functional`, the Torch-Pruning importance) goes through :func:`dendrograms`: one
batched distance call for all groups (one launch on a GPU), then the linkages (one launch on a GPU
with the CUDA extension). Backend choice is :mod:`simprune.backends`' alone.

The descriptor-metric table (:data:`METRICS`) says, for each descriptor metric, which pairwise
distance the descriptor model defines and which distance the dendrogram is built on:

===============  ===========================  =============================  ======================
metric           pairwise distance D          dendrogram built on            heights made scale-free
===============  ===========================  =============================  ======================
``gaussian``     sqeuclidean (E[(y_i-y_j)^2])  euclidean, sqrt(D)             / RMS descriptor norm
``wasserstein``  sqeuclidean                  euclidean                      / RMS descriptor norm
``linear``       sqeuclidean                  euclidean                      / RMS descriptor norm
``euclidean``    euclidean                    euclidean                      / RMS descriptor norm
``sqeuclidean``  sqeuclidean                  euclidean                      / RMS descriptor norm
``cosine``       cosine                       cosine                         already scale-free
``activation``   sqeuclidean (Var(z_i-z_j))   euclidean, sqrt(D)             / RMS descriptor norm
===============  ===========================  =============================  ======================

Squared-Euclidean metrics cluster on sqrt(D), a true metric, valid for every linkage method (ward
included). A height divided by the RMS descriptor norm sqrt(mean_k |v_k|^2) is, for ``gaussian``,
sqrt(E[(y_i - y_j)^2] / mean_k E[y_k^2]): the scale-free height that the global cut of
:func:`simprune.prune` ranks across layers.

>>> import torch
>>> from simprune import engine
>>> engine.metric_info("gaussian")
MetricInfo(name='gaussian', pairwise='sqeuclidean', linkage='euclidean', scale_free=False)
>>> v = torch.tensor([[0.0, 1.0], [0.0, 1.1], [3.0, 0.0]], dtype=torch.float64)
>>> (z,) = engine.dendrograms([v], "linear", "average")
>>> z.shape, round(engine.height_scale(v, "linear"), 4)
((2, 4), 1.933)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ._checks import as_tensor
from .backends import METHODS, engine_device
from .distance import pairwise_distance_batched
from .hierarchy import EUCLIDEAN_ONLY, linkage_batched


class MetricInfo(NamedTuple):
    """One row of the descriptor-metric table (see the module docstring).

    name : the descriptor metric
    pairwise : the pairwise distance D of descriptors that the metric defines
        (:func:`simprune.pairwise_distance` metric name)
    linkage : the distance the dendrogram is built on (sqrt(D) for squared metrics)
    scale_free : True when heights need no normalisation across layers (cosine)
    """

    name: str
    pairwise: str
    linkage: str
    scale_free: bool


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("gaussian", "sqeuclidean", "euclidean", False),
        MetricInfo("wasserstein", "sqeuclidean", "euclidean", False),
        MetricInfo("linear", "sqeuclidean", "euclidean", False),
        MetricInfo("cosine", "cosine", "cosine", True),
        MetricInfo("euclidean", "euclidean", "euclidean", False),
        MetricInfo("sqeuclidean", "sqeuclidean", "euclidean", False),
        # Descriptors: a square root of the channels' covariance at the consumers' inputs
        # (calibration data, simprune.pruning.stats): D = Var(z_i - z_j).
        MetricInfo("activation", "sqeuclidean", "euclidean", False),
    )
}
# Descriptor metrics that need the following BatchNorm's gamma and beta.
BN_METRICS = ("gaussian", "wasserstein")


def metric_info(metric: str) -> MetricInfo:
    """The row of :data:`METRICS` for a descriptor ``metric``; ValueError naming the choices."""
    try:
        return METRICS[metric]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown metric {metric!r}: expected a descriptor metric, one of {tuple(METRICS)}"
        ) from None


def default_metric(metric: str | None, with_data: bool) -> str:
    """The metric ``None`` stands for: "activation" when calibration data are at hand, else
    "gaussian" (a named metric is returned as it is)."""
    if metric is None:
        return "activation" if with_data else "gaussian"
    return metric


def check_metric_and_method(metric: str, method: str) -> None:
    """ValueError for an unknown descriptor metric or linkage method, or a method that needs
    Euclidean distances (ward, centroid, median) with the cosine metric."""
    info = metric_info(metric)
    if method not in METHODS:
        raise ValueError(f"unknown linkage method {method!r}; expected one of {METHODS}")
    if method in EUCLIDEAN_ONLY and info.linkage != "euclidean":
        raise ValueError(f"method {method!r} needs Euclidean distances; use another metric")


def channel_energy(descriptors: torch.Tensor) -> torch.Tensor:
    """Squared row norms of a descriptor matrix, float64 on its device: E[y_i^2] = gamma_i^2 +
    beta_i^2 for ``gaussian`` (the default priority of a cluster's representative)."""
    v = as_tensor(descriptors, "descriptors")
    return (v.detach().to(torch.float64) ** 2).sum(1)


def scale_from_energy(energy: torch.Tensor, metric: str) -> float:
    """:func:`height_scale` from the channel energies (squared descriptor norms)."""
    if metric_info(metric).scale_free:
        return 1.0
    e = float(energy.mean())
    return math.sqrt(e) if e > 0 else 1.0


def height_scale(v: torch.Tensor, metric: str) -> float:
    """Divisor that makes a group's merge heights scale-free: the RMS descriptor norm
    sqrt(mean_k |v_k|^2) (1 for cosine, whose heights are already scale-free)."""
    return scale_from_energy(channel_energy(v), metric)


def dendrograms(
    vs: Sequence[torch.Tensor],
    metric: str,
    method: str,
    backend: str = "auto",
    timings: dict[str, float] | None = None,
) -> list[np.ndarray]:
    """The engine pass: one dendrogram (scipy's Z, float64 numpy, raw heights) per descriptor matrix.

    One batched distance call for every matrix with >= 2 rows (``metric_info(metric).linkage``
    distances, condensed), then one batched linkage call; a matrix with one row gets an empty
    (0, 4) Z. ``backend`` as everywhere ("auto", "torch", "cpu", "triton", "cuda";
    ``SIMPRUNE_BACKEND`` applies); a CPU-only backend named for descriptors on a GPU runs the pass
    on the CPU (only the descriptors travel). ``timings`` (optional) gets the seconds of the
    "distances" and "linkage" steps.
    """
    info = metric_info(metric)
    multi = [k for k, v in enumerate(vs) if v.shape[0] >= 2]
    zs: list[np.ndarray] = [np.zeros((0, 4)) for _ in vs]
    if not multi:
        return zs
    t0 = time.perf_counter()
    dev = engine_device(backend, vs[multi[0]].device)
    engine_in = [vs[k].to(dev) for k in multi]
    ds = pairwise_distance_batched(engine_in, metric=info.linkage, condensed=True, backend=backend)
    t1 = time.perf_counter()
    zl = linkage_batched(ds, method, backend=backend)
    for k, z in zip(multi, zl, strict=True):
        zs[k] = z.detach().cpu().numpy()
    if timings is not None:
        timings["distances"] = t1 - t0
        timings["linkage"] = time.perf_counter() - t1
    return zs


def working_set_bytes(n: int, d: int, itemsize: int, device_type: str) -> int:
    """Estimated peak bytes of one group's engine pass on a ``device_type`` device (from sizes).

    The descriptors (n x d of ``itemsize`` bytes) copied to the engine device, their condensed
    distances (same item size) and a packed float64 copy for the linkage, the linkage's working
    memory (CPU: one condensed float64 copy; GPU: the square float64 matrix with its 1.25 x 8 n^2
    bytes, linkage.md) and Z. An upper-bound estimate used to bound a streamed batch and to report
    the peak where the device cannot measure it (the CPU); not a measurement.
    """
    if n < 2:
        return n * d * itemsize
    pairs = n * (n - 1) // 2
    work = pairs * 8 if device_type == "cpu" else (5 * 8 * n * n) // 4
    return n * d * itemsize + pairs * itemsize + pairs * 8 + work + (n - 1) * 4 * 8
