"""torch.library ops: opcheck, torch.compile smoke tests, the backend registry and lean import."""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys

import pytest
import torch

import simprune
from simprune import backends, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _available(op: str, backend: str) -> bool:
    return backend in simprune.available_backends(op, "cpu")


def _dist_args():
    x = torch.randn(9, 4, dtype=torch.float64)
    return [
        (x, None, "sqeuclidean", False, None, "exact"),
        (x, None, "cosine", True, torch.float32, "exact"),
        (x.float(), torch.randn(5, 4), "euclidean", False, torch.float64, "exact"),
    ]


@pytest.mark.parametrize("backend", backends.BACKENDS)
def test_opcheck_pairwise_distance(backend):
    if not _available("pairwise_distance", backend):
        pytest.skip(f"pairwise_distance backend {backend!r} not available on CPU here")
    for args in _dist_args():
        torch.library.opcheck(ops.get("pairwise_distance", backend), args)


@pytest.mark.parametrize("backend", backends.BACKENDS)
def test_opcheck_linkage(backend):
    if not _available("linkage", backend):
        pytest.skip(f"linkage backend {backend!r} not available on CPU here")
    d = simprune.pairwise_distance(torch.randn(12, 3, dtype=torch.float64), condensed=True)
    for method in ("single", "average", "ward"):
        torch.library.opcheck(ops.get("linkage", backend), (d, method, "exact"))


def test_reference_ops_are_registered_for_cpu_and_cuda():
    for op in ("pairwise_distance_torch", "linkage_torch"):
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"simprune::{op}", key)


def test_torch_compile_smoke():
    x = torch.randn(10, 3, dtype=torch.float64)

    def f(x):
        d = torch.ops.simprune.pairwise_distance_torch(x, None, "euclidean", True, None, "exact")
        return torch.ops.simprune.linkage_torch(d, "average", "exact")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)


def test_registry_auto_and_explicit(monkeypatch):
    name, _ = backends.resolve("linkage", "auto", torch.device("cpu"))
    assert name == ("cpu" if _available("linkage", "cpu") else "torch")
    assert backends.resolve("linkage", "torch", torch.device("cpu"))[0] == "torch"
    with pytest.raises(simprune.BackendUnavailableError, match="runs on cuda"):
        backends.resolve("linkage", "cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend"):
        backends.resolve("linkage", "opencl", torch.device("cpu"))
    monkeypatch.setenv("SIMPRUNE_BACKEND", "torch")
    assert backends.resolve("linkage", "auto", torch.device("cpu"))[0] == "torch"
    info = simprune.backend_info()
    assert "linkage" in info["ops"] and info["torch"] == torch.__version__


def test_unavailable_backend_hint(monkeypatch):
    monkeypatch.setitem(
        backends._REGISTRY["linkage"],
        "cpu",
        backends.Impl(lambda *a: None, ("cpu",), lambda: False, backends._HINTS["cpu"]),
    )
    with pytest.raises(simprune.BackendUnavailableError, match="pip install --no-build-isolation"):
        backends.resolve("linkage", "cpu", torch.device("cpu"))
    # auto falls back quietly to the reference
    assert backends.resolve("linkage", "auto", torch.device("cpu"))[0] == "torch"


def test_n_from_condensed():
    assert [ops.n_from_condensed(m) for m in (0, 1, 3, 6, 4950)] == [1, 2, 3, 4, 100]
    with pytest.raises(ValueError, match="n\\(n-1\\)/2"):
        ops.n_from_condensed(5)


