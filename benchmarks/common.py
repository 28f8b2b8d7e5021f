"""One timing helper and one machine description for every benchmark (results are only comparable
with their conditions)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: str | torch.device | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(
    fn: Callable[[], Any],
    *,
    repeat: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = None,
    max_seconds: float = 30.0,
) -> float:
    """Median wall time of ``fn()`` in seconds (stops repeating once ``max_seconds`` is spent).

    On CUDA, prefer ``triton.testing.do_bench``; this helper synchronises around each call.
    """
    for _ in range(warmup):
        fn()
        sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times)


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(__file__),
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Machine, versions and commit: printed with, and stored beside, every result."""
    import numpy
    import scipy

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "commit": git_commit(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
    """Plain aligned text table."""
    if title:
        print(f"\n{title}")
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub Markdown table of ``rows`` (missing cells empty)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out) + "\n"


def write_results(
    rows: list[dict[str, Any]],
    columns: list[str],
    info: dict[str, Any],
    title: str,
    *,
    json_path: str | None = None,
    markdown_path: str | None = None,
    extra: dict[str, Any] | None = None,
    extra_markdown: str = "",
) -> None:
    """Every benchmark's output files: JSON ``{"conditions", "rows", **extra}`` and a Markdown page
    (title, conditions, table, then ``extra_markdown``). Either path may be None."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"conditions": info, "rows": rows, **(extra or {})}, f, indent=1)
    if markdown_path:
        conds = ", ".join(f"{k}={v}" for k, v in info.items())
        with open(markdown_path, "w") as f:
            f.write(f"# {title}\n\n{conds}\n\n{markdown_table(rows, columns)}{extra_markdown}")
