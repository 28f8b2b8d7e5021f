"""simprune: a GPU-accelerated channel-similarity engine for pruning PyTorch networks.

Engine functions take and return plain tensors and follow scipy's conventions:

>>> import torch, simprune
>>> x = torch.randn(16, 8, dtype=torch.float64)
>>> z = simprune.linkage(x, "average")
>>> tuple(z.shape)
(15, 4)

Importing simprune never initialises CUDA and never imports Triton; the compiled extension and the
Triton kernels are loaded when first used.
"""

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
from .pruning import PruningPlan, apply_plan, prune, recalibrate_bn
from .similarity import channel_descriptors, channel_energy, layer_descriptors

__version__ = "0.1.0"

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
