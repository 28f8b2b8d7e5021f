"""Backend flags, the implementation registry and the one backend policy of simprune.

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

Each implementation declares what it serves (:data:`SUPPORTS`: linkage methods, modes, storage
dtypes, the largest problem of a batched kernel, whether it validates the values itself) and
:func:`resolve` decides, for every op, in one place:

* ``backend="auto"`` takes the first implementation of :data:`AUTO_ORDER` for the tensor's device that
  is available and serves the request, skipping the others quietly (the reference serves everything);
* a backend named explicitly -- as an argument or through the environment variable
  ``SIMPRUNE_BACKEND``, read here only -- that cannot serve the request raises
  :class:`BackendUnavailableError` saying why (not built, wrong device, unsupported option).

A batched op whose backend has no batched kernel of its own (``Impl.fn is None``) is served by a
loop over the backend's single-problem op (``Impl.loop_of``). Nothing here initialises CUDA or
imports Triton at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")
# Preference order of "auto" per device type (the first available one that serves the request wins).
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
# The devices each backend's kernels run on.
DEVICES = {"torch": ("cpu", "cuda"), "cpu": ("cpu",), "triton": ("cuda",), "cuda": ("cuda",)}

# Linkage methods. The reducible ones have NN-chain / reciprocal-nearest-neighbour algorithms (every
# compiled kernel); centroid and median are not reducible: only the reference (scipy's generic
# algorithm) implements them.
REDUCIBLE_METHODS = ("single", "complete", "average", "weighted", "ward")
METHODS = REDUCIBLE_METHODS + ("centroid", "median")
MODES = ("exact", "strict")
STORAGES = (torch.float64, torch.float32)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here, or cannot serve the request."""


@dataclass(frozen=True)
class Supports:
    """What one implementation serves.

    ``options``: request option -> the values served (an option not listed: any value).
    ``auto``: narrower sets that "auto" may pick it for (e.g. the GPU's strict kernels are reached
    only when named). ``max_n``: the largest problem a batched kernel takes; wider ones go through
    the same backend's single-problem op. ``checks_values``: the kernel itself refuses NaN/Inf and
    negative distances (in its first pass), so the Python layer does not check them again.
    """

    options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    auto: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    max_n: int | None = None
    checks_values: bool = False


_ANY = Supports()
_COMPILED_LINKAGE = Supports(
    {"method": REDUCIBLE_METHODS, "mode": MODES, "storage": STORAGES}, checks_values=True
)
# The GPU strict kernels replay scipy in one thread block (latency-bound, not yet measured on a
# GPU): "auto" sends strict requests on CUDA tensors to the reference; naming the backend reaches them.
_GPU_LINKAGE = Supports(
    {"method": REDUCIBLE_METHODS, "mode": MODES, "storage": STORAGES},
    auto={"mode": ("exact",)},
    checks_values=True,
)
# op -> backend -> what that implementation serves. Every (op, backend) of ops.SCHEMAS is registered
# with these; batched ops also get loop implementations for the backends without a batched kernel.
SUPPORTS: dict[str, dict[str, Supports]] = {
    "pairwise_distance": {b: _ANY for b in BACKENDS},
    "pairwise_distance_ragged": {b: _ANY for b in BACKENDS},
    "linkage": {
        "torch": Supports({"method": METHODS, "mode": MODES, "storage": (torch.float64,)}),
        "cpu": _COMPILED_LINKAGE,
        "triton": _GPU_LINKAGE,
        "cuda": _GPU_LINKAGE,
    },
    "linkage_rounds": {
        b: Supports({"method": REDUCIBLE_METHODS, "storage": STORAGES}) for b in ("cpu", "cuda")
    },
    "linkage_batched": {
        "torch": Supports({"method": METHODS, "mode": ("exact",)}),
        "cpu": Supports({"method": REDUCIBLE_METHODS, "mode": ("exact",)}, checks_values=True),
        "triton": Supports({"method": REDUCIBLE_METHODS, "mode": ("exact",)}, checks_values=True),
        # One thread block per problem (linkage.md 7.5): a wide layer would leave the rest of the
        # GPU idle for a long time, so wider problems go through the whole-GPU kernel.
        "cuda": Supports(
            {"method": REDUCIBLE_METHODS, "mode": ("exact",)}, max_n=2048, checks_values=True
        ),
    },
}
# batched op -> the single-problem op its loop implementations call.
LOOP_OF = {"pairwise_distance_ragged": "pairwise_distance", "linkage_batched": "linkage"}


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
    """One registered implementation. ``fn is None``: a loop over the ``loop_of`` op."""

    fn: Callable[..., Any] | None
    devices: tuple[str, ...]
    available: Callable[[], bool]
    hint: str
    supports: Supports = _ANY
    loop_of: str | None = None


_REGISTRY: dict[str, dict[str, Impl]] = {}

_HINTS = {
    "cpu": "build the C++ extension: pip install --no-build-isolation -e . (without SIMPRUNE_BUILD_EXT=0)",
    "cuda": "build the extension with a CUDA torch and a CUDA toolkit (CUDA_HOME), on a CUDA device",
    "triton": "pip install triton; Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on CPU)",
    "torch": "",
}


