"""The engine demo: every conv layer of a torchvision CNN through descriptors -> distances -> linkage,
on each available backend, timed against the scipy pipeline (``pdist`` + ``linkage``) and checked
against it.

The model is randomly initialised (no weights are downloaded); with fresh BatchNorm (gamma = 1,
beta = 0) the gaussian descriptor reduces to the unit filter directions, which is still the real
workload shape: N channels x (1 + C_in k^2) features per layer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.cluster.hierarchy as sch
import scipy.spatial.distance as ssd
import torch
from torch import nn

from .backends import available_backends
from .distance import pairwise_distance
from .hierarchy import linkage
from .similarity import layer_descriptors


def conv_bn_pairs(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module | None]]:
    """(name, conv, following BatchNorm or None) for every Conv2d, in registration order.

    A BatchNorm registered right after the conv with ``num_features == out_channels`` is taken as its
    BN (the torchvision convention); the pruning pipeline uses Torch-Pruning's graph instead.
    """
    mods = list(model.named_modules())
    for i, (name, m) in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn = None
            if i + 1 < len(mods):
                nxt = mods[i + 1][1]
                if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
                    bn = nxt
            yield name, m, bn


def build_model(spec: str) -> nn.Module:
    """``torchvision:NAME`` -> a randomly initialised torchvision model (no download)."""
    if not spec.startswith("torchvision:"):
        raise ValueError(f"model must be 'torchvision:NAME', got {spec!r}")
    import torchvision

    name = spec.split(":", 1)[1]
    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise ValueError(f"unknown torchvision model {name!r}") from e


def run_engine_demo(
    model_spec: str = "torchvision:resnet50",
    method: str = "average",
    max_layers: int | None = None,
    scipy_baseline: bool = True,
    out=sys.stdout,
) -> list[dict]:
    """Run the demo and print one table row per layer as it goes; returns the rows."""
    torch.manual_seed(0)
    model = build_model(model_spec).eval()
    backends = [b for b in available_backends("linkage", "cpu")]
    pairs = list(conv_bn_pairs(model))[:max_layers]
    print(
        f"simprune engine demo: {model_spec} (random init), {len(pairs)} conv layers, "
        f"linkage={method}, backends={','.join(backends)}, torch threads={torch.get_num_threads()}",
        file=out,
    )
    print(
        "per layer: descriptors [beta, gamma*w/|w|] -> euclidean distances -> linkage; times in ms;"
        " 'same' = Z columns 0,1,3 equal to scipy's and heights within rtol 1e-9",
        file=out,
    )
    head = f"{'layer':<28} {'N':>5} {'D':>5} {'dist':>8}"
    head += "".join(f" {'link:' + b:>11}" for b in backends)
    if scipy_baseline:
        head += f" {'scipy':>9} {'speedup':>8} {'same':>5}"
    print(head, file=out)
    rows = []
    totals = {"dist": 0.0, **{b: 0.0 for b in backends}, "scipy": 0.0}
    for name, conv, bn in pairs:
        t0 = time.perf_counter()
        v = layer_descriptors(conv, bn, metric="gaussian" if bn is not None else "linear").double()
        d = pairwise_distance(v, metric="euclidean", condensed=True)
        t_dist = time.perf_counter() - t0
        row: dict[str, Any] = {
            "layer": name,
            "N": v.shape[0],
            "D": v.shape[1],
            "dist_ms": 1e3 * t_dist,
        }
        totals["dist"] += t_dist
        zs = {}
        for b in backends:
            t0 = time.perf_counter()
            zs[b] = linkage(d, method, backend=b)
            dt = time.perf_counter() - t0
            row[f"link_{b}_ms"] = 1e3 * dt
            totals[b] += dt
        line = f"{name:<28} {row['N']:>5} {row['D']:>5} {row['dist_ms']:>8.1f}"
        line += "".join(f" {row[f'link_{b}_ms']:>11.1f}" for b in backends)
        if scipy_baseline:
            vn = v.numpy()
            t0 = time.perf_counter()
            z_ref = sch.linkage(ssd.pdist(vn, "euclidean"), method)
            t_sc = time.perf_counter() - t0
            totals["scipy"] += t_sc
            same = all(
                np.array_equal(z[:, [0, 1, 3]].numpy(), z_ref[:, [0, 1, 3]])
                and np.allclose(z[:, 2].numpy(), z_ref[:, 2], rtol=1e-9, atol=0)
                for z in zs.values()
            )
            best = min(row["dist_ms"] + row[f"link_{b}_ms"] for b in backends)
            row.update(scipy_ms=1e3 * t_sc, same=same, speedup=1e3 * t_sc / best)
            line += f" {row['scipy_ms']:>9.1f} {row['speedup']:>7.1f}x {'yes' if same else 'NO':>5}"
        print(line, file=out, flush=True)
        rows.append(row)
    line = f"{'total':<28} {'':>5} {'':>5} {1e3 * totals['dist']:>8.1f}"
    line += "".join(f" {1e3 * totals[b]:>11.1f}" for b in backends)
    if scipy_baseline:
        best = min(totals["dist"] + totals[b] for b in backends)
        line += f" {1e3 * totals['scipy']:>9.1f} {totals['scipy'] / best:>7.1f}x"
        line += f" {'yes' if all(r['same'] for r in rows) else 'NO':>5}"
    print(line, file=out)
    return rows
