"""Real data shipped inside the package (no downloads): 5000 MNIST digits with a fixed split.

See ``simprune/data/README.md`` for provenance and licence (CC BY-SA 3.0).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
MNIST5K = os.path.join(DATA_DIR, "mnist5k.npz")
# Mean and standard deviation of the training pixels (scaled to [0, 1]), used for normalisation.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@functools.cache
def _load_npz() -> dict[str, np.ndarray]:
    if not os.path.exists(MNIST5K):
        raise FileNotFoundError(
            f"{MNIST5K} is missing: the package was installed without its data files "
            "(reinstall simprune; package_data must include simprune/data/*.npz)"
        )
    with np.load(MNIST5K) as f:
        return {k: f[k] for k in f.files}


def load_mnist5k(
    split: str = "train", *, normalize: bool = True, order: str = "interleaved"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` float32 and labels ``(N,)`` int64 of the shipped MNIST sample.

    Parameters
    ----------
    split : {"train", "test"}
        4000 training / 1000 test images (stratified, fixed).
    normalize : bool
        Scale to [0, 1] and standardise with the usual MNIST mean/std; else raw [0, 1] values.
    order : {"interleaved", "file"}
        ``"interleaved"`` (default): the classes take turns (the k-th image of class 0, of class 1,
        ..., then the (k+1)-th), so *every prefix is class-balanced*: ``x[:1000]`` holds 100 images
        of each digit and is a fair calibration sample. ``"file"``: the order of the shipped file,
        which is sorted by class (``x[:1000]`` of the training split holds only 0s, 1s and 2s);
        ``scripts/train_baseline.py`` uses it to reproduce the shipped weights.

    >>> x, y = load_mnist5k("test")
    >>> tuple(x.shape), tuple(y.shape), int(y.bincount().min())
    ((1000, 1, 28, 28), (1000,), 100)
    >>> x, y = load_mnist5k("train")
    >>> y[:1000].bincount().tolist() == [100] * 10
    True
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if order not in ("interleaved", "file"):
        raise ValueError(f"order must be 'interleaved' or 'file', got {order!r}")
    data = _load_npz()
    x = torch.from_numpy(data[f"x_{split}"].astype(np.float32) / 255.0)[:, None]
    if normalize:
        x = (x - MNIST_MEAN) / MNIST_STD
    y = torch.from_numpy(data[f"y_{split}"].astype(np.int64))
    if order == "interleaved":
        idx = torch.from_numpy(interleaved_order(data[f"y_{split}"]))
        x, y = x[idx], y[idx]
    return x, y


def interleaved_order(labels: np.ndarray) -> np.ndarray:
    """A permutation in which the classes take turns: sorted by (rank of the sample within its class,
    class), the file order kept within a class. Any prefix of it is as class-balanced as possible."""
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))
