"""Synthetic data sets of linkage.md §8.1, shared by tests and benchmarks (no downloads)."""

from __future__ import annotations

import numpy as np


def gaussian(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def mixture(n: int, d: int, k: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4.0
    return centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))


def channel_like(
    n: int, d: int, seed: int = 0, frac: float = 0.05, noise: float = 1e-3
) -> np.ndarray:
    """Mean 0.5, sigma 0.05, with ``frac`` of rows near-copies of others (the cancellation stress)."""
    rng = np.random.default_rng(seed)
    x = 0.5 + 0.05 * rng.standard_normal((n, d))
    k = max(1, int(frac * n)) if n > 1 else 0
    dst = rng.choice(n, size=k, replace=False) if k else np.array([], dtype=int)
    for i in dst:
        j = (i + 1 + rng.integers(0, n - 1)) % n
        x[i] = x[j] + noise * rng.standard_normal(d)
    return x


def dead_duplicate(n: int, d: int, seed: int = 0) -> np.ndarray:
    """10 % all-zero rows and 10 % exact copies: ties at height 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    k = max(1, n // 10)
    idx = rng.permutation(n)
    x[idx[:k]] = 0.0
    if n < 2 * k + 1:  # too small for copies of distinct rows (n <= 2): the zero rows are the ties
        return x
    for i in idx[k : 2 * k]:
        x[i] = x[idx[2 * k + rng.integers(0, n - 2 * k)]]
    return x


def quantised(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    """A half-integer grid: massive ties."""
    return np.round(np.random.default_rng(seed).standard_normal((n, d)) * 2) / 2


def chain_1d(n: int) -> np.ndarray:
    """Points on a line with gaps growing linearly from 1 to 2: the worst case for RNN rounds."""
    gaps = np.linspace(1.0, 2.0, max(n - 1, 1))[: n - 1]
    return np.concatenate([[0.0], np.cumsum(gaps)])[:, None]


ALL = {
    "gaussian": lambda n, d=16, seed=0: gaussian(n, d, seed),
    "mixture": lambda n, d=16, seed=0: mixture(n, d, seed=seed),
    "channel_like": lambda n, d=64, seed=0: channel_like(n, d, seed),
    "dead_duplicate": lambda n, d=16, seed=0: dead_duplicate(n, d, seed),
    "quantised": lambda n, d=8, seed=0: quantised(n, d, seed),
    "chain_1d": lambda n, d=1, seed=0: chain_1d(n),
}
