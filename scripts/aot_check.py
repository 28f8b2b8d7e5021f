"""AOT-compile every Triton kernel config of simprune for real GPU targets, with no GPU present.

Each module in ``kernels/`` may define ``AOT_SPECS``: a list of dicts with keys ``name``, ``fn`` (the
``@triton.jit`` function), ``signature`` (argument -> Triton type, e.g. ``"*fp32"``, ``"i32"``,
``"constexpr"``), ``constexprs`` (name -> value) and optional ``num_warps`` / ``num_stages``. Every
spec is compiled for every target below; a failure (dot shapes, shared-memory overflow, type errors)
exits non-zero. The table printed (and written as JSON with ``--json``) records the shared memory and
registers of each config.

It must run with ``TRITON_INTERPRET`` unset: under the interpreter kernels are not ``JITFunction``s.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time

TARGETS = [("cuda", 90, 32), ("cuda", 80, 32)]
# Hopper has 228 KiB of shared memory per SM, 227 KiB usable per block; Ampere A100 163 KiB (164 KiB - 1).
SMEM_LIMIT = {90: 232448, 80: 166912}


def collect_specs():
    import simprune.kernels as pkg

    specs = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"simprune.kernels.{info.name}")
        for spec in getattr(mod, "AOT_SPECS", []):
            specs.append((info.name, spec))
    return specs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results table as JSON here")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot_check: TRITON_INTERPRET=1 is set; unset it (kernels must be JITFunctions)")
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    specs = collect_specs()
    rows, failures = [], 0
    for module, spec in specs:
        for backend, arch, warp in TARGETS:
            t0 = time.perf_counter()
            row = {"module": module, "name": spec["name"], "target": f"sm_{arch}"}
            try:
                src = ASTSource(
                    fn=spec["fn"],
                    signature=spec["signature"],
                    constexprs=spec.get("constexprs", {}),
                )
                opts = {k: spec[k] for k in ("num_warps", "num_stages") if k in spec}
                k = triton.compile(src, target=GPUTarget(backend, arch, warp), options=opts)
                shared = int(k.metadata.shared)
                row.update(
                    ok=shared <= SMEM_LIMIT[arch],
                    shared_bytes=shared,
                    num_warps=int(k.metadata.num_warps),
                    registers=getattr(k, "n_regs", None),
                    seconds=round(time.perf_counter() - t0, 2),
                )
                if shared > SMEM_LIMIT[arch]:
                    row["error"] = f"shared memory {shared} B > {SMEM_LIMIT[arch]} B"
            except Exception as e:  # noqa: BLE001 - report every failure, then fail
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
            failures += not row["ok"]
            rows.append(row)
    print(f"{'module':<12} {'kernel config':<44} {'target':<7} {'smem B':>8}  status")
    for r in rows:
        status = "ok" if r["ok"] else "FAIL " + r.get("error", "")
        print(
            f"{r['module']:<12} {r['name']:<44} {r['target']:<7} "
            f"{r.get('shared_bytes', '-')!s:>8}  {status}"
        )
    print(f"aot_check: {len(rows) - failures} compiled, {failures} failed ({len(specs)} configs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
