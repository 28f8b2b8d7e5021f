"""Channel descriptors: the closed form, its Monte-Carlo check, the variants and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import simprune


def _closed_form(w, gamma, beta):
    """D_ij = (b_i - b_j)^2 + g_i^2 + g_j^2 - 2 g_i g_j rho_ij, written out independently."""
    w = w.reshape(w.shape[0], -1).double()
    wn = w / w.norm(dim=1, keepdim=True)
    rho = wn @ wn.T
    g, b = gamma.double(), beta.double()
    return (
        (b[:, None] - b[None, :]) ** 2
        + g[:, None] ** 2
        + g[None, :] ** 2
        - 2 * g[:, None] * g[None, :] * rho
    )


def test_gaussian_descriptor_distance_is_closed_form():
    torch.manual_seed(1)
    w = torch.randn(12, 3, 3, 3, dtype=torch.float64)
    gamma, beta = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    v = simprune.channel_descriptors(w, gamma=gamma, beta=beta)
    assert v.shape == (12, 1 + 27) and v.dtype == torch.float64
    d = simprune.pairwise_distance(v, metric=simprune.metric_info("gaussian").pairwise)
    want = _closed_form(w, gamma, beta)
    want.fill_diagonal_(0)
    torch.testing.assert_close(d, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(simprune.channel_energy(v), gamma**2 + beta**2)


def test_closed_form_matches_monte_carlo():
    """metric.md §1: i.i.d. non-zero-mean inputs, batch-statistic BN; the closed form must match the
    empirical E[(y_i - y_j)^2] within sampling error."""
    g = torch.Generator().manual_seed(7)
    n_ch, fan_in, samples = 6, 9, 200_000
    w = torch.randn(n_ch, fan_in, generator=g, dtype=torch.float64)
    w[1] = 0.9 * w[0] + 0.1 * torch.randn(
        fan_in, generator=g, dtype=torch.float64
    )  # correlated pair
    gamma = torch.rand(n_ch, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(n_ch, generator=g, dtype=torch.float64) * 0.5
    x = 0.7 + 1.3 * torch.randn(samples, fan_in, generator=g, dtype=torch.float64)
    z = x @ w.T
    y = gamma * (z - z.mean(0)) / z.std(0, unbiased=False) + beta
    sq = (y[:, :, None] - y[:, None, :]) ** 2
    emp = sq.mean(0)
    se = sq.std(0) / samples**0.5
    v = simprune.channel_descriptors(w, gamma=gamma, beta=beta)
    d = simprune.pairwise_distance(v)
    err = (d - emp).abs()
    off = ~torch.eye(n_ch, dtype=torch.bool)
    assert float((err[off] / emp[off]).max()) < 0.02  # within 2 % everywhere
    assert bool((err <= 5 * se + 1e-9).all()), float((err / (se + 1e-12)).max())
    # and the test can tell a wrong model apart: dropping the correlation term is far off
    wrong = (beta[:, None] - beta[None, :]) ** 2 + gamma[:, None] ** 2 + gamma[None, :] ** 2
    assert float((wrong - emp)[off].abs().max()) > 20 * float(se.max())


def test_scale_invariance_and_zero_filter():
    w = torch.randn(4, 5, dtype=torch.float64)
    g, b = torch.ones(4, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64)
    v1 = simprune.channel_descriptors(w, gamma=g, beta=b)
    v2 = simprune.channel_descriptors(
        w * torch.tensor([[2.0], [0.1], [7.0], [1.0]]), gamma=g, beta=b
    )
    torch.testing.assert_close(v1, v2)
    w[2] = 0
    v = simprune.channel_descriptors(w, gamma=g, beta=b)
    assert torch.equal(v[2], torch.tensor([2.0, 0, 0, 0, 0, 0], dtype=torch.float64))


def test_variants():
    w = torch.randn(5, 2, 3)
    g, b, bias = torch.randn(5), torch.randn(5), torch.randn(5)
    v = simprune.channel_descriptors(w, metric="wasserstein", gamma=g, beta=b)
    torch.testing.assert_close(v, torch.stack([b, g.abs()], 1))
    v = simprune.channel_descriptors(w, metric="linear", bias=bias)
    torch.testing.assert_close(v, torch.cat([bias[:, None], w.reshape(5, -1)], 1))
    v = simprune.channel_descriptors(w, metric="linear")
    assert bool((v[:, 0] == 0).all())
    for m in ("cosine", "euclidean", "sqeuclidean"):
        v = simprune.channel_descriptors(w, metric=m)
        torch.testing.assert_close(v, w.reshape(5, -1))
        assert simprune.metric_info(m).pairwise == m
    assert simprune.channel_descriptors(w.half(), metric="cosine").dtype == torch.float32


def test_layer_descriptors_modules():
    conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    v = simprune.layer_descriptors(conv, bn)
    want = simprune.channel_descriptors(conv.weight, gamma=bn.weight, beta=bn.bias)
    torch.testing.assert_close(v, want)
    lin = nn.Linear(4, 6)
    torch.testing.assert_close(
        simprune.layer_descriptors(lin),
        simprune.channel_descriptors(lin.weight, metric="linear", bias=lin.bias),
    )
    v = simprune.layer_descriptors(conv, nn.BatchNorm2d(8, affine=False))
    assert bool((v[:, 0] == 0).all())
    assert not v.requires_grad
    with pytest.raises(TypeError, match="BatchNorm"):
        simprune.layer_descriptors(conv, nn.ReLU())
    with pytest.raises(TypeError, match="weight"):
        simprune.layer_descriptors(nn.ReLU())


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"weight": torch.randn(3, 2)}, ValueError, "metric='linear'"),
        (
            {"weight": torch.randn(3, 2), "gamma": torch.ones(2), "beta": torch.ones(3)},
            ValueError,
            "gamma",
        ),
        ({"weight": torch.zeros(0, 4), "metric": "linear"}, ValueError, "empty layer"),
        ({"weight": torch.tensor([[1.0, float("nan")]]), "metric": "linear"}, ValueError, "NaN"),
        (
            {
                "weight": torch.ones(2, 2),
                "metric": "gaussian",
                "gamma": torch.tensor([1.0, float("inf")]),
                "beta": torch.ones(2),
            },
            ValueError,
            "Inf",
        ),
        (
            {"weight": torch.ones(2, 2, dtype=torch.int64), "metric": "linear"},
            TypeError,
            "floating",
        ),
        (
            {"weight": torch.ones(2, 2), "metric": "l7"},
            ValueError,
            "unknown metric 'l7': expected a descriptor metric",
        ),
    ],
)
def test_errors(kwargs, err, match):
    w = kwargs.pop("weight")
    with pytest.raises(err, match=match):
        simprune.channel_descriptors(w, **kwargs)


def test_duplicate_channels_have_zero_distance():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight[3] = conv.weight[1] * 2.5  # same direction: same standardised response
    bn = nn.BatchNorm2d(4)
    v = simprune.layer_descriptors(conv, bn)
    d = simprune.pairwise_distance(v.double())
    assert d[1, 3] == pytest.approx(0.0, abs=1e-12)
    assert np.all(d.numpy()[np.triu_indices(4, 1)][[0, 1, 2, 3, 5]] > 1e-3)
