"""Representatives and merge targets (simprune/pruning/merge.py) as properties.

Each cluster keeps its ``keep_per_cluster`` highest-energy units (ties: lowest index); every removed
unit is merged into a kept unit of its own cluster -- the one with the nearest descriptor when the
cluster keeps several -- with the documented coefficient (ls: <v_j, v_r>/<v_r, v_r>; sum: 1; none: 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simprune import cut_n_clusters
from simprune.pruning.merge import assign, choose_kept


def _case(n, d, k_clusters, seed):
    rng = np.random.default_rng(seed)
    v = torch.from_numpy(rng.normal(size=(n, d)))
    z = torch.from_numpy(sch.linkage(v.numpy(), "average"))
    labels = cut_n_clusters(z, k_clusters)
    return v, labels


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 24),
    d=st.integers(1, 5),
    frac=st.floats(0.1, 1.0),
    kpc=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["ls", "sum", None]),
)
def test_every_removed_unit_goes_to_the_nearest_kept_unit_of_its_cluster(
    n, d, frac, kpc, seed, mode
):
    v, labels = _case(n, d, max(1, int(frac * n)), seed)
    kept = choose_kept(v, labels, method="energy", keep_per_cluster=kpc)
    lab = labels.numpy()
    energy = (v * v).sum(1).numpy()
    kept_set = set(kept.tolist())
    # the kept units: per cluster, the kpc highest-energy units (ties: lowest index)
    for c in np.unique(lab):
        members = np.flatnonzero(lab == c)
        order = sorted(members, key=lambda i: (-energy[i], i))
        assert set(order[:kpc]) == kept_set & set(members.tolist())
    merges = assign(v, labels, kept, mode)
    removed = sorted(set(range(n)) - kept_set)
    assert sorted(j for j, _, _ in merges) == removed
    for j, r, a in merges:
        assert r in kept_set and lab[r] == lab[j]
        same = [k for k in kept_set if lab[k] == lab[j]]
        dist = {k: float(((v[k] - v[j]) ** 2).sum()) for k in same}
        assert dist[r] == min(dist.values())  # nearest (first in index order under a tie)
        assert r == min(k for k in same if dist[k] == dist[r])
        if mode is None:
            assert a == 0.0
        elif mode == "sum":
            assert a == 1.0
        else:
            assert a == pytest.approx(float(v[j] @ v[r]) / float(v[r] @ v[r]), rel=1e-12)


def test_nearest_not_first_kept_unit():
    """A pinned case: the removed unit 3 is nearest to kept unit 2, not to kept unit 0."""
    v = torch.tensor([[10.0, 0.0], [9.0, 0.0], [0.0, 9.5], [0.0, 8.0]], dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.int64)
    kept = choose_kept(v, labels, method="energy", keep_per_cluster=2)
    assert kept.tolist() == [0, 2]
    merges = {j: r for j, r, _ in assign(v, labels, kept, "ls")}
    assert merges == {1: 0, 3: 2}


def test_ls_coefficients_do_not_depend_on_the_thread_count():
    """torch's dot product splits long vectors across threads (at d = 16384 the float32 dots of 1
    and 2 threads differ in the last bits), which made a plan depend on torch.get_num_threads();
    the coefficients are float64 numpy dot products: bitwise the same, and the documented
    <v_j, v_r> / <v_r, v_r>."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 16384, generator=g)
    labels, kept = torch.arange(64) // 2, torch.arange(0, 64, 2)
    threads = torch.get_num_threads()
    try:
        out = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            out[t] = assign(v, labels, kept, "ls")
    finally:
        torch.set_num_threads(threads)
    assert out[1] == out[2]
    vd = v.double().numpy()
    for j, r, a in out[1]:
        assert r == j - 1
        assert a == pytest.approx(vd[j] @ vd[r] / (vd[r] @ vd[r]), rel=1e-12)
