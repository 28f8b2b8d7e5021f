"""prune() end to end on every engine backend that runs here: the same plan as the C++ backend.

Triton runs under the interpreter (TRITON_INTERPRET=1, tests/conftest.py), so these compare the whole
pipeline -- descriptors, the batched distance call, the linkages, the cut -- across backends without a
GPU. The channels are random (tie-free), so every backend must choose exactly the same channels.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import simprune
from simprune import backends


def _net() -> nn.Module:
    torch.manual_seed(3)
    m = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Conv2d(12, 10, 3, padding=1),
        nn.BatchNorm2d(10),
        nn.ReLU(),
        nn.Conv2d(10, 4, 1),
    )
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.normal_(mod.bias)
    return m.eval()


def _plan(backend: str, method: str) -> list[list[int]]:
    x = torch.randn(1, 3, 8, 8)
    _, plan, _ = simprune.prune(
        _net(), x, pruning_ratio=0.4, method=method, backend=backend, progress=False
    )
    return [g.kept for g in plan.groups]


@pytest.mark.parametrize("method", ["average", "single", "ward"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_prune_same_plan_on_every_backend(backend, method, monkeypatch):
    monkeypatch.delenv("SIMPRUNE_BACKEND", raising=False)
    if backend not in backends.available_backends("linkage", "cpu"):
        pytest.skip(f"backend {backend!r} does not run on CPU tensors here")
    ref = _plan(
        "cpu" if "cpu" in backends.available_backends("linkage", "cpu") else "torch", method
    )
    assert sum(len(k) for k in ref) < 22  # something was pruned
    assert _plan(backend, method) == ref


def test_triton_linkage_refuses_what_does_not_fit(monkeypatch):
    """The Triton linkage refuses, needed vs free bytes, before allocating (mocked free memory)."""
    if not backends.has_triton():
        pytest.skip("triton not installed")
    from simprune.kernels import linkage as kl

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (gib, 8 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: gib // 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: gib // 2)
    cuda = torch.device("cuda")
    kl._check_memory(10_000, cuda, 8)  # 1 GiB free: 0.93 GiB needed -- fits
    with pytest.raises(torch.OutOfMemoryError, match=r"n = 12000 needs 1\.34 GiB.*only 1\.00 GiB"):
        kl._check_memory(12_000, cuda, 8)
    with pytest.raises(torch.OutOfMemoryError, match="storage=torch.float32 halves it"):
        kl._check_memory(12_000, cuda, 8)
    kl._check_memory(12_000, cuda, 4)  # float32 storage: 0.67 GiB -- fits
