"""The pruning pipeline: channel groups, descriptors, one engine pass, global cut, merge, rewrite.

>>> import torch, torchvision, simprune                      # doctest: +SKIP
>>> model = torchvision.models.resnet18()                     # doctest: +SKIP
>>> pruned, plan, report = simprune.prune(model, torch.randn(1, 3, 64, 64),
...                                       macs_reduction=0.3)  # doctest: +SKIP
>>> print(report)                                             # doctest: +SKIP
"""

from .api import PruneResult, prune
from .calibrate import recalibrate_bn
from .groups import TracingError
from .macs import CostModel
from .plan import GroupPlan, PruningPlan, apply_plan
from .report import PruneReport

__all__ = [
    "CostModel",
    "GroupPlan",
    "PruneReport",
    "PruneResult",
    "PruningPlan",
    "TracingError",
    "apply_plan",
    "prune",
    "recalibrate_bn",
]
