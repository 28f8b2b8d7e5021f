"""AOT specs of the Triton distance kernels (kernels/distance.py): every launch configuration the
launchers use, compiled for sm_90 and sm_80 with no GPU by scripts/aot_check.py (which collects
``AOT_SPECS`` from every module of this package). Each spec: ``name``, ``fn`` (the ``@triton.jit``
function), ``signature`` (argument -> Triton type), ``constexprs``, ``num_warps`` / ``num_stages`` and
``hot`` (the tile and repair kernels: a spill there fails the check). A new launch configuration in
distance.py needs its entry here.
"""

from __future__ import annotations

import torch

from .distance import (
    CONFIGS,
    MODE_DIRECT,
    MODE_EXPAND,
    PREP_BK,
    PREP_BR,
    REPAIR_BK,
    REPAIR_BP,
    REPAIR_WARPS,
    _centre_kernel,
    _colmean_kernel,
    _distance_kernel,
    _repair_kernel,
    _rownorm_kernel,
)


def _main_sig(cdt: str, in_dt: str, out_dt: str) -> dict[str, str]:
    sig = {
        "xc_ptr": f"*{cdt}",
        "yc_ptr": f"*{cdt}",
        "nx_ptr": f"*{cdt}",
        "ny_ptr": f"*{cdt}",
        "xo_ptr": f"*{in_dt}",
        "yo_ptr": f"*{in_dt}",
        "sx_ptr": "*fp64",
        "sy_ptr": "*fp64",
        "out_ptr": f"*{out_dt}",
        "tiles_ptr": "*i32",
        "groups_ptr": "*i64",
        "near_ptr": "*i32",
        "count_ptr": "*i64",
        "n": "i32",
        "m": "i32",
        "d": "i32",
        "ld": "i32",
        "cap": "i32",
        "ratio": "fp32",
    }
    for c in ("METRIC", "MODE", "PREC", "SYM", "CONDENSED", "RAGGED", "SCALED", "BM", "BK"):
        sig[c] = "constexpr"
    return sig


def _repair_sig(cdt: str, out_dt: str) -> dict[str, str]:
    sig = {
        "xo_ptr": f"*{cdt}",
        "yo_ptr": f"*{cdt}",
        "sx_ptr": "*fp64",
        "sy_ptr": "*fp64",
        "out_ptr": f"*{out_dt}",
        "groups_ptr": "*i64",
        "near_ptr": "*i32",
        "n_pairs": "i32",
        "n": "i32",
        "m": "i32",
        "d": "i32",
        "ld": "i32",
    }
    for c in ("METRIC", "SYM", "CONDENSED", "RAGGED", "SCALED", "BP", "BK"):
        sig[c] = "constexpr"
    return sig


_TNAME = {torch.float32: "fp32", torch.float64: "fp64"}


def _layout(metric: int, sym: bool, cond: bool, rag: bool) -> tuple[str, dict]:
    """The name part and the constexprs that the main and repair kernels share for one output
    layout (metric code, x with itself or x with y, condensed, ragged)."""
    name = f"m{metric}{'_sym' if sym else '_xy'}{'_cond' if cond else ''}{'_ragged' if rag else ''}"
    consts = dict(METRIC=metric, SYM=sym, CONDENSED=cond, RAGGED=rag, SCALED=metric == 2)
    return name, consts


