"""Backend flags, the implementation registry and backend dispatch.

Every engine op (``pairwise_distance``, ``linkage``, ...) has one implementation per backend:

============  =========================================================  ==================
backend       what it is                                                 devices
============  =========================================================  ==================
``torch``     the pure PyTorch/NumPy/scipy reference (also the fallback)  CPU, CUDA
``cpu``       the C++ kernels of ``simprune._C`` (OpenMP)                 CPU
``triton``    the Triton kernels in ``simprune.kernels``                  CUDA (CPU under
                                                                          ``TRITON_INTERPRET=1``)
``cuda``      the CUDA kernels of ``simprune._C``                         CUDA
============  =========================================================  ==================

``backend="auto"`` (the default) picks the fastest available implementation for the tensor's device and
falls back quietly to the reference; a backend named explicitly (as an argument or through the
environment variable ``SIMPRUNE_BACKEND``) that is unavailable raises :class:`BackendUnavailableError`
with a hint. Nothing here initialises CUDA or imports Triton at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")
# Preference order of "auto" per device type (the first available wins).
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


@functools.cache
def _load_c() -> Any | None:
    if os.environ.get("SIMPRUNE_DISABLE_EXT", "0") == "1":
        return None
    try:
        return importlib.import_module("simprune._C")
    except ImportError:
        return None


def has_c_extension() -> bool:
    """True when the compiled extension ``simprune._C`` is importable."""
    return _load_c() is not None


def has_cuda_extension() -> bool:
    """True when ``simprune._C`` was built with its CUDA sources."""
    c = _load_c()
    return bool(c is not None and getattr(c, "WITH_CUDA", 0))


@functools.cache
def has_triton() -> bool:
    """True when Triton is installed (it is imported only when a Triton kernel first runs)."""
    if os.environ.get("SIMPRUNE_DISABLE_TRITON", "0") == "1":
        return False
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """True under the Triton interpreter (``TRITON_INTERPRET=1``): Triton kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when ``simprune::<op>`` has a kernel for ``dispatch_key`` ("CPU", "CUDA")."""
    if not has_c_extension():
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"simprune::{op}", dispatch_key))


@dataclass(frozen=True)
class Impl:
    fn: Callable[..., Any]
    devices: tuple[str, ...]
    available: Callable[[], bool]
    hint: str


_REGISTRY: dict[str, dict[str, Impl]] = {}

_HINTS = {
    "cpu": "build the C++ extension: pip install --no-build-isolation -e . (without SIMPRUNE_BUILD_EXT=0)",
    "cuda": "build the extension with a CUDA torch and a CUDA toolkit (CUDA_HOME), on a CUDA device",
    "triton": "pip install triton; Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on CPU)",
    "torch": "",
}


def register(
    op: str,
    backend: str,
    *,
    devices: tuple[str, ...],
    available: Callable[[], bool] = lambda: True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as the ``backend`` implementation of engine op ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY.setdefault(op, {})[backend] = Impl(fn, devices, available, _HINTS[backend])
        return fn

    return deco


def implemented_backends(op: str) -> tuple[str, ...]:
    """Backends that have an implementation of ``op`` in this source tree (available or not)."""
    return tuple(b for b in BACKENDS if b in _REGISTRY.get(op, {}))


def _device_ok(impl: Impl, backend: str, device: torch.device) -> bool:
    if device.type in impl.devices:
        return True
    # Triton kernels run on CPU tensors under the interpreter.
    return backend == "triton" and device.type == "cpu" and triton_interpret()


def available_backends(op: str, device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Backends that can run ``op`` on ``device`` right now."""
    device = torch.device(device)
    impls = _REGISTRY.get(op, {})
    return tuple(
        b
        for b in BACKENDS
        if b in impls and _device_ok(impls[b], b, device) and impls[b].available()
    )


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable[..., Any]]:
    """Pick the implementation of ``op`` for ``device``.

    Returns ``(backend_name, fn)``. ``backend="auto"`` honours ``SIMPRUNE_BACKEND`` when it is set,
    otherwise takes the first available backend of :data:`AUTO_ORDER`.
    """
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    if backend == "auto":
        env = os.environ.get("SIMPRUNE_BACKEND", "").strip().lower()
        if env and env != "auto":
            backend = env
        else:
            for b in AUTO_ORDER.get(device.type, ("torch",)):
                impl = impls.get(b)
                if impl and _device_ok(impl, b, device) and impl.available():
                    return b, impl.fn
            raise BackendUnavailableError(f"{op}: no backend can run on device {device}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    impl = impls.get(backend)
    if impl is None:
        have = ", ".join(implemented_backends(op))
        raise BackendUnavailableError(
            f"{op} has no {backend!r} implementation in this version of simprune "
            f"(implemented: {have})"
        )
    if not _device_ok(impl, backend, device):
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} runs on {'/'.join(impl.devices)} tensors, got a tensor on "
            f"{device}; move the input or use backend='auto'"
        )
    if not impl.available():
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} is not available here; {impl.hint}"
        )
    return backend, impl.fn


def backend_info() -> dict[str, Any]:
    """A summary of what this installation can run (for bug reports and the CLI)."""
    return {
        "torch": torch.__version__,
        "c_extension": has_c_extension(),
        "cuda_extension": has_cuda_extension(),
        "triton": has_triton(),
        "ops": {
            op: {
                "implemented": implemented_backends(op),
                "available_cpu": available_backends(op, "cpu"),
            }
            for op in sorted(_REGISTRY)
        },
    }
