"""AOT-compile every Triton kernel config of simprune for real GPU targets, with no GPU present.

Each module in ``kernels/`` may define ``AOT_SPECS``: a list of dicts with keys ``name``, ``fn`` (the
``@triton.jit`` function), ``signature`` (argument -> Triton type, e.g. ``"*fp32"``, ``"i32"``,
``"constexpr"``), ``constexprs`` (name -> value) and optional ``num_warps`` / ``num_stages``. Every
spec is compiled for every target below; a failure (dot shapes, shared-memory overflow, type errors)
exits non-zero. The table printed (and written as JSON with ``--json``) records the shared memory,
registers and spill bytes of each config.

Registers and spills: ptxas's own ``-v`` report (Triton runs ptxas with ``-v``; its log is captured
with ``knobs.nvidia.dump_ptxas_log``) and kept next to Triton's cache; for a kernel that came from
Triton's cache without that report, the ptxas that ships with Triton is run with ``-v`` on its PTX.
A spec marked ``hot: True`` (the distance tile and repair kernels) that spills on any target fails
the check, like a shared-memory overflow; spills elsewhere are reported only.

It must run with ``TRITON_INTERPRET`` unset: under the interpreter kernels are not ``JITFunction``s.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
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


_USED = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict | None:
    """Registers and spill bytes from a ptxas ``-v`` log (one kernel), or None if it has none."""
    used = _USED.search(log)
    if used is None:
        return None
    spill = _SPILL.search(log)
    stores, loads = (int(spill.group(1)), int(spill.group(2))) if spill else (0, 0)
    return {"registers": int(used.group(1)), "spill_stores": stores, "spill_loads": loads}


def ptxas_report(kernel, arch: int) -> dict | None:
    """Run the ptxas that ships with Triton with ``-v`` on a compiled kernel's PTX (the cache-hit
    case, when Triton did not run ptxas in this process); the same options Triton passes."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptx = kernel.asm.get("ptx")
    if not ptx:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        fmad = [] if kernel.metadata.enable_fp_fusion else ["--fmad=false"]
        cmd = [get_ptxas(arch).path, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return parse_ptxas_log(res.stdout + res.stderr)


def _usage_path(kernel) -> str:
    """Where this compiled kernel's ptxas report is kept between runs: next to Triton's cache, keyed
    by the kernel's hash (source, options and target), so a warm cache needs no ptxas run either."""
    from triton import knobs

    base = knobs.cache.dir or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return os.path.join(base, "simprune_ptxas", f"{kernel.hash}.json")


def kernel_usage(kernel, arch: int, log: str) -> dict | None:
    """Registers and spills of a kernel just compiled (``log``: Triton's ptxas output, empty on a
    cache hit): the log, else the report kept from an earlier run, else a ptxas run now."""
    usage = parse_ptxas_log(log)
    path = _usage_path(kernel)
    if usage is None and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if usage is None:
        usage = ptxas_report(kernel, arch)
    if usage is not None:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(usage, f)
    return usage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results table as JSON here")
    ap.add_argument("--only", help="compile only the configs whose name matches this regex")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot_check: TRITON_INTERPRET=1 is set; unset it (kernels must be JITFunctions)")
        return 2
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas's -v log: captured per kernel below

    t_start = time.perf_counter()
    specs = collect_specs()
    if args.only:
        specs = [(m, s) for m, s in specs if re.search(args.only, s["name"])]
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
                log = io.StringIO()
                with contextlib.redirect_stdout(log):
                    k = triton.compile(src, target=GPUTarget(backend, arch, warp), options=opts)
                usage = kernel_usage(k, arch, log.getvalue())
                shared = int(k.metadata.shared)
                hot = bool(spec.get("hot", False))
                spill = None if usage is None else usage["spill_stores"] + usage["spill_loads"]
                row.update(
                    ok=shared <= SMEM_LIMIT[arch] and not (hot and spill),
                    hot=hot,
                    shared_bytes=shared,
                    num_warps=int(k.metadata.num_warps),
                    num_stages=int(k.metadata.num_stages),
                    **(usage or {"registers": None, "spill_stores": None, "spill_loads": None}),
                    seconds=round(time.perf_counter() - t0, 2),
                )
                if shared > SMEM_LIMIT[arch]:
                    row["error"] = f"shared memory {shared} B > {SMEM_LIMIT[arch]} B"
                elif hot and spill:
                    row["error"] = f"hot config spills ({spill} B of spill stores + loads)"
            except Exception as e:  # noqa: BLE001 - report every failure, then fail
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
            failures += not row["ok"]
            rows.append(row)
    print(
        f"{'module':<15} {'kernel config':<60} {'target':<7} {'smem B':>8} {'regs':>5} "
        f"{'spill st/ld B':>13} hot  status"
    )
    for r in rows:
        status = "ok" if r["ok"] else "FAIL " + r.get("error", "")
        spill = "-" if r.get("spill_stores") is None else f"{r['spill_stores']}/{r['spill_loads']}"
        print(
            f"{r['module']:<15} {r['name']:<60} {r['target']:<7} "
            f"{r.get('shared_bytes', '-')!s:>8} {r.get('registers') or '-'!s:>5} {spill:>13} "
            f"{'yes' if r.get('hot') else '   '}  {status}"
        )
    spilled = [r for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    print(
        f"aot_check: {len(rows) - failures} compiled, {failures} failed ({len(specs)} configs, "
        f"{len(spilled)} compilations spill, {sum(r.get('hot', False) for r in spilled)} of them "
        f"hot) in {time.perf_counter() - t_start:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
