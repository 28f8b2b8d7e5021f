"""The shipped MNIST sample and the shipped baseline model."""

from __future__ import annotations

import hashlib

import pytest
import torch

from simprune import datasets, zoo

# Measured once on the shipped weights (see simprune/data/mnist_resnet.json); a regression in the
# loader, the normalisation or the weights falls below it.
BASELINE_ACCURACY_FLOOR = 0.97


def test_shipped_file_is_the_documented_one():
    with open(datasets.MNIST5K, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(datasets.os.path.join(datasets.DATA_DIR, "README.md")) as f:
        assert digest in f.read()


@pytest.mark.parametrize("split,n", [("train", 4000), ("test", 1000)])
def test_loader_shapes_and_balance(split, n):
    x, y = datasets.load_mnist5k(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert torch.equal(y.bincount(), torch.full((10,), n // 10))
    raw, _ = datasets.load_mnist5k(split, normalize=False)
    assert float(raw.min()) == 0.0 and float(raw.max()) == 1.0
    torch.testing.assert_close(x, (raw - datasets.MNIST_MEAN) / datasets.MNIST_STD)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_prefix_is_class_balanced(split):
    """The file is sorted by class: its first 1000 training images are only 0s, 1s and 2s, which made
    every calibration on ``x_train[:1000]`` (BatchNorm statistics, data merge) see three digits.
    The default order interleaves the classes; ``order="file"`` keeps the file's."""
    x, y = datasets.load_mnist5k(split)
    xf, yf = datasets.load_mnist5k(split, order="file")
    for n in (10, 100, 250, 1000):
        counts = y[:n].bincount(minlength=10)
        assert int(counts.max()) - int(counts.min()) <= 1, (n, counts)
    assert len(yf[: len(yf) // 4].unique()) < 10  # sorted by class: what the interleaving is for
    perm = torch.from_numpy(datasets.interleaved_order(yf.numpy()))
    assert torch.equal(x, xf[perm]) and torch.equal(y, yf[perm])
    assert sorted(perm.tolist()) == list(range(len(yf)))
    with pytest.raises(ValueError, match="order"):
        datasets.load_mnist5k(split, order="shuffled")


def test_split_is_disjoint():
    d = datasets._load_npz()
    tr, te = set(d["source_index_train"].tolist()), set(d["source_index_test"].tolist())
    assert not tr & te and len(tr | te) == 5000


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        datasets.load_mnist5k("val")


def test_model_shapes_and_size():
    m = zoo.MnistResNet()
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) == 174970


def test_shipped_baseline_accuracy():
    model = zoo.load_baseline()
    x, y = datasets.load_mnist5k("test")
    acc = zoo.evaluate(model, x, y)
    info = zoo.baseline_info()
    assert acc >= BASELINE_ACCURACY_FLOOR
    assert abs(acc - info["test_accuracy"]) < 1e-9  # the record describes these weights
    assert not model.training
