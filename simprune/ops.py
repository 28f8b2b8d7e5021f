"""``torch.library`` op schemas: declared once here, implemented per backend.

Each engine op exists once per backend, as ``simprune::<op>_<backend>``, with one shared schema and one
fake (meta) kernel, so that ``torch.compile`` can trace every backend. Implementations register
elsewhere: the reference (``_torch``) in the Python modules next to the public functions, the C++ and
CUDA kernels from ``csrc/`` through ``TORCH_LIBRARY_IMPL`` (only when ``simprune._C`` is built), and
the Triton kernels from ``kernels/``. A missing compiled library therefore removes a kernel, never an API.
Every (op, backend) of :data:`SCHEMAS` is entered in the backend registry (``simprune.backends``),
which decides which one runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import backends
from .backends import BACKENDS

LIB = torch.library.Library("simprune", "DEF")

# op -> (schema without the name, backends that get a "<op>_<backend>" op). To add an op: one entry
# here and one fake kernel in _FAKES.
SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Pairwise distances of the rows of x (n, d) to the rows of y (m, d), or of x to itself when y is
    # None. condensed=True (only with y=None) returns scipy's pdist order, length n(n-1)/2.
    # precision: "exact" (the default, <= 1e-6 relative error in fp32) or "fast" (opt-in, TF32/bf16).
    "pairwise_distance": (
        "(Tensor x, Tensor? y, str metric, bool condensed, ScalarType? out_dtype, str precision) "
        "-> Tensor",
        BACKENDS,
    ),
    # Many groups in one launch: packed = the flat concatenation of each group's row-major
    # (rows[g], cols[g]) matrix; returns the flat concatenation of each group's condensed vector
    # (condensed=True) or flattened square matrix.
    "pairwise_distance_ragged": (
        "(Tensor packed, int[] rows, int[] cols, str metric, bool condensed, ScalarType? out_dtype, "
        "str precision) -> Tensor",
        ("torch", "triton"),
    ),
    # Hierarchical clustering of a condensed distance vector (scipy pdist order, fp32 or fp64).
    # Returns scipy's linkage matrix Z, float64 (n-1, 4). mode: "exact" | "strict". storage: the
    # working matrix's dtype, float64 (None, the default) or float32 (half the memory; Lance-Williams
    # still evaluated in float64, each stored value rounded to float32; "exact" mode only).
    "linkage": ("(Tensor d, str method, str mode, ScalarType? storage=None) -> Tensor", BACKENDS),
    # Round-synchronous reciprocal-nearest-neighbour linkage (linkage.md 7.3), the CPU twin of the GPU
    # algorithm: returns (Z, stats) with stats int64 (3,) = (rounds, compactions, max merges per round).
    # The "cuda" variant is the GPU algorithm itself (csrc/cuda/linkage_rounds.cu), with its statistics.
    # storage as for "linkage".
    "linkage_rounds": (
        "(Tensor d, str method, ScalarType? storage=None) -> (Tensor, Tensor)",
        ("cpu", "cuda"),
    ),
    # Many independent problems in one call (every layer of a CNN; linkage.md 7.5): d = the
    # concatenation of the condensed vectors of problems with sizes[g] observations; returns the
    # concatenation of their Z matrices, float64 (sum(sizes[g] - 1), 4). Exact mode.
    "linkage_batched": ("(Tensor d, int[] sizes, str method) -> Tensor", ("torch", "cuda")),
}


def op_name(op: str, backend: str) -> str:
    return f"{op}_{backend}"


def n_from_condensed(m: int) -> int:
    """Number of observations n of a condensed distance vector of length m = n(n-1)/2."""
    n = int(round((1 + math.sqrt(1 + 8 * m)) / 2))
    if n * (n - 1) // 2 != m:
        raise ValueError(
            f"a condensed distance vector must have length n(n-1)/2 for some n; got length {m}"
        )
    return n


def _fake_pairwise_distance(x, y, metric, condensed, out_dtype, precision):
    dtype = out_dtype if out_dtype is not None else torch.promote_types(x.dtype, torch.float32)
    n = x.shape[0]
    if condensed:
        return x.new_empty((n * (n - 1) // 2,), dtype=dtype)
    m = n if y is None else y.shape[0]
    return x.new_empty((n, m), dtype=dtype)


def _fake_pairwise_distance_ragged(packed, rows, cols, metric, condensed, out_dtype, precision):
    dtype = out_dtype if out_dtype is not None else torch.promote_types(packed.dtype, torch.float32)
    total = sum(r * (r - 1) // 2 if condensed else r * r for r in rows)
    return packed.new_empty((total,), dtype=dtype)


def _fake_linkage(d, method, mode, storage=None):
    n = n_from_condensed(d.shape[0])
    return d.new_empty((max(n - 1, 0), 4), dtype=torch.float64)


def _fake_linkage_rounds(d, method, storage=None):
    n = n_from_condensed(d.shape[0])
    return (
        d.new_empty((max(n - 1, 0), 4), dtype=torch.float64),
        d.new_empty((3,), dtype=torch.int64),
    )


def _fake_linkage_batched(d, sizes, method):
    return d.new_empty((sum(max(n - 1, 0) for n in sizes), 4), dtype=torch.float64)


_FAKES: dict[str, Callable[..., Any]] = {
    "pairwise_distance": _fake_pairwise_distance,
    "pairwise_distance_ragged": _fake_pairwise_distance_ragged,
    "linkage": _fake_linkage,
    "linkage_rounds": _fake_linkage_rounds,
    "linkage_batched": _fake_linkage_batched,
}

for _op, (_schema, _backends) in SCHEMAS.items():
    for _b in _backends:
        _name = op_name(_op, _b)
        LIB.define(_name + _schema)
        torch.library.register_fake(f"simprune::{_name}", _FAKES[_op], lib=LIB)


def get(op: str, backend: str):
    """The ``torch.ops`` handle of ``op`` for ``backend``."""
    return getattr(torch.ops.simprune, op_name(op, backend))


# Every (op, backend) above is an implementation in the backend registry, with what it serves.
backends.register_ops(SCHEMAS, get)