def _availability(op: str, backend: str) -> Callable[[], bool]:
    if backend == "torch":
        return lambda: True
    if backend == "triton":
        return has_triton
    key = "CUDA" if backend == "cuda" else "CPU"
    return lambda: has_kernel(f"{op}_{backend}", key)


def register_ops(schemas: Mapping[str, tuple[str, tuple[str, ...]]], get: Callable) -> None:
    """Register every (op, backend) of the op table ``schemas`` (``ops.SCHEMAS``) with what it
    serves (:data:`SUPPORTS`), plus a loop implementation of each batched op for the backends that
    have the single-problem op but no batched kernel."""
    for op, (_schema, backends) in schemas.items():
        table = _REGISTRY.setdefault(op, {})
        for b in backends:
            table[b] = Impl(
                get(op, b), DEVICES[b], _availability(op, b), _HINTS[b], SUPPORTS[op][b]
            )
    for op, single in LOOP_OF.items():
        table = _REGISTRY.setdefault(op, {})
        for b, impl in _REGISTRY[single].items():
            if b not in table:
                table[b] = Impl(
                    None, impl.devices, impl.available, impl.hint, SUPPORTS[op][b], loop_of=single
                )


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


def requested(backend: str) -> str:
    """The backend a caller asked for: ``backend``, or ``SIMPRUNE_BACKEND`` when it is "auto"."""
    if backend == "auto":
        env = os.environ.get("SIMPRUNE_BACKEND", "").strip().lower()
        return env or "auto"
    return backend


def _unserved(impl: Impl, request: Mapping[str, Any], auto: bool) -> tuple[str, Any] | None:
    """The first (option, value) of ``request`` that ``impl`` does not serve, else None."""
    for key, value in request.items():
        allowed = impl.supports.options.get(key)
        if auto and key in impl.supports.auto:
            allowed = impl.supports.auto[key]
        if allowed is not None and value not in allowed:
            return key, value
    return None


def _label(key: str, value: Any) -> str:
    return f"{key}={value!r}" if not isinstance(value, torch.dtype) else f"{key}={value}"


def resolve_impl(op: str, backend: str, device: torch.device, **request: Any) -> tuple[str, Impl]:
    """Pick the implementation of ``op`` for a tensor on ``device`` and the ``request`` options
    (e.g. ``method="ward", mode="exact", storage=torch.float32``).

    Returns ``(backend_name, impl)``. See the module docstring for the rule.
    """
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    backend = requested(backend)
    if backend == "auto":
        skipped = []
        for b in AUTO_ORDER.get(device.type, ("torch",)):
            impl = impls.get(b)
            if impl is None or not _device_ok(impl, b, device) or not impl.available():
                continue
            miss = _unserved(impl, request, auto=True)
            if miss is None:
                return b, impl
            skipped.append(f"{b} ({_label(*miss)})")
        why = f"; those available do not serve it: {', '.join(skipped)}" if skipped else ""
        raise BackendUnavailableError(
            f"{op}: no backend can run this request on device {device}{why}"
        )
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
    miss = _unserved(impl, request, auto=False)
    if miss is not None:
        key, value = miss
        serve = [
            repr(b)
            for b in BACKENDS
            if b in impls and _unserved(impls[b], {key: value}, auto=False) is None
        ]
        alts = " or ".join([", ".join(serve[:-1]), serve[-1]] if len(serve) > 1 else serve)
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} does not implement {_label(key, value)}"
            + (f"; use backend={alts} (or 'auto')" if serve else " (no backend does)")
        )
    return backend, impl


def resolve(op: str, backend: str, device: torch.device, **request: Any) -> tuple[str, Callable]:
    """:func:`resolve_impl` for an op with a kernel of its own: ``(backend_name, fn)``."""
    name, impl = resolve_impl(op, backend, device, **request)
    if impl.fn is None:
        raise KeyError(f"{op}: backend {name!r} is a loop over {impl.loop_of}; use resolve_impl")
    return name, impl.fn


def companion(op: str, backend: str, device: torch.device) -> str:
    """The backend to ask for ``op`` on behalf of a call that asked for ``backend`` (e.g. the
    distances of ``linkage(observations, backend=...)``): the same one when it runs ``op`` on
    ``device``, else "auto"."""
    return backend if backend in available_backends(op, device) else "auto"


def engine_device(backend: str, device: torch.device) -> torch.device:
    """Where the engine pass runs for data on ``device``: a named backend whose kernels run on the
    CPU only (``"cpu"``) takes GPU data to the CPU, and one whose kernels run on the GPU only
    (``"triton"``, ``"cuda"``) takes CPU data to the current GPU when there is one (a model kept in
    host memory, planned on the GPU): only descriptors travel. Otherwise ``device``."""
    name = requested(backend)
    if name in DEVICES and device.type not in DEVICES[name]:
        if DEVICES[name] == ("cpu",):
            return torch.device("cpu")
        if DEVICES[name] == ("cuda",) and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
    return device


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
