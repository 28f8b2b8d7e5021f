"""The pruning report: per-group widths, params and MACs before/after; a table and a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GroupRow:
    root: str
    channels_before: int
    channels_after: int
    n_layers: int  # Conv/Linear producers in the group (coupled when > 1)


@dataclass
class PruneReport:
    """What :func:`simprune.prune` did. ``str(report)`` is the table; ``to_dict()`` the data."""

    groups: list[GroupRow]
    macs_before: float
    macs_after: float
    params_before: float
    params_after: float
    target: dict[str, Any]
    threshold: float | None
    skipped: list[list[str]] = field(default_factory=list)
    # groups the rewrite verification excluded, [root, reason]; consumers it corrected, [name, what]
    excluded: list[list[str]] = field(default_factory=list)
    corrected: list[list[str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    layers: dict[str, list[int]] = field(default_factory=dict)  # name -> [out before, out after]
    # the engine pass (simprune.pruning.distributed): peak_bytes (and whether "measured" or
    # estimated), launches, device, rank, world_size, per_rank peaks and group counts
    engine: dict[str, Any] = field(default_factory=dict)
    # group root -> its linkage matrix with scale-free heights (for plots; not in to_dict()).
    dendrograms: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dendrograms")
        d["macs_reduction"] = self.macs_reduction
        d["params_reduction"] = self.params_reduction
        return d

    def table(self, max_rows: int | None = None) -> str:
        rows = self.groups if max_rows is None else self.groups[:max_rows]
        w = max([len("group (root layer)")] + [len(r.root) for r in rows])
        lines = [
            f"{'group (root layer)':<{w}}  {'layers':>6}  {'before':>7}  {'after':>7}  {'kept':>6}",
            "-" * (w + 36),
        ]
        for r in rows:
            keep = r.channels_after / r.channels_before if r.channels_before else 1.0
            lines.append(
                f"{r.root:<{w}}  {r.n_layers:>6}  {r.channels_before:>7}  {r.channels_after:>7}  "
                f"{keep:>6.1%}"
            )
        if max_rows is not None and len(self.groups) > max_rows:
            lines.append(f"... {len(self.groups) - max_rows} more groups")
        ch0 = sum(r.channels_before for r in self.groups)
        ch1 = sum(r.channels_after for r in self.groups)
        lines.append("-" * (w + 36))
        lines.append(f"{'all groups':<{w}}  {'':>6}  {ch0:>7}  {ch1:>7}  {ch1 / max(ch0, 1):>6.1%}")
        lines.append("")
        lines.append(
            f"MACs   {self.macs_before / 1e6:12.2f} M -> {self.macs_after / 1e6:12.2f} M  "
            f"(-{self.macs_reduction:.2%})"
        )
        lines.append(
            f"params {self.params_before / 1e6:12.3f} M -> {self.params_after / 1e6:12.3f} M  "
            f"(-{self.params_reduction:.2%})"
        )
        tgt = ", ".join(f"{k}={v}" for k, v in self.target.items())
        lines.append(
            f"target: {tgt}"
            + (f"; threshold {self.threshold:.4g}" if self.threshold is not None else "")
        )
        if self.timings:
            lines.append(
                "plan time: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.timings.items())
            )
        if self.engine.get("peak_bytes"):
            e = self.engine
            ranks = f" (largest of {e['world_size']} ranks)" if e.get("world_size", 1) > 1 else ""
            lines.append(
                f"engine pass: peak {e['peak_bytes'] / 2**20:.1f} MiB{ranks} "
                f"({e.get('measured')}), {e.get('launches')} launch(es)"
            )
        if self.skipped:
            lines.append(
                f"not pruned: {len(self.skipped)} group(s), e.g. "
                f"{self.skipped[0][0]} ({self.skipped[0][1]})"
            )
        for root, why in self.excluded:
            lines.append(f"excluded by verification: {root} ({why})")
        for name, why in self.corrected:
            lines.append(f"corrected: {name} ({why})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
