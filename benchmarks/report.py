"""The benchmark report: every suite, side-by-side tables (ratios first), results history, docs page.

    python -m benchmarks.report                  # every suite at its CPU (or GPU) size, saved
    python -m benchmarks.report --quick          # small sizes, a smoke run (not saved unless --save)
    python -m benchmarks.report --suites distance linkage --device cpu
    simprune bench [--quick]                      # the same command
    python -m benchmarks.report --tables-only    # rewrite docs/benchmarks.md's tables from the history
    python -m benchmarks.report --from-gpu-check OUT   # record a scripts/gpu_check.sh run's tables

Suites (each a public ``suite(device, quick)`` or ``run(...)`` of its own script, peers measured in the
same run):

* ``distance`` -- ``bench_distance.run``: every backend vs ``torch.cdist`` (and scipy ``cdist`` on CPU):
  time, GB/s, GFLOP/s, % of the roofline (GPU), max relative error on the near-duplicate set;
* ``linkage`` -- ``bench_linkage.run`` (CPU backend vs scipy and fastcluster, all methods) or, with
  ``--device cuda``, ``bench_linkage_gpu.run`` (GPU backends, rounds R and merges per round, scipy and
  fastcluster measured up to 4k and extrapolated as n^2 beyond, marked ``~``);
* ``model`` -- ``bench_model``: time to a complete pruning plan vs TP FPGMImportance and a CUP-style
  scipy pipeline (ResNet-50, Wide-ResNet-101-2, ViT-B/16 MLP blocks);
* ``latency`` -- ``bench_latency``: original vs pruned model latency next to the MACs ratio;
* ``wide`` -- ``bench_wide``: neuron clustering of a stack of very wide MLP layers.

Saved results: ``benchmarks/results/<machine>.json`` (a list of runs: conditions -- machine, versions,
commit, load average -- and every table) and ``<machine>.md`` (the same, appended as Markdown);
``docs/benchmarks.md``: its block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
generated from the latest full (non-quick) run of every machine (the rest of the page is written by
hand). With another ``--results-dir`` (e.g. a GPU check's ``$OUT/results``) the block goes to
``benchmarks.md`` in that directory instead. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, markdown_table, print_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOCS_PAGE = os.path.join(ROOT, "docs", "benchmarks.md")
SUITES = ("distance", "linkage", "model", "latency", "wide")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# A table: name, title, columns, rows, and "readme": the columns shown on docs/benchmarks.md (the
# key keeps its old name: it is stored in the results history).
Table = dict[str, Any]
# The docs page's columns per suite (the history keeps every column).
PAGE_COLUMNS = {
    "model": ["x_plan", "model", "pipeline", "s", "macs_red"],
    "latency": ["speedup", "macs_x", "model", "target", "round_to", "batch", "orig_ms"],
    "wide": ["x_simprune", "impl", "layers", "d", "h", "s", "note"],
    "linkage_gpu": [
        "x_scipy",
        "x_fc",
        "n",
        "method",
        "cuda_s",
        "cuda_f32_s",
        "R",
        "mean_pr",
        "extrap",
    ],
}


# ---- the suites ---------------------------------------------------------------------------------


def distance_suite(device: str, quick: bool) -> list[Table]:
    from benchmarks import bench_distance

    gpu = device == "cuda"
    ns = [512] if quick else ([1024, 4096, 16384] if gpu else [1024, 4096])
    ds = [2, 64] if quick else [2, 64, 1024]
    rows = bench_distance.run(ns, ds, device, with_interpreter=False, scipy_budget=2e9)
    cols = ["x_cdist", "impl", "n", "d", "ms", "GB/s", "GFLOP/s", "max_rel_err", "exact_0"]
    if gpu:
        cols.insert(1, "roof%")
    return [
        {
            "name": "distance",
            "title": f"Pairwise distance, fp32 in/out, channel-like near-duplicate data ({device}; "
            "x_cdist = torch.cdist time / this time)",
            "columns": cols,
            "rows": rows,
            "readme": cols[: 6 if gpu else 5] + ["max_rel_err"],
        }
    ]


def linkage_suite(device: str, quick: bool, big: bool = False) -> list[Table]:
    from benchmarks import bench_linkage

    methods = list(bench_linkage.METHODS)
    if device == "cuda":
        from benchmarks import bench_linkage_gpu

        ns = [1024, 4096] if quick else [1024, 4096, 16384] + ([32768, 65536] if big else [])
        args = argparse.Namespace(
            n=ns, methods=methods, backends=["cuda", "triton"], baseline_max_n=4096,
            twin_max_n=4096, triton_max_n=4096, big=big, layers=False,
        )  # fmt: skip
        rows = bench_linkage_gpu.run(args)
        cols = ["x_scipy", "x_fc", "x_cpu", "n", "method", "cuda_s", "triton_s", "R", "mean_pr"]
        cols += ["cuda_f32_s", "f32_same_Z", "f32_rel"]
        cols += ["widest", "same_Z", "twin", "scipy_s", "fc_s", "extrap"]
        title = (
            "GPU linkage, fp64 condensed distances (x_* = peer time / cuda time; R = rounds, "
            "mean_pr = merges per round; extrap '~': scipy/fastcluster extrapolated as n^2)"
        )
        readme = PAGE_COLUMNS["linkage_gpu"]
    else:
        ns = [512] if quick else [1024, 4096] + ([8192, 16384] if big else [])
        rows = bench_linkage.run(ns, methods, threads=torch.get_num_threads(), rounds_max_n=0)
        cols = ["x_scipy", "x_fc", "n", "method", "same_Z", "cpu_s", "strict_s", "scipy_s", "fc_s"]
        title = (
            f"CPU linkage, gaussian d=64, fp64 condensed, {torch.get_num_threads()} threads "
            "(x_* = peer time / simprune cpu time)"
        )
        readme = ["x_scipy", "x_fc", "n", "method", "cpu_s", "same_Z"]
    return [{"name": "linkage", "title": title, "columns": cols, "rows": rows, "readme": readme}]


def model_suite(device: str, quick: bool) -> list[Table]:
    from benchmarks import bench_model

    tables = bench_model.suite(device, quick)
    for t in tables:
        t["readme"] = PAGE_COLUMNS["model"]
    return tables


def latency_suite(device: str, quick: bool) -> list[Table]:
    from benchmarks import bench_latency

    tables = bench_latency.suite(device, quick)
    for t in tables:
        t["readme"] = PAGE_COLUMNS["latency"]
    return tables


def wide_suite(device: str, quick: bool) -> list[Table]:
    from benchmarks import bench_wide

    tables = bench_wide.suite(device, quick)
    for t in tables:
        t["readme"] = PAGE_COLUMNS["wide"]
    return tables


RUNNERS: dict[str, Callable[..., list[Table]]] = {
    "distance": distance_suite,
    "linkage": linkage_suite,
    "model": model_suite,
    "latency": latency_suite,
    "wide": wide_suite,
}


# ---- formatting and history ----------------------------------------------------------------------


def machine_key(info: dict[str, Any]) -> str:
    """File name of a machine's results: the GPU's name, else the CPU model and core count."""
    if info.get("gpu"):
        name = str(info["gpu"])
    else:
        name = f"cpu {info.get('cpu', 'unknown')} {info.get('cores', '?')}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _conditions(info: dict[str, Any]) -> str:
    keys = ("gpu", "cpu", "cores", "threads", "torch", "triton", "scipy", "commit", "loadavg_1min")
    return ", ".join(f"{k}={info[k]}" for k in keys if k in info)


def run_markdown(run: dict[str, Any]) -> str:
    head = f"## {run['date']} ({'quick' if run['quick'] else 'full'}, {run['device']})\n\n"
    parts = [head, f"Conditions: {_conditions(run['info'])}\n"]
    for t in run["tables"]:
        parts.append(f"\n### {t['title']}\n\n")
        parts.append(t["error"] + "\n" if "error" in t else markdown_table(t["rows"], t["columns"]))
    return "".join(parts)


def save(run: dict[str, Any], results_dir: str = RESULTS) -> tuple[str, str]:
    """Append ``run`` to ``<machine>.json`` (a list of runs) and ``<machine>.md``."""
    os.makedirs(results_dir, exist_ok=True)
    key = machine_key(run["info"])
    jpath = os.path.join(results_dir, f"{key}.json")
    history: list[dict[str, Any]] = []
    if os.path.exists(jpath):
        with open(jpath) as f:
            history = json.load(f)
    history.append(run)
    with open(jpath, "w") as f:
        json.dump(history, f, indent=1, default=str)
    mpath = os.path.join(results_dir, f"{key}.md")
    new = not os.path.exists(mpath)
    with open(mpath, "a") as f:
        if new:
            f.write(
                f"# Benchmark history: {key}\n\n(generated by `python -m benchmarks.report`)\n\n"
            )
        f.write(run_markdown(run) + "\n")
    return jpath, mpath


def tables_block(results_dir: str = RESULTS) -> str:
    """The generated block of docs/benchmarks.md: per machine, the latest full (non-quick) table of
    each suite.

    Suites may come from different runs (``--suites`` runs one part at a time): every table states the
    date, commit and load average of its own run.
    """
    machines: list[tuple[str, dict[str, tuple[dict[str, Any], Table]]]] = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        try:
            with open(path) as f:
                history = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(history, list):
            continue  # another script's single-run file
        latest: dict[str, tuple[dict[str, Any], Table]] = {}
        for r in history:
            if not (isinstance(r, dict) and "tables" in r) or r.get("quick"):
                continue
            for t in r["tables"]:
                if "error" not in t and t.get("rows"):
                    latest[t["name"]] = (r, t)
        if latest:
            machines.append((os.path.basename(path)[: -len(".json")], latest))
    lines = [
        START,
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/` (per machine, the "
        "latest full run of each suite; times are medians, ratios > 1 mean simprune is faster; "
        "peers measured in the same run). On shared or loaded machines only the ratios are "
        "meaningful.",
        "",
    ]
    if not machines:
        lines.append("(no full benchmark run recorded yet)\n")
    for key, latest in machines:
        first = next(iter(latest.values()))[0]
        lines.append(f"**{first['device']}** (`benchmarks/results/{key}.json`)\n")
        for r, t in latest.values():
            cond = _conditions(r["info"])
            lines.append(f"*{t['title']}* -- {r['date']}; {cond}\n")
            lines.append(markdown_table(t["rows"], t.get("readme", t["columns"])))
    lines.append(END)
    return "\n".join(lines) + "\n"


def page_path(results_dir: str = RESULTS) -> str:
    """Where the tables of ``results_dir`` go: docs/benchmarks.md for the committed history."""
    if os.path.abspath(results_dir) == os.path.abspath(RESULTS):
        return DOCS_PAGE
    return os.path.join(results_dir, "benchmarks.md")


def write_tables(results_dir: str = RESULTS, path: str | None = None) -> str:
    """Replace the generated block of ``path`` (default :func:`page_path`) by :func:`tables_block`.

    The text around the block is kept; a page without the markers gets the block appended (a new
    page: a title and the block). Returns the path written.
    """
    path = path or page_path(results_dir)
    block = tables_block(results_dir)
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    elif text:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        text = "# Benchmark tables\n\n" + block
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def import_gpu_check(out_dir: str) -> dict[str, Any]:
    """A run record from the ``$OUT`` of ``scripts/gpu_check.sh`` (env.json + bench_<name>.json)."""
    from benchmarks import bench_latency, bench_model, bench_wide

    with open(os.path.join(out_dir, "env.json")) as f:
        env = json.load(f)
    known = {
        "distance": ["x_cdist", "roof%", "impl", "n", "d", "ms", "GB/s", "GFLOP/s", "max_rel_err"],
        "linkage": ["x_scipy", "x_fc", "x_cpu", "n", "method", "cuda_s", "triton_s", "R"]
        + ["mean_pr", "widest", "same_Z", "twin", "scipy_s", "fc_s", "extrap"],
        "model": bench_model.COLUMNS,
        "latency": bench_latency.COLUMNS,
        "wide": bench_wide.COLUMNS,
    }
    readme = {**PAGE_COLUMNS, "distance": known["distance"][:6] + ["max_rel_err"]}
    readme["linkage"] = PAGE_COLUMNS["linkage_gpu"]
    info: dict[str, Any] = {}
    tables: list[Table] = []
    for path in sorted(glob.glob(os.path.join(out_dir, "bench_*.json"))):
        name = os.path.basename(path)[len("bench_") : -len(".json")]
        with open(path) as f:
            data = json.load(f)
        rows = data.get("rows", []) if isinstance(data, dict) else []
        for k, v in (data.get("info") or data.get("conditions") or {}).items():
            info.setdefault(k, v)
        key = next((k for k in known if name.startswith(k)), None)
        cols = known[key] if key else (list(rows[0]) if rows else [])
        cols = [c for c in cols if any(c in r for r in rows)]
        tables.append(
            {
                "name": name,
                "title": f"{name} ({env.get('gpu', 'GPU')}, scripts/gpu_check.sh)",
                "columns": cols,
                "rows": rows,
                "readme": [c for c in readme.get(key or "", cols) if c in cols],
            }
        )
    info.update({k: v for k, v in env.items() if v is not None})
    mtime = os.path.getmtime(os.path.join(out_dir, "env.json"))
    return {
        "date": datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(env.get("gpu", "cuda")),
        "quick": False,
        "source": "scripts/gpu_check.sh",
        "info": info,
        "tables": tables,
    }


# ---- command -------------------------------------------------------------------------------------


def report(
    suites: list[str],
    *,
    device: str,
    quick: bool,
    big: bool = False,
    save_results: bool = True,
    results_dir: str = RESULTS,
    tables_path: str | None = None,
) -> dict[str, Any]:
    """Run ``suites``, print their tables, save them (``save_results``); returns the run record."""
    tables: list[Table] = []
    t_all = time.perf_counter()
    for name in suites:
        print(f"[report] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            kw = {"big": big} if name == "linkage" else {}
            got = RUNNERS[name](device, quick, **kw)
        except Exception as e:  # noqa: BLE001 - one broken suite must not hide the others
            traceback.print_exc()
            got = [
                {
                    "name": name,
                    "title": name,
                    "columns": [],
                    "rows": [],
                    "error": f"FAILED: {type(e).__name__}: {e}",
                }
            ]
        dt = time.perf_counter() - t0
        for t in got:
            t["seconds"] = round(dt, 1)
            if "error" in t:
                print(f"\n{t['title']}: {t['error']}")
            else:
                print_table(t["rows"], t["columns"], title=t["title"])
        tables.extend(got)
    info = machine_info()
    info["device"] = device
    info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    info["dirty"] = _dirty()
    run = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device if device == "cpu" else str(info.get("gpu", device)),
        "quick": quick,
        "seconds": round(time.perf_counter() - t_all, 1),
        "info": info,
        "tables": tables,
    }
    print("\nconditions:", json.dumps(info))
    if save_results:
        jpath, mpath = save(run, results_dir)
        page = write_tables(results_dir, tables_path)
        print(f"[report] appended to {jpath} and {mpath}; tables: {page}")
    failed = [t["name"] for t in tables if "error" in t]
    if failed:
        print(f"[report] FAILED suites: {failed}", file=sys.stderr)
    return run


def _dirty() -> bool | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            timeout=20,
        )
        return bool(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The report's options (shared with ``simprune bench``)."""
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run, not saved)")
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--big", action="store_true", help="linkage up to 16k (CPU) / 65k (GPU)")
    ap.add_argument("--save", action="store_true", help="save a --quick run too")
    ap.add_argument("--no-save", action="store_true", help="print only")
    ap.add_argument("--results-dir", default=RESULTS, help="where <machine>.json/.md go")
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="only regenerate docs/benchmarks.md's tables (--results-dir R: R/benchmarks.md)",
    )
    ap.add_argument(
        "--readme-only", dest="tables_only", action="store_true", help=argparse.SUPPRESS
    )
    ap.add_argument(
        "--from-gpu-check",
        metavar="OUT",
        help="record the benchmarks of a scripts/gpu_check.sh run (its $OUT) instead of running",
    )


def run_from_args(args: argparse.Namespace) -> int:
    if args.from_gpu_check:
        jpath, mpath = save(import_gpu_check(args.from_gpu_check), args.results_dir)
        print(f"[report] appended to {jpath} and {mpath}")
    if args.tables_only or args.from_gpu_check:
        print(f"[report] tables: {write_tables(args.results_dir)}")
        return 0
    save_results = not args.no_save and (args.save or not args.quick)
    run = report(
        list(args.suites),
        device=args.device,
        quick=args.quick,
        big=args.big,
        save_results=save_results,
        results_dir=args.results_dir,
    )
    return 1 if any("error" in t for t in run["tables"]) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
