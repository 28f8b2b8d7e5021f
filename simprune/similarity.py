"""Channel descriptors: each layer's output channels as rows of a matrix whose distances measure
redundancy.

The default, ``gaussian``, is the probabilistic channel-similarity metric (derived from the paper's
stated model): with a conv/linear filter w_i followed by BatchNorm (gamma_i, beta_i), and standardised
channel responses whose correlation is the cosine of the filters, the expected squared difference of two
BN outputs is

    D_ij = E[(y_i - y_j)^2] = (beta_i - beta_j)^2 + gamma_i^2 + gamma_j^2 - 2 gamma_i gamma_j rho_ij,

which is exactly the squared Euclidean distance between descriptors v_i = [beta_i, gamma_i w_i/|w_i|].
A zero filter has no direction: its w_i/|w_i| is taken as 0 (the channel is the constant beta_i).

==================  ==========================================  ==============  ===============
metric              descriptor row                              pairwise dist.  needs
==================  ==========================================  ==============  ===============
``gaussian``        [beta, gamma * w / |w|]                     sqeuclidean     weight + BN
``wasserstein``     [beta, |gamma|]                             sqeuclidean     BN
``linear``          [bias, w]                                   sqeuclidean     weight (+ bias)
``cosine``          w                                           cosine          weight
``euclidean``       w                                           euclidean       weight
``sqeuclidean``     w                                           sqeuclidean     weight
==================  ==========================================  ==============  ===============

The pairwise distance and the distance the dendrogram is built on come from one table,
``simprune.engine.METRICS``. The energy of a channel, E[y_i^2] for the gaussian model
(gamma^2 + beta^2), is the squared norm of its descriptor: :func:`channel_energy`.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import as_tensor, check_finite
from .engine import BN_METRICS, channel_energy, metric_info

__all__ = ["channel_descriptors", "channel_energy", "layer_descriptors"]


def _vec(t, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    t = as_tensor(t, name).detach()
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the layer, got {tuple(t.shape)}")
    check_finite(t, name)
    return t.to(dtype)


def channel_descriptors(
    weight,
    *,
    metric: str = "gaussian",
    gamma=None,
    beta=None,
    bias=None,
) -> torch.Tensor:
    """Descriptor matrix (n_channels, n_features) of one layer's output channels.

    Parameters
    ----------
    weight : Tensor (out_channels, ...)
        Conv or Linear weight; everything after dim 0 is flattened.
    metric : see the module table.
    gamma, beta : (out_channels,) BatchNorm scale and shift (``gaussian``, ``wasserstein``).
    bias : (out_channels,) layer bias (``linear``; zero when absent).

    Returns float32 (float64 for float64 weights) on the weight's device. Rows are compared with
    the pairwise distance of ``simprune.engine.metric_info(metric).pairwise`` (``sqeuclidean`` for
    ``gaussian``: the expected squared difference of the two channels' BN outputs).

    >>> import torch, simprune
    >>> w = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    >>> v = simprune.channel_descriptors(w, gamma=torch.ones(3), beta=torch.zeros(3))
    >>> simprune.pairwise_distance(v)  # channels 0 and 1 point the same way: distance 0
    tensor([[0., 0., 2.],
            [0., 0., 2.],
            [2., 2., 0.]])
    """
    metric_info(metric)
    w = as_tensor(weight, "weight").detach()
    if w.dim() < 1:
        raise ValueError("weight must have at least one dimension (out_channels, ...)")
    n = w.shape[0]
    if n == 0:
        raise ValueError("the layer has 0 output channels (empty layer)")
    if not w.is_floating_point():
        raise TypeError(f"weight must be floating point, got {w.dtype}")
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    w = w.reshape(n, -1).to(dtype)
    check_finite(w, "weight")
    if metric in BN_METRICS:
        if gamma is None or beta is None:
            raise ValueError(
                f"metric {metric!r} needs the following BatchNorm's gamma and beta; for a layer "
                "without BatchNorm use metric='linear'"
            )
        g = _vec(gamma, "gamma", n, dtype).to(w.device)
        b = _vec(beta, "beta", n, dtype).to(w.device)
        if metric == "wasserstein":
            return torch.stack([b, g.abs()], dim=1)
        norm = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        w_hat = torch.where(norm > 0, w / torch.where(norm > 0, norm, 1.0), torch.zeros_like(w))
        return torch.cat([b[:, None], g[:, None] * w_hat], dim=1)
    if metric == "linear":
        b = (
            torch.zeros(n, dtype=dtype, device=w.device)
            if bias is None
            else _vec(bias, "bias", n, dtype).to(w.device)
        )
        return torch.cat([b[:, None], w], dim=1)
    return w.clone()


def layer_descriptors(
    layer: nn.Module, bn: nn.Module | None = None, *, metric: str | None = None
) -> torch.Tensor:
    """:func:`channel_descriptors` of a Conv/Linear module and its optional following BatchNorm.

    ``metric=None`` picks ``gaussian`` when ``bn`` is given, ``linear`` otherwise.
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"{type(layer).__name__} has no weight tensor; expected a Conv or Linear layer"
        )
    if metric is None:
        metric = "gaussian" if bn is not None else "linear"
    gamma = beta = None
    if bn is not None:
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
        if bn.weight is None or bn.bias is None:
            n = bn.num_features
            gamma = torch.ones(n) if bn.weight is None else bn.weight
            beta = torch.zeros(n) if bn.bias is None else bn.bias
        else:
            gamma, beta = bn.weight, bn.bias
    bias = getattr(layer, "bias", None)
    return channel_descriptors(weight, metric=metric, gamma=gamma, beta=beta, bias=bias)
