"""The ablation study of metric.md section 5 on the shipped MNIST ResNet; writes docs/results.md tables.

    python scripts/run_ablation.py run              # appends rows to docs/results_ablation.jsonl
    python scripts/run_ablation.py report           # rewrites the generated tables of docs/results.md

``run`` is resumable (configurations already in the JSONL file are skipped) and ordered so that an
interrupted run still gives complete tables for the first seeds:

1. seeds 0, 1, 2: simprune (gaussian, merge) and the peers at simprune's widths (L1, BN-gamma,
   FPGM, random) at -30 % and -50 % MACs, fine-tuned one epoch;
2. the full factorial linkage x cut x representative x merge at -30 %, without fine-tuning (the
   deterministic part: accuracy as pruned and after BatchNorm recalibration);
3. seeds 0, 1, 2: the other simprune metrics (wasserstein, linear, cosine) at both levels, and the
   one-factor-at-a-time variations of simprune's settings at -30 %, fine-tuned one epoch;
4. step 1 with the demo's short fine-tune (one pass over 1000 images);
5. Torch-Pruning's global pruning (its own per-layer widths) per criterion, one epoch;
6. step 3 with the short fine-tune;
7. step 1 at -70 % MACs, then seeds 3 and 4 of step 1 at all three levels;
8. merge sum/off at -70 % (one epoch), and step 1 at -70 % with the short fine-tune.
9. with calibration data (1000 training images), seeds 0, 1, 2, short fine-tune, at -30/-50/-70 %:
   simprune + data merge (one-shot and layer by layer), the activation metric + data merge, and the
   controls L1 + data merge, FPGM + data merge (simprune.demo.DATA_CRITERIA);
10. step 5 with the short fine-tune.

A fine-tune (one epoch = 4000 images; SGD, cosine learning rate, the baseline's augmentation) starts
from the BN-recalibrated pruned model; seeds vary the data order, the shifts and the random criterion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simprune.demo import (  # noqa: E402
    DATA_CRITERIA,
    LABELS,
    PEER_CRITERIA,
    SIM_METRICS,
    TP_GLOBAL_CRITERIA,
    Data,
    FinetuneConfig,
    RunConfig,
    label,
    parse_criterion,
    run_config,
)
from simprune.zoo import evaluate, load_baseline  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSONL = os.path.join(ROOT, "docs", "results_ablation.jsonl")
RESULTS_MD = os.path.join(ROOT, "docs", "results.md")
START, END = "<!-- generated tables: start -->", "<!-- generated tables: end -->"

LEVELS = (0.3, 0.5)
SEEDS = (0, 1, 2)
DEFAULT = {"method": "average", "cut": "global", "representative": "energy", "merge": "ls"}
ONE_FACTOR = [
    {"method": "complete"},
    {"method": "single"},
    {"method": "ward"},
    {"cut": "uniform"},
    {"representative": "medoid"},
    {"merge": "sum"},
    {"merge": "off"},
]


HEADLINE = ("sim_gaussian", "l1", "bn_gamma", "fpgm", "random")


# Fine-tune budgets: None = one full epoch (4000 images), an int = one pass over that many images
# (the demo's short fine-tune), 0 = none.
SHORT = 1000


def headline_configs(
    seed: int, ft: int | None = SHORT, levels: tuple[float, ...] = LEVELS
) -> list[tuple[RunConfig, int | None]]:
    return [(RunConfig(c, level, seed=seed), ft) for level in levels for c in HEADLINE]


def other_configs(seed: int, ft: int | None = SHORT) -> list[tuple[RunConfig, int | None]]:
    """The other simprune metrics at both levels, and one-factor variations at -30 %."""
    out: list[tuple[RunConfig, int | None]] = [
        (RunConfig(f"sim_{m}", level, seed=seed), ft)
        for level in LEVELS
        for m in SIM_METRICS
        if f"sim_{m}" not in HEADLINE
    ]
    for change in ONE_FACTOR:
        out.append((RunConfig("sim_gaussian", 0.3, seed=seed, **{**DEFAULT, **change}), ft))
    return out


def factorial_configs() -> list[tuple[RunConfig, int | None]]:
    out: list[tuple[RunConfig, int | None]] = []
    for method in ("average", "complete", "single", "ward"):
        for cut in ("global", "uniform"):
            for rep in ("energy", "medoid"):
                for merge in ("ls", "sum", "off"):
                    out.append((RunConfig("sim_gaussian", 0.3, method, cut, rep, merge, 0), 0))
    return out


def tp_configs(ft: int | None = None) -> list[tuple[RunConfig, int | None]]:
    return [
        (RunConfig(c, level, seed=s), ft)
        for s in SEEDS
        for level in LEVELS
        for c in TP_GLOBAL_CRITERIA
    ]


def plan_all() -> list[tuple[RunConfig, int | None]]:
    return (
        [c for s in SEEDS for c in headline_configs(s, None)]
        + factorial_configs()
        + [c for s in SEEDS for c in other_configs(s, None)]
        + [c for s in SEEDS for c in headline_configs(s)]
        + tp_configs()
        + [c for s in SEEDS for c in other_configs(s)]
        # 7. the headline at -70 % MACs too, and seeds 3, 4 of the headline (one epoch).
        + [c for s in SEEDS for c in headline_configs(s, None, (0.7,))]
        + [c for s in (3, 4) for c in headline_configs(s, None, (0.3, 0.5, 0.7))]
        # 8. merge on/off at -70 % (is it the selection or the merge?), and -70 % short.
        + [
            (RunConfig("sim_gaussian", 0.7, seed=s, merge=m), None)
            for s in SEEDS
            for m in ("sum", "off")
        ]
        + [c for s in SEEDS for c in headline_configs(s, SHORT, (0.7,))]
        # 9. calibration data: the data merge, the activation metric, the controls.
        + [c for s in SEEDS for c in data_configs(s)]
        # 10. Torch-Pruning's global pruning with the short fine-tune (the short tables' TP rows).
        + tp_configs(SHORT)
    )


def data_configs(seed: int, ft: int | None = SHORT) -> list[tuple[RunConfig, int | None]]:
    out = []
    for level in (0.3, 0.5, 0.7):
        for spec in DATA_CRITERIA:
            name, merge = parse_criterion(spec)
            out.append((RunConfig(name, level, seed=seed, merge=merge or "ls"), ft))
    return out


# The table with calibration data: each criterion without and with the data merge.
DATA_TABLE = [
    ("sim_gaussian", "ls"),
    ("sim_gaussian", "data"),
    ("sim_gaussian", "data_seq"),
    ("sim_activation", "data"),
    ("l1", "ls"),
    ("l1", "data"),
    ("fpgm", "ls"),
    ("fpgm", "data"),
    ("bn_gamma", "ls"),
    ("random", "ls"),
]


def _key(cfg: RunConfig, ft: int | None) -> str:
    return cfg.key() + ("|ft" if ft is None else f"|ft{ft}" if ft else "|noft")


def _ft_config(ft: int | None) -> FinetuneConfig:
    return FinetuneConfig(epochs=0) if ft == 0 else FinetuneConfig(images=ft)


def load_rows(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # One row per configuration (the last written wins: a rerun replaces an interrupted one).
    return list({r["key"]: r for r in rows}.values())


def cmd_run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    done = {r["key"] for r in load_rows(args.out)}
    todo = [(c, ft) for c, ft in plan_all() if _key(c, ft) not in done]
    if args.data_first:  # step 9 (calibration data) before the rest
        data_keys = {_key(c, ft) for s in SEEDS for c, ft in data_configs(s)}
        todo.sort(key=lambda t: _key(*t) not in data_keys)
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        todo = todo[k::n]
    if args.limit:
        todo = todo[: args.limit]
    data = Data()
    model = load_baseline()
    width_plans: dict = {}
    print(f"{len(done)} done, {len(todo)} to run -> {args.out}", flush=True)
    t0 = time.perf_counter()
    for k, (cfg, ft) in enumerate(todo):
        try:
            row = run_config(
                cfg,
                data,
                model=model,
                finetune_config=_ft_config(ft),
                width_plans=width_plans,
            )
        except Exception as e:  # noqa: BLE001 - recorded, the study goes on
            print(f"{_key(cfg, ft)} FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        row["key"] = _key(cfg, ft)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        ft_s = "-" if row["acc_ft"] is None else f"{row['acc_ft']:.3f}"
        print(
            f"[{time.perf_counter() - t0:7.0f}s] {k + 1}/{len(todo)} {row['key']}: MACs "
            f"-{row['macs_reduction']:.3f} pruned {row['acc_pruned']:.3f} recal "
            f"{row['acc_recal']:.3f} ft {ft_s}",
            flush=True,
        )
    return 0


# ----------------------------------------------------------------------------------------------
# Report


def _ms(vals: list[float]) -> str:
    if not vals:
        return "–"
    a = 100 * np.asarray(vals, dtype=np.float64)
    if len(a) == 1:
        return f"{a[0]:.1f}"
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}"


def _setting(r: dict[str, Any]) -> str:
    diff = [
        f"{k}={r[k]}" for k in ("method", "cut", "representative", "merge") if r[k] != DEFAULT[k]
    ]
    return ", ".join(diff) if diff else "default (average, global, energy, ls)"


def _table(rows: list[dict[str, Any]], by: Any, label: Any, first_col: str) -> list[str]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[by(r)].append(r)
    out = [
        f"| {first_col} | MACs red. | params | seeds | as pruned | + BN recal | + fine-tune |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rs in groups.values():
        fts = [r["acc_ft"] for r in rs if r["acc_ft"] is not None]
        seeds = sorted({r["seed"] for r in rs})
        out.append(
            f"| {label(rs[0])} | {np.mean([r['macs_reduction'] for r in rs]):.1%} | "
            f"{np.mean([r['params_after'] for r in rs]) / 1e3:.1f}k | {len(seeds)} | "
            f"{_ms([r['acc_pruned'] for r in rs])} | {_ms([r['acc_recal'] for r in rs])} | "
            f"{_ms(fts)} |"
        )
    return out


def cmd_report(args: argparse.Namespace) -> int:
    rows = load_rows(args.out)
    model = load_baseline()
    data = Data()
    base_acc = evaluate(model, data.x_test, data.y_test)
    noft = [r for r in rows if r["key"].endswith("|noft")]
    lines = [
        START,
        "",
        f"Unpruned baseline: {100 * base_acc:.1f} % test accuracy (1000 images). Accuracies in %, "
        "mean ± sample standard deviation over the seeds counted in the `seeds` column (one "
        "seed: its value alone). Accuracy as pruned and after BN recalibration does not depend on "
        "the seed except for `random`; the seeds vary the fine-tune.",
        "",
    ]
    order = [f"sim_{m}" for m in SIM_METRICS] + list(PEER_CRITERIA) + list(TP_GLOBAL_CRITERIA)
    budgets = (
        (f"|ft{SHORT}", f"short fine-tune (one pass over {SHORT} of the 4000 training images)"),
        ("|ft", "fine-tune of one full epoch (4000 images)"),
    )
    for suffix, budget in budgets:
        ft = [r for r in rows if r["key"].endswith(suffix)]
        for level in sorted({r["macs"] for r in ft}):
            sel = [
                r
                for r in ft
                if r["macs"] == level
                and all(r[k] == v for k, v in DEFAULT.items())
                and r["criterion"] in order
            ]
            sel.sort(key=lambda r: order.index(r["criterion"]))
            if not sel:
                continue
            lines += [f"### Criteria at −{level:.0%} MACs, {budget}", ""]
            lines += _table(
                sel, lambda r: r["criterion"], lambda r: LABELS[r["criterion"]], "criterion"
            )
            lines.append("")
        for level in (0.3, 0.7):
            sel = [r for r in ft if r["criterion"] == "sim_gaussian" and r["macs"] == level]
            if len({_setting(r) for r in sel}) > 1:
                lines += [
                    f"### simprune settings, one factor at a time (gaussian, −{level:.0%} MACs), "
                    f"{budget}",
                    "",
                ]
                lines += _table(sel, _setting, _setting, "setting")
                lines.append("")
    ft = [r for r in rows if r["key"].endswith(f"|ft{SHORT}")]
    for level in (0.3, 0.5, 0.7):
        sel = [
            r
            for r in ft
            if r["macs"] == level
            and (r["criterion"], r["merge"]) in DATA_TABLE
            and all(r[k] == DEFAULT[k] for k in ("method", "cut", "representative"))
        ]
        if not any(r["merge"] in ("data", "data_seq") for r in sel):
            continue
        sel.sort(key=lambda r: DATA_TABLE.index((r["criterion"], r["merge"])))
        lines += [
            f"### With calibration data: the data merge at −{level:.0%} MACs, short fine-tune "
            f"(one pass over {SHORT} of the 4000 training images)",
            "",
        ]
        lines += _table(
            sel,
            lambda r: (r["criterion"], r["merge"]),
            lambda r: label(r["criterion"], r["merge"]),
            "criterion",
        )
        lines.append("")
    if noft:
        lines += [
            "### Full factorial, no fine-tune (gaussian, −30 % MACs; deterministic)",
            "",
            "| linkage | cut | representative | merge | MACs red. | as pruned | + BN recal |",
            "| --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        for r in noft:
            lines.append(
                f"| {r['method']} | {r['cut']} | {r['representative']} | {r['merge']} | "
                f"{r['macs_reduction']:.1%} | {100 * r['acc_pruned']:.1f} | "
                f"{100 * r['acc_recal']:.1f} |"
            )
        lines.append("")
        for axis, values in (
            ("method", ("average", "complete", "single", "ward")),
            ("cut", ("global", "uniform")),
            ("representative", ("energy", "medoid")),
            ("merge", ("ls", "sum", "off")),
        ):
            parts = []
            for v in values:
                rs = [r for r in noft if r[axis] == v]
                if rs:
                    parts.append(
                        f"{v}: {_ms([r['acc_pruned'] for r in rs])} / "
                        f"{_ms([r['acc_recal'] for r in rs])}"
                    )
            lines.append(
                f"- marginal over the other axes, **{axis}** (as pruned / + BN recal): "
                + "; ".join(parts)
            )
        lines.append("")
    n_ft = len(rows) - len(noft)
    lines += [
        f"Rows: {n_ft} fine-tuned runs, {len(noft)} without fine-tune; {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (all rows rerun on 2026-11-29 after the "
        "calibration sample was made class-balanced: two processes, `--shard 0/2` and `1/2`, one "
        f"torch thread each, load 2-4); torch {torch.__version__}.",
        "",
        END,
    ]
    text = (
        open(RESULTS_MD).read() if os.path.exists(RESULTS_MD) else f"# Results\n\n{START}\n{END}\n"
    )
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    a, rest = text.split(START, 1)
    _, b = rest.split(END, 1)
    with open(RESULTS_MD, "w") as f:
        f.write(a + "\n".join(lines) + b)
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default=JSONL)
    # One thread: these small convolutions hardly scale, and on a shared machine OpenMP threads
    # spin (measured: 2.4 CPU-s for a 1000-image fine-tune on one thread, ~14 on two under load).
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--limit", type=int, default=0, help="run at most N configurations")
    r.add_argument("--data-first", action="store_true", help="run step 9 (calibration data) first")
    r.add_argument(
        "--shard",
        default="",
        help="K/N: run every N-th remaining configuration from the K-th (N processes share the file)",
    )
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("--out", default=JSONL)
    p.set_defaults(func=cmd_report)
    args = ap.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
