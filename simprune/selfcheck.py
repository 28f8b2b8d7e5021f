"""``simprune selfcheck``: every installed backend against the reference, on this machine, in seconds.

The test suite needs a source checkout (and ``scripts/gpu_check.sh`` a GPU session); this runs from
any installation: for each device asked for and each backend available there, a few small problems
through every engine op, compared with the reference (float64 distances; scipy's linkage as the
oracle) under the same gates as the tests:

* ``pairwise_distance`` (square and condensed, float32 and float64 results, three metrics, data with
  near-duplicate rows): max relative error <= 1e-6 (float32) / 1e-12 (float64), exact zeros exact;
* ``linkage`` on tie-free data, every reducible method (n = 257; on a GPU also 1500 for average and
  ward, the multi-block path): Z[:, [0, 1, 3]] equal to scipy's, heights
  within rtol 1e-12 (bitwise for single and complete); ``mode="strict"`` on tied data (where the
  backend has it): bitwise scipy; ``storage=torch.float32`` (where it has it): heights within rtol
  1e-5 on a Gaussian mixture;
* ``linkage_batched``: sizes 1, 2, 64, 257 in one call, each Z scipy's tree.

It is what to run first on a new machine or GPU (``python -m simprune selfcheck --device cuda``);
exit status 1 when any check fails. It reports, it never fixes: a failed check names the op, backend,
case and the largest error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import scipy.cluster.hierarchy as sch
import torch
from scipy.spatial.distance import pdist

from .testing import (
    REDUCIBLE,
    TOLERANCES,
    bitwise_mismatch,
    gaussian,
    half_integer_grid,
    max_relative_error,
    mixture,
    near_duplicates,
    sorted_heights_error,
    tree_mismatch,
)


class _Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def check(self, op: str, backend: str, device: str, case: str, fn: Callable[[], str | None]):
        t0 = time.perf_counter()
        try:
            problem = fn()
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported with its message
            problem = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        self.rows.append(
            dict(
                op=op,
                backend=backend,
                device=device,
                case=case,
                ok=problem is None,
                detail=problem or "",
                seconds=round(time.perf_counter() - t0, 3),
            )
        )


def _check_distance(rep: _Report, backend: str, device: str) -> None:
    from .distance import pairwise_distance, pairwise_distance_ref

    def ref(x: torch.Tensor, metric: str, condensed: bool) -> torch.Tensor:
        return pairwise_distance_ref(x.double(), None, metric, condensed, torch.float64)

    x = torch.from_numpy(near_duplicates(97, 33, seed=1))
    x32 = x.float().double()  # the float32 inputs' reference: float64 on the rounded rows
    for metric in ("sqeuclidean", "euclidean", "cosine"):
        refs = {
            torch.float64: (ref(x, metric, False), ref(x, metric, True)),
            torch.float32: (ref(x32, metric, False), ref(x32, metric, True)),
        }
        for out in (torch.float32, torch.float64):
            tol = TOLERANCES[("distance", out)]

            def run(out=out, tol=tol, metric=metric, refs=refs) -> str | None:
                xd = x.to(device=device, dtype=torch.float32 if out == torch.float32 else x.dtype)
                sq = pairwise_distance(xd, metric=metric, out_dtype=out, backend=backend)
                c = pairwise_distance(
                    xd, metric=metric, condensed=True, out_dtype=out, backend=backend
                )
                if sq.dtype != out or c.dtype != out or sq.device.type != device:
                    return f"result dtype/device {sq.dtype}/{sq.device}, expected {out}/{device}"
                if not torch.equal(sq, sq.T) or bool((sq.diagonal() != 0).any()):
                    return "square result not exactly symmetric with a zero diagonal"
                ref_sq, ref_c = refs[out]
                err = max(max_relative_error(sq, ref_sq), max_relative_error(c, ref_c))
                return None if err <= tol else f"max rel. error {err:.2e} > {tol:g}"

            name = "float32" if out == torch.float32 else "float64"
            rep.check("pairwise_distance", backend, device, f"{metric}, {name} out", run)


def _check_linkage(rep: _Report, backend: str, device: str) -> None:
    from .backends import BackendUnavailableError
    from .hierarchy import linkage

    # n = 257: one thread block from the start on the CUDA backend; on a GPU also n = 1500 (average,
    # ward): the grid-wide rounds with grid barriers, then the hand-off to one block.
    cases = [(257, m) for m in REDUCIBLE]
    if device == "cuda":
        cases += [(1500, "average"), (1500, "ward")]
    ds = {n: torch.from_numpy(pdist(gaussian(n, 16, seed=2))) for n in (257, 1500)}
    for n, method in cases:

        def run(method=method, d=ds[n]) -> str | None:
            z = linkage(d.to(device), method, backend=backend)
            return tree_mismatch(z.cpu().numpy(), sch.linkage(d.numpy(), method), method)

        rep.check("linkage", backend, device, f"{method}, exact, n={n}", run)
    # Strict mode on tied data: a half-integer grid (many equal distances).
    dq = torch.from_numpy(pdist(half_integer_grid(120, 4, seed=3)))
    for method in REDUCIBLE:

        def run_strict(method=method) -> str | None:
            try:
                z = linkage(dq.to(device), method, mode="strict", backend=backend)
            except (NotImplementedError, BackendUnavailableError):
                return "skip"
            if bitwise_mismatch(z.cpu().numpy(), sch.linkage(dq.numpy(), method)) is not None:
                return "Z not bitwise equal to scipy's under ties"
            return None

        rep.check("linkage", backend, device, f"{method}, strict, ties, n=120", run_strict)
    dm = torch.from_numpy(pdist(mixture(400, 16)))
    f32_rtol = TOLERANCES[("exact", torch.float32)]
    f32_tol_text = format(f32_rtol, ".0e").replace("e-0", "e-")  # "1e-5"
    for method in ("single", "average", "ward"):

        def run_f32(method=method) -> str | None:
            try:
                z = linkage(dm.to(device), method, storage=torch.float32, backend=backend)
            except (NotImplementedError, BackendUnavailableError):
                return "skip"
            rel = sorted_heights_error(z.cpu().numpy(), sch.linkage(dm.numpy(), method))
            return None if rel <= f32_rtol else f"height rel. error {rel:.2e} > {f32_tol_text}"

        rep.check("linkage", backend, device, f"{method}, float32 storage, n=400", run_f32)


def _check_batched(rep: _Report, backend: str, device: str) -> None:
    from .hierarchy import linkage_batched

    sizes = [1, 2, 64, 257]
    ds = [torch.from_numpy(pdist(gaussian(n, 8, seed=10 + n))) for n in sizes]

    def run() -> str | None:
        zs = linkage_batched([d.to(device) for d in ds], "average", backend=backend)
        for n, d, z in zip(sizes, ds, zs, strict=True):
            if n == 1:
                if z.shape != (0, 4):
                    return f"n=1 gave shape {tuple(z.shape)}"
                continue
            problem = tree_mismatch(z.cpu().numpy(), sch.linkage(d.numpy(), "average"), "average")
            if problem:
                return f"n={n}: {problem}"
        return None

    rep.check("linkage_batched", backend, device, "average, sizes 1/2/64/257", run)


def selfcheck(
    devices: list[str] | None = None, backends: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run every check on every device in ``devices`` (default: "cpu", plus "cuda" when a GPU is
    visible) for every backend available there (or only those in ``backends``); returns one row per
    check (``ok`` False = failed, ``detail`` says how; rows whose backend lacks a mode are dropped)."""
    from .backends import available_backends as _available

    def available_backends(op: str, device: str) -> tuple[str, ...]:
        return tuple(b for b in _available(op, device) if backends is None or b in backends)

    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rep = _Report()
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            rep.rows.append(
                dict(op="-", backend="-", device="cuda", case="a CUDA device", ok=False,
                     detail="torch.cuda.is_available() is False", seconds=0.0)
            )  # fmt: skip
            continue
        for b in available_backends("pairwise_distance", device):
            _check_distance(rep, b, device)
        for b in available_backends("linkage", device):
            _check_linkage(rep, b, device)
        for b in available_backends("linkage_batched", device):
            _check_batched(rep, b, device)
    return [r for r in rep.rows if r["detail"] != "skip"]


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table, failures first."""
    rows = sorted(rows, key=lambda r: r["ok"])
    cols = ["ok", "op", "backend", "device", "case", "seconds", "detail"]
    cells = [
        [("ok" if r["ok"] else "FAIL") if c == "ok" else str(r[c]) for c in cols] for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in
              enumerate(cols)]  # fmt: skip
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    n_bad = sum(not r["ok"] for r in rows)
    lines.append(f"{len(rows) - n_bad} passed, {n_bad} failed")
    return "\n".join(lines)
