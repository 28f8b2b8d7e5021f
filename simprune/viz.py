"""PNG plots of a pruning run: layer widths before/after and the dendrogram of one channel group.

matplotlib is optional (``pip install simprune[plot]``); it is imported only inside these functions,
with a clear error when it is missing.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class PlotUnavailableError(ImportError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailableError(
            "plots need matplotlib: pip install matplotlib (or pip install 'simprune[plot]')"
        ) from e
    return plt


def default_dendrogram_group(report: Any) -> str | None:
    """The widest pruned group (the most informative dendrogram), else the widest group."""
    if not report.dendrograms:
        return None
    rows = sorted(
        report.groups,
        key=lambda r: (r.channels_after < r.channels_before, r.channels_before),
        reverse=True,
    )
    for r in rows:
        if r.root in report.dendrograms:
            return str(r.root)
    return str(next(iter(report.dendrograms)))


def plot_pruning(report: Any, path: str | os.PathLike[str], group: str | None = None) -> str:
    """Write a PNG: output widths of every Conv/Linear layer before/after, and the dendrogram
    (scale-free heights, with the cut threshold) of ``group`` (a group root name; default: the
    widest pruned group). Returns the group plotted."""
    plt = _pyplot()
    from scipy.cluster.hierarchy import dendrogram

    group = group or default_dendrogram_group(report)
    if group is not None and group not in report.dendrograms:
        have = ", ".join(list(report.dendrograms)[:8])
        raise ValueError(f"no dendrogram for group {group!r}; groups with one: {have} ...")
    names = list(report.layers)
    before = np.array([report.layers[n][0] for n in names])
    after = np.array([report.layers[n][1] for n in names])
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.12 * len(names) + 4), 9))
    ax = axes[0]
    xs = np.arange(len(names))
    ax.bar(xs, before, color="#c8c8c8", label="before")
    ax.bar(xs, after, color="#1f77b4", label="after")
    ax.set_xlim(-1, len(names))
    ax.set_ylabel("output channels")
    ax.set_title(
        f"Layer widths: MACs -{report.macs_reduction:.1%}, params -{report.params_reduction:.1%}"
    )
    step = max(1, len(names) // 40)
    ax.set_xticks(xs[::step])
    ax.set_xticklabels(names[::step], rotation=90, fontsize=6)
    ax.legend()
    ax = axes[1]
    if group is None:
        ax.text(0.5, 0.5, "no group with two or more channels", ha="center", va="center")
        ax.set_axis_off()
    else:
        z = np.asarray(report.dendrograms[group])
        thr = report.threshold if report.threshold is not None else 0.0
        dendrogram(z, ax=ax, no_labels=True, color_threshold=thr, above_threshold_color="#999999")
        # Random-init layers merge in a narrow band of heights: zoom on it.
        lo, hi = float(z[:, 2].min()), float(z[:, 2].max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.1 * max(hi, 1e-12)
        ax.set_ylim(max(0.0, min(lo, thr) - pad), max(hi, thr) + pad)
        if report.threshold is not None and report.threshold >= 0:
            ax.axhline(report.threshold, color="r", ls="--", lw=1, label="global threshold")
            ax.legend()
        row = next((r for r in report.groups if r.root == group), None)
        kept = f": {row.channels_before} -> {row.channels_after} channels" if row else ""
        ax.set_title(f"Dendrogram of group {group}{kept}")
        ax.set_ylabel("scale-free height")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(group)
