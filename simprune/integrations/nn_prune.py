"""A ``torch.nn.utils.prune`` method: mask the most redundant channels of one parameter.

>>> import torch
>>> from torch import nn
>>> from simprune.integrations.nn_prune import similarity_structured
>>> conv = nn.Conv2d(3, 8, 3)
>>> with torch.no_grad():
...     conv.weight[4:] = conv.weight[:4]  # channels 4..7 duplicate 0..3
>>> _ = similarity_structured(conv, "weight", amount=0.5, dim=0)
>>> conv.weight_mask.flatten(1).amax(1)  # one copy of each pair is masked
tensor([1., 1., 1., 1., 0., 0., 0., 0.])

Unlike :func:`torch.nn.utils.prune.ln_structured`, which ranks channels by their own norm, this
ranks them by redundancy (:func:`simprune.functional.score_channels`): the masked channels are
those that a dendrogram cut into ``n - amount`` clusters would drop, each cluster keeping its most
energetic channel. Masks cannot fold a removed channel into its representative; for merge
compensation use :func:`simprune.prune` or the Torch-Pruning integration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as nn_prune

from ..functional import score_channels

__all__ = ["SimilarityStructured", "similarity_structured"]

METRICS = ("euclidean", "sqeuclidean", "cosine", "linear")


class SimilarityStructured(nn_prune.BasePruningMethod):
    """Prune whole channels along ``dim`` by channel similarity (lower redundancy score first).

    Parameters
    ----------
    amount : int or float
        Channels to prune: a fraction in [0, 1] or an absolute number (``torch.nn.utils.prune``
        rules; iterative application prunes among the channels not pruned yet).
    dim : dimension that indexes the channels (0: a Conv/Linear layer's output channels).
    metric : {"euclidean", "sqeuclidean", "cosine", "linear"} distance between channel slices.
    method : scipy linkage method ("average" default).
    backend : engine backend.
    """

    PRUNING_TYPE = "structured"

    def __init__(
        self,
        amount: float | int,
        dim: int = 0,
        metric: str = "euclidean",
        method: str = "average",
        backend: str = "auto",
    ) -> None:
        nn_prune._validate_pruning_amount_init(amount)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        self.amount = amount
        self.dim = dim
        self.metric = metric
        self.method = method
        self.backend = backend

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """Mask of ``t``'s shape that zeroes the ``amount`` most redundant channels along ``dim``."""
        nn_prune._validate_structured_pruning(t)
        nn_prune._validate_pruning_dim(t, self.dim)
        n = t.shape[self.dim]
        k = nn_prune._compute_nparams_toprune(self.amount, n)
        nn_prune._validate_pruning_amount(k, n)
        if k == 0:
            return default_mask
        rows = t.detach().movedim(self.dim, 0).reshape(n, -1)
        scores = score_channels(rows, metric=self.metric, method=self.method, backend=self.backend)
        # Stable order: among equal scores the channel that appears first goes first.
        drop = torch.argsort(scores, stable=True)[:k].to(t.device)
        mask = torch.ones_like(t)
        slc: list[Any] = [slice(None)] * t.dim()
        slc[self.dim] = drop
        mask[tuple(slc)] = 0
        return mask * default_mask.to(dtype=mask.dtype)

    @classmethod
    def apply(  # type: ignore[override]
        cls,
        module: nn.Module,
        name: str,
        amount: float | int,
        dim: int = 0,
        metric: str = "euclidean",
        method: str = "average",
        backend: str = "auto",
        importance_scores: torch.Tensor | None = None,
    ) -> SimilarityStructured:
        """Add the pruning reparametrisation (``name_orig`` and ``name_mask``) to ``module``."""
        return super().apply(
            module,
            name,
            amount=amount,
            dim=dim,
            metric=metric,
            method=method,
            backend=backend,
            importance_scores=importance_scores,
        )


def similarity_structured(
    module: nn.Module,
    name: str,
    amount: float | int,
    dim: int = 0,
    metric: str = "euclidean",
    method: str = "average",
    backend: str = "auto",
    importance_scores: torch.Tensor | None = None,
) -> nn.Module:
    """``torch.nn.utils.prune``-style function: prune ``module.<name>`` by channel similarity.

    Like :func:`torch.nn.utils.prune.ln_structured`, adds ``<name>_mask`` and ``<name>_orig`` and
    returns the module; :func:`torch.nn.utils.prune.remove` makes the pruning permanent.
    """
    SimilarityStructured.apply(
        module, name, amount, dim, metric, method, backend, importance_scores=importance_scores
    )
    return module
