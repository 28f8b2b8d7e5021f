"""Flat cuts of a dendrogram, cluster representatives and per-channel redundancy scores.

Labels are 0-based int64 tensors (scipy's ``fcluster`` labels minus one).
"""

from __future__ import annotations

import numpy as np
import scipy.cluster.hierarchy as sch
import torch

from ._checks import as_tensor


def _z_numpy(z) -> np.ndarray:
    z = as_tensor(z, "Z")
    zn = z.detach().cpu().to(torch.float64).numpy()
    if zn.ndim != 2 or zn.shape[1] != 4:
        raise ValueError(f"Z must have shape (n-1, 4), got {tuple(zn.shape)}")
    if zn.shape[0]:
        problem = _linkage_problem(zn)
        if problem:
            raise ValueError(f"Z is not a valid linkage matrix: {problem}")
    return zn


def _linkage_problem(zn: np.ndarray) -> str:
    """What is wrong with a linkage matrix ('' if valid); stricter than scipy's is_valid_linkage,
    which accepts some malformed one-row matrices."""
    n = zn.shape[0] + 1
    if not np.isfinite(zn).all():
        return "non-finite entries"
    ids = zn[:, :2]
    if (ids != np.round(ids)).any() or (zn[:, 3] != np.round(zn[:, 3])).any():
        return "cluster ids and counts must be integers"
    if (zn[:, 2] < 0).any():
        return "negative heights"
    row = np.arange(n - 1)
    if (ids < 0).any() or (ids >= (n + row)[:, None]).any():
        return "a row refers to a cluster that does not exist yet"
    used = ids.astype(np.int64).ravel()
    if np.unique(used).size != used.size:
        return "a cluster is merged more than once"
    size = np.ones(2 * n - 1, dtype=np.int64)
    for r in range(n - 1):
        size[n + r] = size[int(zn[r, 0])] + size[int(zn[r, 1])]
    if (size[n:] != zn[:, 3]).any():
        return "cluster sizes (column 3) do not match the merges"
    return ""


