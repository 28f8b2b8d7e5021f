"""simprune: a GPU-accelerated channel-similarity engine for pruning PyTorch networks.

Engine functions take and return plain tensors and follow scipy's conventions:

>>> import torch, simprune
>>> x = torch.randn(16, 8, dtype=torch.float64)
>>> z = simprune.linkage(x, "average")
>>> tuple(z.shape)
(15, 4)

Importing simprune never initialises CUDA and never imports Triton or Torch-Pruning; the compiled
extension, the Triton kernels and the pruning pipeline (``prune``, ``apply_plan``, ``PruningPlan``,
``recalibrate_bn``, which need Torch-Pruning -- and Torch-Pruning imports timm, torchvision and
through them torch._dynamo and Triton when those are installed) are loaded when first used.
"""

import importlib
from typing import TYPE_CHECKING, Any

from . import ops  # noqa: F401  (declares the torch.library schemas)
from .backends import (
    BackendUnavailableError,
    available_backends,
    backend_info,
    has_c_extension,
    has_cuda_extension,
    has_triton,
)
from .dendrogram import (
    cut_maxclust,
    cut_n_clusters,
    cut_threshold,
    redundancy_scores,
    representatives,
)
from .distance import pairwise_distance, pairwise_distance_batched, pairwise_distance_ref
from .engine import metric_info
from .hierarchy import is_valid_linkage, linkage, linkage_batched, linkage_ref
from .similarity import channel_descriptors, channel_energy, layer_descriptors

if TYPE_CHECKING:
    from .pruning import PruningPlan, apply_plan, prune, recalibrate_bn

__version__ = "0.1.0"

# Loaded on first access (module __getattr__, PEP 562): see the module docstring.
_LAZY = {name: ".pruning" for name in ("PruningPlan", "apply_plan", "prune", "recalibrate_bn")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "PruningPlan",
    "apply_plan",
    "available_backends",
    "backend_info",
    "channel_descriptors",
    "channel_energy",
    "cut_maxclust",
    "cut_n_clusters",
    "cut_threshold",
    "has_c_extension",
    "has_cuda_extension",
    "has_triton",
    "is_valid_linkage",
    "layer_descriptors",
    "linkage",
    "linkage_batched",
    "linkage_ref",
    "metric_info",
    "pairwise_distance",
    "pairwise_distance_batched",
    "pairwise_distance_ref",
    "prune",
    "recalibrate_bn",
    "redundancy_scores",
    "representatives",
]