def test_lean_import():
    """`import simprune` must not initialise CUDA, import Triton or Torch-Pruning (which imports
    timm -> torchvision -> torch._dynamo -> triton when timm is installed), or load the kernels
    package; the pruning names still resolve on first use."""
    code = (
        "import sys, torch, simprune\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert 'torch_pruning' not in sys.modules, 'torch_pruning imported'\n"
        "assert 'simprune.kernels' not in sys.modules, 'kernels imported'\n"
        "assert callable(simprune.prune) and 'torch_pruning' in sys.modules\n"
        "print('lean')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "lean" in out.stdout, out.stderr


@pytest.mark.parametrize(
    "module",
    [
        "simprune",
        "simprune.distance",
        "simprune.hierarchy",
        "simprune.dendrogram",
        "simprune.similarity",
        "simprune.datasets",
    ],
)
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module != "simprune":
        assert result.attempted > 0, f"{module} has no runnable examples"


# ---- the backend policy (simprune.backends): one place decides ----------------------------------
def test_policy_registrations_come_from_the_op_table():
    for op, (_schema, names) in ops.SCHEMAS.items():
        for b in names:
            impl = backends._REGISTRY[op][b]
            assert impl.fn is not None and impl.supports is backends.SUPPORTS[op][b]
    # batched ops: every backend of the single op serves them, natively or as a loop over it
    for op, single in backends.LOOP_OF.items():
        assert set(backends._REGISTRY[op]) == set(backends._REGISTRY[single])
        for b, impl in backends._REGISTRY[op].items():
            native = b in ops.SCHEMAS[op][1]
            assert (impl.fn is not None) == native and (
                impl.loop_of == (None if native else single)
            )


def test_policy_auto_skips_quietly_explicit_refuses_loudly(monkeypatch):
    monkeypatch.delenv("SIMPRUNE_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # resolve never touches the device
    # centroid / median: the reference only
    assert backends.resolve("linkage", "auto", cpu, method="centroid")[0] == "torch"
    assert backends.resolve("linkage", "auto", cuda, method="median")[0] == "torch"
    with pytest.raises(
        simprune.BackendUnavailableError, match="does not implement method='median'"
    ):
        backends.resolve("linkage", "triton", cuda, method="median")
    # float32 storage: not the reference
    with pytest.raises(simprune.BackendUnavailableError, match="storage=torch.float32"):
        backends.resolve("linkage", "torch", cpu, storage=torch.float32)
    # strict on CUDA tensors: "auto" takes the reference, a named GPU backend is served
    assert backends.resolve("linkage", "auto", cuda, mode="strict")[0] == "torch"
    assert backends.resolve("linkage", "triton", cuda, mode="strict")[0] == "triton"
    if _available("linkage", "cpu"):
        assert backends.resolve("linkage", "auto", cpu, mode="strict")[0] == "cpu"
        assert backends.resolve("linkage", "auto", cpu, storage=torch.float32)[0] == "cpu"
    if backends.has_cuda_extension():
        assert backends.resolve("linkage", "auto", cuda, mode="exact")[0] == "cuda"
    # the environment variable is an explicit request
    monkeypatch.setenv("SIMPRUNE_BACKEND", "cpu")
    with pytest.raises(simprune.BackendUnavailableError, match="method='centroid'"):
        backends.resolve("linkage", "auto", cpu, method="centroid")
    with pytest.raises(simprune.BackendUnavailableError, match="method='centroid'"):
        simprune.linkage(torch.rand(6, dtype=torch.float64), "centroid")


def test_policy_batched_loops_and_engine_device(monkeypatch):
    monkeypatch.delenv("SIMPRUNE_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    name, impl = backends.resolve_impl("linkage_batched", "torch", cpu, method="ward")
    assert name == "torch" and impl.fn is not None
    if _available("linkage", "cpu"):
        name, impl = backends.resolve_impl("linkage_batched", "auto", cpu, method="ward")
        assert name == "cpu" and impl.fn is None and impl.loop_of == "linkage"
        ds = [torch.rand(10, dtype=torch.float64), torch.rand(1, dtype=torch.float64)]
        zs = simprune.linkage_batched(ds, "ward", backend="cpu")
        for d, z in zip(ds, zs, strict=True):
            torch.testing.assert_close(z, simprune.linkage(d, "ward", backend="torch"))
    with pytest.raises(KeyError, match="resolve_impl"):
        backends.resolve("linkage_batched", "cpu", cpu)
    # the cuda batched kernel takes problems up to max_n; wider ones its single op
    assert backends.SUPPORTS["linkage_batched"]["cuda"].max_n == 2048
    assert backends.engine_device("cpu", cuda) == cpu
    assert backends.engine_device("auto", cuda) == cuda
    monkeypatch.setenv("SIMPRUNE_BACKEND", "cpu")
    assert backends.engine_device("auto", cuda) == cpu