def _labels(lab: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(lab.astype(np.int64) - 1)


def cut_threshold(z, t: float) -> torch.Tensor:
    """Clusters whose cophenetic distance is at most ``t`` (scipy ``fcluster(Z, t, "distance")``).

    >>> import torch, simprune
    >>> z = simprune.linkage(torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64), "single")
    >>> simprune.cut_threshold(z, 2.0)
    tensor([0, 0, 1])
    """
    zn = _z_numpy(z)
    if zn.shape[0] == 0:
        return torch.zeros(1, dtype=torch.int64)
    return _labels(sch.fcluster(zn, t, criterion="distance"))


def cut_maxclust(z, k: int) -> torch.Tensor:
    """At most ``k`` clusters, scipy semantics (``fcluster(Z, k, "maxclust")``).

    Under tied heights scipy may return fewer than ``k`` clusters; :func:`cut_n_clusters` returns
    exactly ``k``.
    """
    zn = _z_numpy(z)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if zn.shape[0] == 0:
        return torch.zeros(1, dtype=torch.int64)
    return _labels(sch.fcluster(zn, k, criterion="maxclust"))


def cut_n_clusters(z, k: int) -> torch.Tensor:
    """Exactly ``k`` clusters: apply the first ``n - k`` merges of Z (ties resolved by row order).

    Equals ``cut_maxclust`` whenever the heights are distinct.
    """
    zn = _z_numpy(z)
    n = zn.shape[0] + 1
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n == 1:
        return torch.zeros(1, dtype=torch.int64)
    # Heights replaced by the row index (a valid monotone linkage): cutting below row n-k keeps
    # exactly the first n-k merges.
    zr = zn.copy()
    zr[:, 2] = np.arange(n - 1, dtype=np.float64)
    return _labels(sch.fcluster(zr, (n - k) - 0.5, criterion="distance"))


def representatives(
    labels,
    *,
    energy=None,
    distances=None,
    method: str = "energy",
    keep_per_cluster: int = 1,
) -> torch.Tensor:
    """Indices kept per cluster, sorted ascending.

    Parameters
    ----------
    labels : (n,) int cluster labels
    energy : (n,) channel energies (e.g. ``gamma^2 + beta^2``, the squared descriptor norm); needed by
        ``method="energy"``: the highest-energy channels of each cluster are kept (ties: lowest index).
    distances : (n, n) square distance matrix; needed by ``method="medoid"``: the channels with the
        smallest sum of distances to the rest of their cluster are kept.
    keep_per_cluster : how many per cluster (fewer when a cluster is smaller).
    """
    labels = as_tensor(labels, "labels").to(torch.int64).cpu()
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError("labels must be a non-empty 1-D tensor")
    if keep_per_cluster < 1:
        raise ValueError(f"keep_per_cluster must be >= 1, got {keep_per_cluster}")
    n = labels.numel()
    if method == "energy":
        if energy is None:
            raise ValueError("method='energy' needs energy=")
        score = as_tensor(energy, "energy").detach().cpu().to(torch.float64)
        if score.shape != (n,):
            raise ValueError(f"energy must have shape ({n},), got {tuple(score.shape)}")
        key = -score  # smaller key wins
    elif method == "medoid":
        if distances is None:
            raise ValueError("method='medoid' needs distances= (square matrix)")
        dm = as_tensor(distances, "distances").detach().cpu().to(torch.float64)
        if dm.shape != (n, n):
            raise ValueError(f"distances must have shape ({n}, {n}), got {tuple(dm.shape)}")
        same = labels[:, None] == labels[None, :]
        key = torch.where(same, dm, torch.zeros_like(dm)).sum(1)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'energy' or 'medoid'")
    # Sort by (label, key, index): np.lexsort sorts by the last key first.
    order = np.lexsort((np.arange(n), key.numpy(), labels.numpy()))
    lab_sorted = labels.numpy()[order]
    starts = np.r_[0, np.flatnonzero(np.diff(lab_sorted)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    kept = np.sort(order[rank < keep_per_cluster])
    return torch.from_numpy(kept.astype(np.int64))


def redundancy_scores(z, priority=None, *, return_order: bool = False):
    """Per-channel redundancy from a dendrogram: lower = prune first.

    Walking Z's merges in order, each cluster is represented by its highest-``priority`` channel (ties:
    lowest index). At a merge of height h the representative of the weaker side is removed and scores h;
    the last surviving representative scores +inf. Removing the channels of the k smallest scores (ties
    resolved by merge order, see ``return_order``) therefore equals cutting the tree into n - k clusters
    (:func:`cut_n_clusters`) and keeping each cluster's highest-priority channel.

    Parameters
    ----------
    z : (n-1, 4) linkage matrix
    priority : (n,) optional, e.g. channel energy; default: all equal (lowest index survives)
    return_order : also return the removal order (int64, length n-1: channel removed at each merge)
    """
    zn = _z_numpy(z)
    n = zn.shape[0] + 1
    pr = (
        np.zeros(n)
        if priority is None
        else as_tensor(priority, "priority").detach().cpu().to(torch.float64).numpy()
    )
    if pr.shape != (n,):
        raise ValueError(f"priority must have shape ({n},), got {pr.shape}")
    rep = np.empty(2 * n - 1, dtype=np.int64)
    rep[:n] = np.arange(n)
    scores = np.full(n, np.inf)
    removed = np.empty(n - 1, dtype=np.int64)
    for r in range(n - 1):
        a, b = rep[int(zn[r, 0])], rep[int(zn[r, 1])]
        # Keep the higher priority; on equal priority keep the lower index.
        if pr[a] > pr[b] or (pr[a] == pr[b] and a < b):
            win, lose = a, b
        else:
            win, lose = b, a
        rep[n + r] = win
        scores[lose] = zn[r, 2]
        removed[r] = lose
    s = torch.from_numpy(scores)
    if return_order:
        return s, torch.from_numpy(removed)
    return s
