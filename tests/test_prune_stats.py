"""The statistics pass's fast path (simprune/pruning/stats.py, issue 15): every distinct consumer
tensor counted once even when the allocator reuses freed memory, the Gram's upper blocks and the
chunking against a brute-force covariance, and the float32 products against the float64 path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simprune.pruning import stats as stats_mod
from simprune.pruning.groups import build_dependency_graph, collect_groups
from simprune.pruning.stats import _gram_edges, _row_chunks, collect_stats


def _groups(model, x):
    return collect_groups(build_dependency_graph(model, x), model)[0]


def _brute(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.to(torch.float64)
    mu = z.mean(0)
    zc = z - mu
    return mu, zc.T @ zc / z.shape[0]


class _Stream(nn.Module):
    """A residual stream of C channels read by the first conv of blocks 1-4 and by the head: five
    distinct tensors of one shape per batch (each block's output replaces the last, whose memory
    the allocator hands to the next one). Block 0 has a projection shortcut reading the same tensor
    as its first conv (counted once)."""

    def __init__(self, c: int = 8, blocks: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.a = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks))
        self.b = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks))
        self.proj = nn.Conv2d(c, c, 1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, (a, b) in enumerate(zip(self.a, self.b, strict=True)):
            y = b(torch.relu(a(x)))
            x = (self.proj(x) if i == 0 else x) + y
        return self.head(x)


def _inputs(model, names, data, batch):
    got: dict[str, list[torch.Tensor]] = {}
    hs = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, n=n: got.setdefault(n, []).append(a[0].detach().clone())
        )
        for n in names
    ]
    with torch.no_grad():
        for b in torch.split(data, batch):
            model(b)
    for h in hs:
        h.remove()
    return [torch.cat(got[n]).permute(0, 2, 3, 1).reshape(-1, 8) for n in names]


def test_residual_stream_counts_every_distinct_tensor_once():
    """The stream group's statistics pool the inputs of a.1-a.4 and head (5 tensors per batch): an
    address-only check skipped the block outputs that landed at a freed tensor's address (about
    half of ResNet-50's residual tensors). The stem's output, read by a.0 and proj, counts once."""
    model = _Stream().double().eval()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    data = torch.randn(20, 3, 12, 12, dtype=torch.float64)
    groups = _groups(model, x)
    st = collect_stats(model, groups, data, x, batch_size=5)
    stream = next(g for g in groups if "head" in [m.name for m in g.consumers()])
    names = ["a.1", "a.2", "a.3", "a.4", "head"]
    s = st[stream.root_name]
    z = torch.cat(_inputs(model, names, data, 5))
    assert s.n == z.shape[0] == 5 * 20 * 12 * 12
    assert sorted(s.consumers) == names
    mu, cov = _brute(z)
    torch.testing.assert_close(s.mean, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.cov, cov, rtol=1e-9, atol=1e-12)
    s = st["stem"]
    assert s.n == 20 * 12 * 12 and len(s.consumers) == 1  # a.0 and proj read one tensor
    mu, cov = _brute(_inputs(model, ["a.0"], data, 5)[0])
    torch.testing.assert_close(s.cov, cov, rtol=1e-9, atol=1e-12)


def test_inplace_change_between_reads_is_a_new_tensor():
    """The same storage modified in place between two consumers' reads is read twice."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 3)
            self.c = nn.Linear(6, 3)

        def forward(self, x):
            h = self.a(x)
            y = self.b(h)
            h.mul_(2.0)
            return y + self.c(h)

    model = M().double().eval()
    data = torch.randn(30, 4, dtype=torch.float64)
    st = collect_stats(model, _groups(model, data[:1]), data, data[:1])["a"]
    with torch.no_grad():
        h = model.a(data)
    mu, cov = _brute(torch.cat([h, 2 * h]))
    assert st.n == 60
    torch.testing.assert_close(st.cov, cov, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(st.mean, mu, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", [255, 300, 520, 2100])
def test_gram_blocks_and_chunks_equal_brute_force(monkeypatch, c):
    """Widths with 1, 2, 4 and 16 column blocks (only the blocks on and above the diagonal are
    multiplied, then mirrored), chunks of 37 samples cutting through the images (the leading
    dimensions are split, no copy), a flatten block reader (k > 1) and a mean far from 0: float64
    activations give the brute-force covariance to 1e-9."""
    monkeypatch.setattr(stats_mod, "CHUNK_ROWS", 37)
    model = nn.Sequential(nn.Conv2d(2, c, 1), nn.Conv2d(c, 3, 1), nn.Flatten(), nn.Linear(75, 2))
    model = model.double().eval()
    with torch.no_grad():
        model[0].bias.add_(50.0)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    data = torch.randn(12, 2, 5, 5, dtype=torch.float64)
    groups = _groups(model, x)
    st = collect_stats(model, groups, data, x, batch_size=5)
    with torch.no_grad():
        z0 = model[0](data)
        z1 = model[1](z0)
    mu, cov = _brute(z0.permute(0, 2, 3, 1).reshape(-1, c))
    torch.testing.assert_close(st["0"].mean, mu, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st["0"].cov, cov, rtol=1e-9, atol=1e-10)
    assert torch.equal(st["0"].cov, st["0"].cov.T)
    # The flatten-reached Linear: channel j's 25 positions are samples of channel j.
    mu, cov = _brute(z1.reshape(12, 3, 25).permute(0, 2, 1).reshape(-1, 3))
    torch.testing.assert_close(st["1"].mean, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(st["1"].cov, cov, rtol=1e-9, atol=1e-12)


def test_row_chunks_cover_the_samples_in_order():
    z = torch.arange(4 * 5 * 6 * 3).reshape(4, 5, 6, 3)
    for step in (1, 7, 30, 31, 1000):
        parts = list(_row_chunks(z.movedim(-1, 1).movedim(1, -1), step))
        assert all(p.numel() // 3 <= max(step, 1) for p in parts)
        assert torch.equal(torch.cat([p.reshape(-1, 3) for p in parts]), z.reshape(-1, 3))
    assert _gram_edges(255) == [0, 255]
    assert _gram_edges(2049) == [2049 * i // 16 for i in range(17)]


def test_float32_products_against_the_float64_path(monkeypatch):
    """A float32 model (BN + ReLU, means up to ~10 spreads): the default float32 products, summed in
    float64 around the first batch's mean over chunks of up to CHUNK_ROWS samples, against float64
    products of the same activations. Documented tolerance: covariance within 5e-5 sd_i sd_j, mean
    within 1e-5 sd (measured: ~2e-5 / 4e-6 on ResNet-50 with 65536-sample chunks, ~1e-6 here)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 300, 3, padding=1),
        nn.BatchNorm2d(300),
        nn.ReLU(),
        nn.Conv2d(300, 8, 1),
    ).eval()
    with torch.no_grad():
        model[1].bias.uniform_(0.0, 5.0)
        model[1].running_var.uniform_(0.05, 2.0)
    x = torch.randn(1, 3, 16, 16)
    data = torch.randn(48, 3, 16, 16)
    groups = _groups(model, x)
    monkeypatch.setattr(stats_mod, "CHUNK_ROWS", 4096)
    f32 = collect_stats(model, groups, data, x, batch_size=16)["0"]
    f64 = collect_stats(model, groups, data, x, batch_size=16, product_dtype=torch.float64)["0"]
    assert f32.product_dtype == torch.float32 and f64.product_dtype == torch.float64
    assert f32.n == f64.n == 48 * 256
    sd = f64.cov.diagonal().sqrt()
    assert float((f64.mean / sd).abs().max()) > 5  # the shift matters
    assert float(((f32.cov - f64.cov) / torch.outer(sd, sd)).abs().max()) < 5e-5
    assert float(((f32.mean - f64.mean) / sd).abs().max()) < 1e-5
    # float64 products equal the brute-force covariance of the float32 activations.
    with torch.no_grad():
        z = model[:3](data).permute(0, 2, 3, 1).reshape(-1, 300)
    mu, cov = _brute(z)
    torch.testing.assert_close(f64.cov, cov, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(f64.mean, mu, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="product_dtype must be"):
        collect_stats(model, groups, data, x, product_dtype=torch.float16)
