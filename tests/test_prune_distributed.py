"""The engine pass streamed in bounded batches and spread over ranks (simprune.pruning.distributed).

The distributed test spawns 3 gloo processes on the CPU once (each imports torch: a few seconds) and
runs every case in them: 3 ranks on the default group (a model with 2 groups, so one rank has none),
2 ranks on an explicit subgroup, an error on one rank raised on all, a model that differs across
ranks refused, and the all-reduce hook. Plans must equal the single-process plan's JSON bitwise and
every rank must return the same model. A hang fails after a timeout instead of blocking CI.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from datetime import timedelta

import numpy as np
import pytest
import torch
from torch import nn

import simprune
from simprune import engine
from simprune.pruning import distributed
from simprune.pruning.api import _trace
from simprune.pruning.stats import collect_stats

# ---- models (module level: the spawned ranks import them) -----------------------------------------


class _GatedMLP(nn.Module):
    def __init__(self, h: int, m: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(h, m, bias=False)
        self.up_proj = nn.Linear(h, m, bias=False)
        self.down_proj = nn.Linear(m, h, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, h: int, m: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(h)
        self.mlp = _GatedMLP(h, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class _Stack(nn.Module):
    """LLaMA-shaped: gated SiLU MLPs on a residual stream with RMSNorm."""

    def __init__(self, n_layers: int, h: int, m: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block(h, m) for _ in range(n_layers)])
        self.norm = nn.RMSNorm(h)
        self.head = nn.Linear(h, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def _stack(seed: int = 0, n_layers: int = 2) -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    torch.manual_seed(seed)
    model = _Stack(n_layers, 16, 48).eval()
    # Near-duplicate neurons so that the cut has real structure.
    with torch.no_grad():
        for layer in model.layers:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight[24:] = lin.weight[:24] + 0.01 * torch.randn(24, 16)
    ignored = [layer.mlp.down_proj for layer in model.layers]  # keep the residual stream
    return model, torch.randn(1, 4, 16), ignored


def _cnn(seed: int = 0) -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    widths = [3, 8, 12, 16, 10]
    for a, b in zip(widths, widths[1:], strict=False):
        bn = nn.BatchNorm2d(b)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
        layers += [nn.Conv2d(a, b, 3, padding=1), bn, nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 5)).eval()
    return model, torch.randn(1, 3, 8, 8), [model[-1]]


def _prune(model, x, ignored, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simprune.prune(
            model, x, macs_reduction=0.25, ignored_layers=ignored, progress=False, **kw
        )


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, t in model.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- the ranks -------------------------------------------------------------------------------------


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    res: dict = {}
    try:
        # 3 ranks, the default group (as under torchrun), 2 groups: one rank owns none.
        model, x, ignored = _stack()
        pruned, plan, report = _prune(model, x, ignored)
        res["stack"] = (plan.to_json(), _digest(pruned), report.engine)
        res["rank_of"] = distributed.rank_of(distributed.resolve_process_group())
        # 2 ranks on an explicit subgroup (every rank takes part in new_group).
        sub = dist.new_group([0, 1])
        if rank == 2:  # not a member of the subgroup
            try:
                _prune(*_cnn(), process_group=sub)
            except ValueError as e:
                res["not_member"] = str(e)
        if rank < 2:
            model, x, ignored = _cnn()
            pruned, plan, report = _prune(model, x, ignored, process_group=sub)
            res["cnn"] = (plan.to_json(), _digest(pruned), report.engine)
            # Calibration data split over the ranks: statistics combined, BatchNorm synchronised.
            data = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(5))
            shard = data[rank::2]
            pruned, plan, _ = _prune(model, x, ignored, process_group=sub, calibration_data=shard)
            res["cnn_data"] = (plan.to_json(), _digest(pruned))
            # A share that fails the statistics pass on one rank fails it on every rank.
            bad = shard.clone()
            if rank == 1:
                bad[0, 0, 0, 0] = float("nan")
            try:
                _prune(*_cnn(), process_group=sub, calibration_data=bad)
            except ValueError as e:
                res["bad_share"] = str(e)
            # The combination itself, exact in float64 (a float64 model: float64 products).
            m64, x64, d64 = model.double(), x.double(), data.double()
            _, groups, _, _ = _trace(m64, m64, x64, [m64[-1]])
            full = collect_stats(m64, groups, d64, x64)
            both = distributed.all_reduce_stats(collect_stats(m64, groups, d64[rank::2], x64), sub)
            res["stats"] = [
                (
                    both[k].n == full[k].n,
                    float((both[k].mean - full[k].mean).abs().max() / full[k].mean.abs().max()),
                    float((both[k].cov - full[k].cov).abs().max() / full[k].cov.abs().max()),
                )
                for k in sorted(full)
            ]
            res["stats_keys"] = sorted(both) == sorted(full) != []
        # A model that differs across ranks is refused on every rank.
        model, x, ignored = _stack(seed=rank)
        try:
            _prune(model, x, ignored)
        except ValueError as e:
            res["mismatch"] = str(e)
        # An error in one rank's engine pass is raised on every rank (nobody waits forever).
        real = distributed.group_descriptors

        def broken(group, metric):
            if rank == 0:
                raise ValueError("descriptor failure on rank 0")
            return real(group, metric)

        distributed.group_descriptors = broken  # type: ignore[assignment]
        try:
            model, x, ignored = _stack()
            _prune(model, x, ignored)
        except ValueError as e:
            res["error"] = str(e)
        finally:
            distributed.group_descriptors = real
        # The statistics hook: sums over the ranks, in place.
        t = torch.tensor([rank + 1.0, 2.0 * rank], dtype=torch.float64)
        distributed.all_reduce_sums([t])
        res["sums"] = t.tolist()
    finally:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        try:
            # Nobody tears gloo down while a peer still talks to it: one CI run (2026-11-30) lost a
            # rank to SIGABRT ("terminate called without an active exception"), not reproduced
            # in 7 runs since, 4 of them under load.
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(world: int, out_dir: str, timeout: float = 240.0) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _rank, args=(world, _free_port(), out_dir), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {world} ranks did not finish within {timeout:.0f} s (a hang?)")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    _spawn(3, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(3)]


def test_three_ranks_plan_equals_single_process_with_an_idle_rank(ranks):
    model, x, ignored = _stack()
    pruned, plan, report = _prune(model, x, ignored, process_group=False)
    assert report.engine["world_size"] == 1 and plan.n_removed > 0
    want = (plan.to_json(), _digest(pruned))
    for r, res in enumerate(ranks):
        got_json, got_digest, eng = res["stack"]
        assert got_json == want[0], f"rank {r}: plan differs from the single-process plan"
        assert got_digest == want[1], f"rank {r}: pruned model differs"
        assert eng["world_size"] == 3 and eng["rank"] == r
        assert sorted(eng["per_rank_groups"]) == [0, 1, 1]  # 2 groups over 3 ranks
        assert res["rank_of"] == r  # progress lines come from rank 0 only


def test_two_ranks_on_a_subgroup_plan_equals_single_process(ranks):
    model, x, ignored = _cnn()
    pruned, plan, report = _prune(model, x, ignored)
    assert plan.n_removed > 0 and len(plan.groups) >= 3
    for r in (0, 1):
        got_json, got_digest, eng = ranks[r]["cnn"]
        assert got_json == plan.to_json(), f"rank {r}: plan differs from the single-process plan"
        assert got_digest == _digest(pruned)
        assert eng["world_size"] == 2 and sum(eng["per_rank_groups"]) == len(plan.groups)
        assert min(eng["per_rank_groups"]) >= 1
    assert "cnn" not in ranks[2]
    assert "rank 2 is not a member" in ranks[2]["not_member"]


def test_calibration_statistics_are_combined_over_ranks(ranks):
    # Each of 2 ranks measured half of the data: the combined statistics are those of all of it.
    for r in (0, 1):
        assert ranks[r]["stats_keys"]
        for same_n, err_mean, err_cov in ranks[r]["stats"]:
            assert same_n and err_mean < 1e-12 and err_cov < 1e-12
    # ... so both ranks plan the same data merge and return the same model (BatchNorm included).
    assert ranks[0]["cnn_data"] == ranks[1]["cnn_data"]
    assert ranks[0]["cnn_data"][0] != ranks[0]["cnn"][0]  # the data changed the plan (merge="data")
    for r in (0, 1):
        assert "NaN" in ranks[r]["bad_share"], ranks[r]["bad_share"]


def test_errors_reach_every_rank(ranks):
    for r, res in enumerate(ranks):
        assert "rank 1's weights differ" in res["mismatch"], r
        assert "descriptor failure on rank 0" in res["error"], r


def test_all_reduce_sums_hook(ranks):
    for res in ranks:
        assert res["sums"] == [6.0, 6.0]
    t = torch.ones(2)
    distributed.all_reduce_sums([t])  # a single process: unchanged
    assert t.tolist() == [1.0, 1.0]
    stats: dict = {}
    assert distributed.all_reduce_stats(stats) is stats
    bn = nn.BatchNorm1d(3)
    distributed.broadcast_buffers(bn)
    assert bn.running_var.tolist() == [1.0, 1.0, 1.0]


# ---- single process ----------------------------------------------------------------------------------


def test_assign_ranks_greedy_by_cost():
    assert distributed.assign_ranks([5, 4, 3, 3, 3], 2) == [0, 1, 1, 0, 1]
    assert distributed.assign_ranks([1, 1], 3) == [0, 1]  # rank 2 gets nothing
    assert distributed.assign_ranks([], 4) == []
    assert distributed.assign_ranks([7, 2, 2, 2], 1) == [0, 0, 0, 0]
    costs = list(np.random.default_rng(0).integers(1, 10**6, 40))
    owner = distributed.assign_ranks(costs, 3)
    loads = [sum(c for c, o in zip(costs, owner, strict=True) if o == r) for r in range(3)]
    assert max(loads) - min(loads) <= max(costs)  # greedy LPT bound
    with pytest.raises(ValueError, match="world_size"):
        distributed.assign_ranks([1], 0)


def test_group_cost_is_n_squared_times_d():
    model, x, ignored = _stack(n_layers=1)
    _, groups, _, _ = _trace(model, model, x, ignored)
    (g,) = groups
    # gate and up rows: 16 inputs + 1 each, 48 neurons
    assert distributed.group_cost(g) == 48**2 * (17 + 17)


def test_resolve_process_group_single_process():
    assert distributed.resolve_process_group(None) is None
    assert distributed.rank_of(None) == 0
    assert distributed.resolve_process_group(False) is None
    with pytest.raises(ValueError, match="not initialised"):
        distributed.resolve_process_group(object())


@pytest.mark.parametrize("batch_bytes", [1, 10**6])
def test_streamed_batches_give_the_same_dendrograms(batch_bytes):
    model, x, ignored = _cnn()
    _, groups, _, _ = _trace(model, model, x, ignored)
    whole = distributed.engine_pass(groups, "gaussian", "average", batch_bytes=2**40)
    part = distributed.engine_pass(groups, "gaussian", "average", batch_bytes=batch_bytes)
    assert whole.stats["launches"] == 1
    sizes = [
        engine.working_set_bytes(int(v.shape[0]), int(v.shape[1]), v.element_size(), "cpu")
        for v in whole.vs
        if v is not None
    ]
    assert whole.stats["peak_bytes"] == sum(sizes)
    if batch_bytes == 1:  # every group alone: the peak is the largest group's working set
        assert part.stats["launches"] == len(groups)
        assert part.stats["peak_bytes"] == max(sizes)
    assert part.stats["measured"] == "estimate from sizes"
    for a, b in zip(whole.zs, part.zs, strict=True):
        assert a.tobytes() == b.tobytes()
    assert whole.scales == part.scales
    with pytest.raises(ValueError, match="batch_bytes"):
        distributed.engine_pass(groups, "gaussian", "average", batch_bytes=0)


def test_prune_reports_the_engine_pass():
    model, x, ignored = _cnn()
    _, _, report = _prune(model, x, ignored)
    e = report.engine
    assert e["peak_bytes"] > 0 and e["launches"] == 1 and e["world_size"] == 1
    assert e["measured"] == "estimate from sizes" and e["device"] == "cpu"
    assert "engine pass: peak" in str(report)


def test_working_set_bytes():
    n, d = 100, 7
    pairs = n * (n - 1) // 2
    cpu = engine.working_set_bytes(n, d, 4, "cpu")
    assert cpu == n * d * 4 + pairs * 4 + 2 * pairs * 8 + (n - 1) * 32
    assert engine.working_set_bytes(n, d, 4, "cuda") > cpu  # the square GPU matrix
    assert engine.working_set_bytes(1, d, 4, "cpu") == d * 4


@pytest.mark.gpu
def test_engine_pass_measures_cuda_peak():
    model, x, ignored = _cnn()
    _, groups, _, _ = _trace(model, model, x, ignored)
    for g in groups:
        for m in g.producers():
            m.module.cuda()
    ep = distributed.engine_pass(groups, "gaussian", "average")
    assert ep.stats["measured"] == "torch.cuda.max_memory_allocated"
    assert ep.stats["peak_bytes"] > 0


def test_engine_device_takes_host_descriptors_to_a_gpu_backend():
    from simprune.backends import engine_device

    cpu = torch.device("cpu")
    assert engine_device("cpu", cpu) == cpu
    assert engine_device("auto", cpu) == cpu
    gpu = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else cpu
    assert engine_device("cuda", cpu) == gpu  # a model in host memory, planned on the GPU
    assert engine_device("triton", cpu) == gpu
