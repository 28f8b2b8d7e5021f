"""Shared test setup.

TRITON_INTERPRET=1 must be set before any ``@triton.jit`` runs: Triton kernels then execute on CPU
tensors through the interpreter, which is how CI verifies them without a GPU. GPU-only tests are marked
``gpu`` and skipped without a CUDA device (scripts/gpu_check.sh runs them).
"""

from __future__ import annotations

import os

if not os.environ.get("SIMPRUNE_TEST_ON_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
