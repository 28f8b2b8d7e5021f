"""Input checks shared by the public functions: every bad input gets an error that names the problem."""

from __future__ import annotations

import os

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


# ---------------------------------------------------------------------------------------------------
# Host memory: refuse an O(n^2) job up front, naming needed vs available bytes, instead of the
# allocator's raw "can't allocate memory" (or the OOM killer) halfway through. The C++ twin, used by
# the compiled CPU kernels themselves: simprune::available_host_bytes (csrc/include/simprune/
# host_common.h); both read the same sources.


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def available_host_bytes() -> int | None:
    """Bytes a new host allocation can get now, or None when unknown (then nothing is refused).

    Linux's ``MemAvailable`` (free memory plus what the kernel can reclaim without swapping), capped
    by the cgroup's remaining allowance (v2 ``memory.max - memory.current``, v1
    ``memory.limit_in_bytes - memory.usage_in_bytes``) when the process runs under a limit."""
    avail: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < 1 << 60:
            avail = min(avail, max(limit - usage, 0))
            break
    return avail


def check_host_memory(need: int, op: str, n: int, what: str, hint: str = "") -> None:
    """Raise ``torch.OutOfMemoryError`` when ``need`` bytes of host memory are not available.

    The message names the operation, ``n``, the bytes needed and what they are for (``what``), the
    bytes available, and an optional ``hint`` (e.g. a cheaper option)."""
    avail = available_host_bytes()
    if avail is not None and need > avail:
        raise torch.OutOfMemoryError(
            f"{op}: n = {n} needs {need} bytes of host memory ({what}), but only {avail} bytes are "
            f"available{hint}"
        )