def _aot_specs() -> list[dict]:
    specs = []
    # (compute dtype, mode, precision, metric, sym, condensed, ragged, out dtype)
    variants = [
        (torch.float32, MODE_EXPAND, "tf32x3", 0, True, False, False, "fp32"),
        (torch.float32, MODE_EXPAND, "tf32x3", 1, True, True, False, "fp32"),
        (torch.float32, MODE_EXPAND, "tf32x3", 2, False, False, False, "fp64"),
        (torch.float32, MODE_EXPAND, "tf32x3", 0, True, True, True, "fp32"),
        (torch.float32, MODE_EXPAND, "tf32", 0, True, False, False, "fp32"),
        (torch.float64, MODE_EXPAND, "ieee", 0, True, False, False, "fp64"),
        (torch.float64, MODE_EXPAND, "ieee", 2, True, True, True, "fp64"),
        (torch.float32, MODE_DIRECT, "tf32x3", 0, True, False, False, "fp32"),
        (torch.float32, MODE_DIRECT, "tf32x3", 2, True, True, True, "fp32"),
        (torch.float64, MODE_DIRECT, "ieee", 1, False, False, False, "fp64"),
    ]
    for cdt, mode, prec, metric, sym, cond, rag, out_dt in variants:
        bm, bk, warps, stages = CONFIGS[(cdt, mode)]
        c = _TNAME[cdt]
        layout, consts = _layout(metric, sym, cond, rag)
        specs.append(
            dict(
                name=f"dist_{'expand' if mode == MODE_EXPAND else 'direct'}_{c}_{prec}_{layout}"
                f"_{out_dt}_bm{bm}_bk{bk}_w{warps}_s{stages}",
                fn=_distance_kernel,
                signature=_main_sig(c, c, out_dt),
                constexprs=dict(consts, MODE=mode, PREC=prec, BM=bm, BK=bk),
                num_warps=warps,
                num_stages=stages,
                hot=True,  # scripts/aot_check.py fails if it spills
            )
        )
    for cdt, metric, sym, cond, rag, out_dt in [
        (torch.float32, 0, True, False, False, "fp32"),
        (torch.float32, 2, True, True, True, "fp32"),
        (torch.float64, 1, False, False, False, "fp64"),
    ]:
        c = _TNAME[cdt]
        layout, consts = _layout(metric, sym, cond, rag)
        specs.append(
            dict(
                name=f"repair_{c}_{layout}_{out_dt}_bp{REPAIR_BP}_bk{REPAIR_BK}",
                fn=_repair_kernel,
                signature=_repair_sig(c, out_dt),
                constexprs=dict(consts, BP=REPAIR_BP, BK=REPAIR_BK),
                num_warps=REPAIR_WARPS,
                hot=True,
            )
        )
    for in_dt, cdt_name, scaled in [("fp32", "fp32", False), ("fp16", "fp32", True),
                                    ("bf16", "fp32", False), ("fp64", "fp64", True)]:  # fmt: skip
        gsig = {"blocks_ptr": "*i32", "groups_ptr": "*i64"}
        specs.append(
            dict(
                name=f"prep_rownorm_{in_dt}_br{PREP_BR}_bk{PREP_BK}",
                fn=_rownorm_kernel,
                signature={
                    "x_ptr": f"*{in_dt}",
                    "nrm_ptr": "*fp64",
                    **gsig,
                    "BR": "constexpr",
                    "BK": "constexpr",
                },  # fmt: skip
                constexprs=dict(BR=PREP_BR, BK=PREP_BK),
                num_warps=4,
            )
        )
        specs.append(
            dict(
                name=f"prep_colmean_{in_dt}_s{int(scaled)}_br{PREP_BR}_bc{PREP_BK}",
                fn=_colmean_kernel,
                signature={
                    "x_ptr": f"*{in_dt}",
                    "nrm_ptr": "*fp64",
                    "mu_ptr": "*fp64",
                    **gsig,
                    "SCALED": "constexpr",
                    "BR": "constexpr",
                    "BC": "constexpr",
                },  # fmt: skip
                constexprs=dict(SCALED=scaled, BR=PREP_BR, BC=PREP_BK),
                num_warps=4,
            )
        )
        specs.append(
            dict(
                name=f"prep_centre_{in_dt}_to_{cdt_name}_s{int(scaled)}_br{PREP_BR}_bk{PREP_BK}",
                fn=_centre_kernel,
                signature={
                    "x_ptr": f"*{in_dt}",
                    "nrm_ptr": "*fp64",
                    "mu_ptr": "*fp64",
                    "cent_ptr": f"*{cdt_name}",
                    "sq_ptr": f"*{cdt_name}",
                    **gsig,
                    "SCALED": "constexpr",
                    "BR": "constexpr",
                    "BK": "constexpr",
                },  # fmt: skip
                constexprs=dict(SCALED=scaled, BR=PREP_BR, BK=PREP_BK),
                num_warps=4,
            )
        )
    return specs


AOT_SPECS = _aot_specs()
