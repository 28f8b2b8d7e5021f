"""Representatives and merge compensation (metric.md section 4).

Before channel j of a cluster is removed, its consumers' input weights are folded into its
representative r: ``W_next[:, r] += a_j * W_next[:, j]``. With ``merge="ls"`` (default) a_j is the
least-squares coefficient <v_j, v_r> / <v_r, v_r> of j's descriptor on r's (1 for an exact duplicate,
the positive factor for a positively scaled Linear/Conv without BN); ``"sum"`` uses a_j = 1.
Consumers reached through a flatten own a block of inputs per channel (the whole block is folded);
grouped-conv consumers fold within each conv group; depthwise convolutions are not consumers (their
channel is removed with the group).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..dendrogram import representatives
from .groups import ChannelGroup, Member

MERGE_MODES = ("ls", "sum")


def choose_kept(
    v: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    keep_per_cluster: int,
    sqdist: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept units (sorted) of one group given its cluster labels."""
    if method == "energy":
        energy = (v * v).sum(1)
        return representatives(labels, energy=energy, keep_per_cluster=keep_per_cluster)
    if method == "medoid":
        if sqdist is None:
            sqdist = torch.cdist(v, v).pow(2)
        return representatives(
            labels, distances=sqdist, method="medoid", keep_per_cluster=keep_per_cluster
        )
    raise ValueError(f"unknown representative {method!r}; expected 'energy' or 'medoid'")


def assign(
    v: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor, mode: str | None
) -> list[tuple[int, int, float]]:
    """(removed unit, representative unit, coefficient) for every removed unit.

    The representative is the kept unit of the same cluster with the nearest descriptor (the only one
    when keep_per_cluster=1). ``mode=None`` gives coefficient 0 (no merge).
    """
    lab = labels.numpy()
    kept_np = kept.numpy()
    is_kept = np.zeros(len(lab), dtype=bool)
    is_kept[kept_np] = True
    out: list[tuple[int, int, float]] = []
    by_cluster: dict[int, list[int]] = {}
    for k in kept_np:
        by_cluster.setdefault(int(lab[k]), []).append(int(k))
    for j in np.flatnonzero(~is_kept):
        cands = by_cluster[int(lab[j])]
        if len(cands) == 1:
            r = cands[0]
        else:
            d = ((v[cands] - v[int(j)]) ** 2).sum(1)
            r = cands[int(torch.argmin(d))]
        if mode is None:
            a = 0.0
        elif mode == "sum":
            a = 1.0
        else:
            den = float(v[r] @ v[r])
            a = float(v[int(j)] @ v[r]) / den if den > 0 else 0.0
        out.append((int(j), r, a))
    return out


def expand_units(
    group: ChannelGroup, unit_merges: Sequence[tuple[int, int, float]]
) -> list[tuple[int, int, float]]:
    """Unit merges -> channel merges (a unit is one position in every conv group)."""
    gs = group.n_units
    return [(j + g * gs, r + g * gs, a) for g in range(group.ch_groups) for j, r, a in unit_merges]


@torch.no_grad()
def _fold(m: Member, merges: Sequence[tuple[int, int, float]]) -> int:
    """Fold removed inputs into representatives in one consumer; returns the pairs folded."""
    mod = m.module
    w = mod.weight
    idx = m.layer_index_map()
    src: list[int] = []
    dst: list[int] = []
    coef: list[float] = []
    n_in = w.shape[0] if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed else None
    n_in = n_in if n_in is not None else (w.shape[1] * getattr(mod, "groups", 1))
    for j, r, a in merges:
        lj, lr = idx.get(j), idx.get(r)
        if lj is None or lr is None or len(lj) != len(lr) or a == 0.0:
            continue
        if max(lj + lr) >= n_in:
            # Torch-Pruning's index mapping points past this layer's inputs (a pixel shuffle, an
            # einsum over the channels): no fold here; the rewrite's verification rejects the group.
            continue
        src += lj
        dst += lr
        coef += [a] * len(lj)
    if not src:
        return 0
    if isinstance(mod, nn.Linear) or (
        isinstance(mod, nn.modules.conv._ConvNd) and mod.groups == 1 and not mod.transposed
    ):
        s = torch.tensor(src, device=w.device)
        d = torch.tensor(dst, device=w.device)
        c = torch.tensor(coef, dtype=w.dtype, device=w.device)
        shape = [1, -1] + [1] * (w.dim() - 2)
        # index_add_ accumulates several removed inputs into one representative; sources (removed)
        # and destinations (kept) are disjoint, so every read sees the original weights.
        w.index_add_(1, d, w.index_select(1, s) * c.view(shape))
        return len(src)
    if isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed:
        ipg = mod.in_channels // mod.groups
        opg = mod.out_channels // mod.groups
        n = 0
        for cj, cr, a in zip(src, dst, coef, strict=True):
            gj, lj_ = divmod(cj, ipg)
            gr, lr_ = divmod(cr, ipg)
            if gj != gr:
                continue
            rows = slice(gj * opg, (gj + 1) * opg)
            w[rows, lr_] += a * w[rows, lj_]
            n += 1
        return n
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed and mod.groups == 1:
        for cj, cr, a in zip(src, dst, coef, strict=True):
            w[cr] += a * w[cj]
        return len(src)
    return 0


def apply_merges(group: ChannelGroup, channel_merges: Sequence[tuple[int, int, float]]) -> int:
    """Fold every removed channel into its representative in every consumer of the group."""
    return sum(_fold(m, channel_merges) for m in group.consumers())
