"""Input checks shared by the public functions: every bad input gets an error that names the problem."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(x, name: str) -> torch.Tensor:
    """Accept tensors and array-likes (numpy arrays, lists); never copies a tensor."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}") from e


def check_float(x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), "
            f"got {x.dtype}"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        what = " and ".join(
            s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if s
        )
        raise ValueError(f"{name} contains {what} value(s); distances need finite inputs")


def check_matrix(x: torch.Tensor, name: str, *, min_rows: int = 1) -> None:
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (n_channels, n_features), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows; at least {min_rows} needed")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has 0 features per row (shape {tuple(x.shape)})")
