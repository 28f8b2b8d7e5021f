"""Very wide layers: neuron clustering for every layer of a stack of transformer MLP blocks.

    python -m benchmarks.bench_wide                           # CPU: 8 layers of 512 -> 1792
    python -m benchmarks.bench_wide --layers 4 --d 256 --h 896
    python -m benchmarks.bench_wide --device cuda             # GPU: 32 layers of 4096 -> 14336

The stack is ``layers`` MLP blocks ``Linear(d, h) -> GELU -> Linear(h, d)`` (random weights, fp32). A
hidden neuron of a block is the row ``[b_i, w_i]`` of its first Linear (metric.md: the ``linear``
descriptor, h x (d + 1)); every block's h neurons are clustered (average linkage on the Euclidean
distance) and cut to keep ``1 - ratio`` of them. The full size on one GPU (design target: <= 5 s on one
H100) is 32 x 14336 neurons x 4097 features: 32 distance matrices of 14336^2 and 32 linkages.

Rows (medians of ``--repeat``; speed is reported, never asserted):

* ``simprune``: ``channel_descriptors`` + one batched ``pairwise_distance_batched`` call for all layers
  + ``linkage_batched`` + ``cut_n_clusters`` per layer, stage by stage, on ``--device``;
* ``scipy (per layer)``: ``pdist`` + ``linkage(average)`` + ``fcluster(maxclust)`` layer after layer
  on the CPU. At the GPU size scipy would take hours (its pdist is not BLAS-backed): there one CPU
  layer of 512 -> 1792 is timed and scaled (pdist by h^2 d, linkage by h^2, times the layers), and
  ``note`` says EXTRAPOLATED. ``--scipy-layers k`` runs scipy on k layers and scales by layers / k.

``x_simprune`` is the row's time over simprune's (> 1: simprune is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, print_table, sync, write_results  # noqa: E402
from simprune.testing import same_partition  # noqa: E402

COLUMNS = ["x_simprune", "impl", "layers", "d", "h", "s", "stages", "note"]


def make_stack(layers: int, d: int, h: int, device: str, seed: int = 0) -> list[torch.nn.Linear]:
    """The first Linear (d -> h) of each block: the layers whose neurons are clustered."""
    # Drawn on the device itself: the GPU stack holds 1.9 G weights, slow to draw on the host.
    g = torch.Generator(device=device).manual_seed(seed)
    fcs = []
    with torch.no_grad():
        for _ in range(layers):
            fc = torch.nn.Linear(d, h, device="meta").to_empty(device=device)
            fc.weight.normal_(0.0, d**-0.5, generator=g)
            fc.bias.normal_(0.0, 0.02, generator=g)
            fcs.append(fc)
    return fcs


def simprune_cluster(
    fcs: list[torch.nn.Linear], ratio: float, backend: str = "auto"
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Labels of every layer's neurons, and the time of each stage (seconds)."""
    import simprune

    dev = fcs[0].weight.device
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        vs = [simprune.channel_descriptors(fc.weight, metric="linear", bias=fc.bias) for fc in fcs]
    sync(dev)
    t["descriptors"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = simprune.pairwise_distance_batched(vs, "euclidean", condensed=True, backend=backend)
    sync(dev)
    t["distances"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # As simprune.prune's engine pass does: simprune.backends decides (on CUDA one launch for the
    # layers the batched kernel takes, the whole-GPU kernel for wider ones; on the CPU a loop).
    zs = simprune.linkage_batched(ds, "average", backend=backend)
    sync(dev)
    t["linkage"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = [
        simprune.cut_n_clusters(z, max(1, round((1 - ratio) * v.shape[0])))
        for z, v in zip(zs, vs, strict=True)
    ]
    t["cut"] = time.perf_counter() - t0
    return labels, t


def scipy_cluster(fcs: list[torch.nn.Linear], ratio: float) -> list[np.ndarray]:
    """The per-layer scipy pipeline (CPU): pdist + average linkage + fcluster(maxclust)."""
    import scipy.cluster.hierarchy as sch
    from scipy.spatial.distance import pdist

    out = []
    for fc in fcs:
        w = fc.weight.detach().to("cpu", torch.float64)
        b = fc.bias.detach().to("cpu", torch.float64)
        v = torch.cat([b[:, None], w], dim=1).numpy()
        z = sch.linkage(pdist(v, "euclidean"), "average")
        out.append(sch.fcluster(z, max(1, round((1 - ratio) * v.shape[0])), "maxclust"))
    return out


def run(
    layers: int,
    d: int,
    h: int,
    *,
    ratio: float = 0.3,
    repeat: int = 3,
    device: str = "cpu",
    backend: str = "auto",
    scipy_layers: int | None = None,
    extrapolate_from: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """simprune vs scipy rows; see the module docstring."""
    fcs = make_stack(layers, d, h, device)
    simprune_cluster(fcs[:2], ratio, backend)  # warm-up: extension load, JIT, allocator
    times, stages = [], {k: [] for k in ("descriptors", "distances", "linkage", "cut")}
    labels: list[torch.Tensor] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        labels, st = simprune_cluster(fcs, ratio, backend)
        times.append(time.perf_counter() - t0)
        for k, v in st.items():
            stages[k].append(v)
    s = statistics.median(times)
    cond = {"layers": layers, "d": d, "h": h, "device": device, "repeat": repeat}
    rows: list[dict[str, Any]] = [
        {
            **cond,
            "impl": f"simprune ({backend}, {device})",
            "s": s,
            "x_simprune": 1.0,
            "stages": " ".join(f"{k[:5]}={statistics.median(v):.3f}" for k, v in stages.items()),
        }
    ]
    n_sc = layers if scipy_layers is None else min(scipy_layers, layers)
    if n_sc > 0:
        sc_times = []
        sc: list[np.ndarray] = []
        for _ in range(repeat if n_sc == layers else 1):
            t0 = time.perf_counter()
            sc = scipy_cluster(fcs[:n_sc], ratio)
            sc_times.append(time.perf_counter() - t0)
        t_sc = statistics.median(sc_times) * layers / n_sc
        # Same partitions as scipy on the layers both ran (random weights are tie-free).
        same = all(same_partition(labels[i].cpu().numpy(), sc[i]) for i in range(n_sc))
        rows.append(
            {
                **cond,
                "impl": "scipy per layer (pdist+linkage+fcluster, CPU)",
                "s": t_sc,
                "x_simprune": t_sc / s,
                "note": ("" if n_sc == layers else f"EXTRAPOLATED: {n_sc} layer(s) x {layers}; ")
                + f"same partitions: {'yes' if same else 'NO'}",
            }
        )
    elif extrapolate_from is not None:
        # Too big for scipy here: time one layer of a smaller size on the CPU and scale each part
        # by its complexity (pdist: h^2 d; linkage + fcluster: h^2), times the number of layers.
        d0, h0 = extrapolate_from
        t_pd, t_lk = _scipy_parts(make_stack(1, d0, h0, "cpu", seed=1)[0], ratio)
        t_sc = layers * (t_pd * (h / h0) ** 2 * (d + 1) / (d0 + 1) + t_lk * (h / h0) ** 2)
        rows.append(
            {
                **cond,
                "impl": "scipy per layer (pdist+linkage+fcluster, CPU)",
                "s": t_sc,
                "x_simprune": t_sc / s,
                "note": f"EXTRAPOLATED from 1 CPU layer {d0}->{h0} (pdist ~ h^2 d, linkage ~ h^2)",
            }
        )
    return rows


def _scipy_parts(fc: torch.nn.Linear, ratio: float) -> tuple[float, float]:
    import scipy.cluster.hierarchy as sch
    from scipy.spatial.distance import pdist

    v = torch.cat([fc.bias.detach()[:, None], fc.weight.detach()], 1).double().numpy()
    t0 = time.perf_counter()
    dist = pdist(v, "euclidean")
    t1 = time.perf_counter()
    z = sch.linkage(dist, "average")
    sch.fcluster(z, max(1, round((1 - ratio) * v.shape[0])), "maxclust")
    return t1 - t0, time.perf_counter() - t1


def suite(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    """The report's tables (see ``benchmarks/report.py``)."""
    if device == "cuda":
        rows = run(
            32, 4096, 14336, repeat=3, device="cuda", scipy_layers=0, extrapolate_from=(512, 1792)
        )
    elif quick:
        rows = run(4, 128, 448, repeat=1)
    else:
        rows = run(8, 512, 1792, repeat=3)
    return [
        {
            "name": "wide",
            "title": f"Very wide MLP stack, neuron clustering of every layer ({device}, -30 %; "
            "x_simprune = time / simprune)",
            "columns": COLUMNS,
            "rows": rows,
        }
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, help="default: 8 (CPU), 32 (cuda)")
    ap.add_argument("--d", type=int, help="model width; default: 512 (CPU), 4096 (cuda)")
    ap.add_argument("--h", type=int, help="MLP width; default: 1792 (CPU), 14336 (cuda)")
    ap.add_argument("--ratio", type=float, default=0.3, help="fraction of neurons removed")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument(
        "--scipy-layers",
        type=int,
        help="layers scipy runs (the rest extrapolated); default: all (CPU), 0 (cuda)",
    )
    ap.add_argument("--json", help="write rows + conditions as JSON")
    ap.add_argument("--markdown", help="write the table as Markdown")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    rows = run(
        args.layers or (32 if gpu else 8),
        args.d or (4096 if gpu else 512),
        args.h or (14336 if gpu else 1792),
        ratio=args.ratio,
        repeat=args.repeat,
        device=args.device,
        backend=args.backend,
        scipy_layers=args.scipy_layers if args.scipy_layers is not None else (0 if gpu else None),
        extrapolate_from=(512, 1792) if gpu else None,
    )
    info = machine_info()
    info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print_table(rows, COLUMNS, title=f"Very wide MLP stack ({args.device}), median seconds")
    print("conditions:", json.dumps(info))
    write_results(
        rows,
        COLUMNS,
        info,
        f"Very wide MLP stack ({args.device})",
        json_path=args.json,
        markdown_path=args.markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
