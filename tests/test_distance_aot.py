"""scripts/aot_check.py's register/spill report (the parsing and the hot-config rule) and the distance
kernels' AOT specs. The compilation itself runs in `make aot` (no GPU needed, but minutes of CPU)."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _aot_check():
    spec = importlib.util.spec_from_file_location(
        "aot_check", os.path.join(ROOT, "scripts", "aot_check.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# ptxas -v output (CUDA 12/13 format) of a kernel that spills, and of one that does not.
SPILLING = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_distance_kernel' for 'sm_90a'
ptxas info    : Function properties for _distance_kernel
    568 bytes stack frame, 568 bytes spill stores, 672 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 568 bytes cumulative stack size
"""
CLEAN = """ptxas info    : Compiling entry function '_repair_kernel' for 'sm_80'
ptxas info    : Function properties for _repair_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 100 registers, 392 bytes cmem[0]
"""


def test_ptxas_log_parsed():
    aot = _aot_check()
    assert aot.parse_ptxas_log(SPILLING) == {
        "registers": 255,
        "spill_stores": 568,
        "spill_loads": 672,
    }
    assert aot.parse_ptxas_log(CLEAN) == {"registers": 100, "spill_stores": 0, "spill_loads": 0}
    assert aot.parse_ptxas_log("") is None  # a cache hit: no log, ptxas is run on the PTX instead


def test_distance_tile_and_repair_specs_are_hot():
    """Every launch configuration of the tile and repair kernels is checked for spills (hot); the
    O(n d) prep kernels are reported only."""
    pytest.importorskip("triton")
    from simprune.kernels import distance_aot

    for spec in distance_aot.AOT_SPECS:
        hot = spec["name"].startswith(("dist_", "repair_"))
        assert spec.get("hot", False) == hot, spec["name"]
