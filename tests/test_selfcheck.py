"""``simprune selfcheck``: passes on this machine, and fails (naming the check) on a broken backend;
``simprune.testing`` (its data, tolerances and scipy oracles, shared with the tests): examples run, and
it imports no test-only package."""

from __future__ import annotations

import dataclasses
import doctest
import json
import subprocess
import sys

import pytest
import torch

import simprune.testing
from simprune import backends
from simprune.backends import available_backends
from simprune.cli import main
from simprune.selfcheck import format_rows, selfcheck


@pytest.fixture(scope="module")
def rows():
    return selfcheck(["cpu"])


def test_every_available_backend_passes_here(rows):
    bad = [r for r in rows if not r["ok"]]
    assert not bad, format_rows(bad)
    for op in ("pairwise_distance", "linkage", "linkage_batched"):
        for b in available_backends(op, "cpu"):
            assert any(r["op"] == op and r["backend"] == b for r in rows), (op, b)
    # Each backend's modes: strict where it exists, float32 storage where it exists.
    have = {(r["backend"], r["case"].split(", ")[1]) for r in rows if r["op"] == "linkage"}
    assert ("torch", "strict") in have and ("torch", "float32 storage") not in have
    if "cpu" in available_backends("linkage", "cpu"):
        assert ("cpu", "strict") in have and ("cpu", "float32 storage") in have


def _replace(monkeypatch, op: str, backend: str, fn):
    impl = backends._REGISTRY[op][backend]
    monkeypatch.setitem(backends._REGISTRY[op], backend, dataclasses.replace(impl, fn=fn))


def _wrap(monkeypatch, op: str, backend: str, change):
    orig = backends._REGISTRY[op][backend].fn
    _replace(monkeypatch, op, backend, lambda *a, **k: change(orig(*a, **k)))


def test_a_wrong_distance_is_caught(monkeypatch):
    _wrap(monkeypatch, "pairwise_distance", "torch", lambda out: out * (1 + 1e-5))
    rows = selfcheck(["cpu"], ["torch"])
    bad = [r for r in rows if r["op"] == "pairwise_distance" and not r["ok"]]
    assert len(bad) == 6 and all("max rel. error" in r["detail"] for r in bad)


def test_a_wrong_tree_or_height_is_caught(monkeypatch):
    def swap_first_merges(z):
        z = z.clone()
        z[[0, 1]] = z[[1, 0]]
        return z

    _wrap(monkeypatch, "linkage", "torch", swap_first_merges)
    bad = [r for r in selfcheck(["cpu"], ["torch"]) if not r["ok"]]
    assert {r["op"] for r in bad} == {"linkage"}
    assert any("merges differ" in r["detail"] for r in bad)
    assert any("not bitwise equal to scipy's under ties" in r["detail"] for r in bad)


def test_a_crash_is_a_failed_check(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    _replace(monkeypatch, "linkage_batched", "torch", boom)
    bad = [r for r in selfcheck(["cpu"], ["torch"]) if not r["ok"]]
    assert len(bad) == 1 and bad[0]["detail"] == "RuntimeError: kernel exploded"


def test_cli(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sc.json"
    assert (
        main(["selfcheck", "--device", "cpu", "--backend", "torch", "cpu", "--json", str(out)]) == 0
    )
    assert "0 failed" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["rows"] and "c_extension" in data["info"]
    _wrap(monkeypatch, "linkage", "torch", lambda z: z + 1.0)
    assert main(["selfcheck", "--device", "cpu", "--backend", "torch"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPU")
def test_cuda_without_a_gpu_is_a_failure():
    rows = selfcheck(["cuda"])
    assert len(rows) == 1 and not rows[0]["ok"] and "is_available() is False" in rows[0]["detail"]


@pytest.mark.gpu
def test_selfcheck_on_the_gpu():
    rows = selfcheck(["cuda"])
    bad = [r for r in rows if not r["ok"]]
    assert rows and not bad, format_rows(bad)


def test_testing_module_examples_run():
    res = doctest.testmod(simprune.testing, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 10 and res.failed == 0


def test_testing_module_imports_no_test_dependency():
    # selfcheck runs on users' machines: neither pytest nor hypothesis is installed there.
    code = (
        "import sys, simprune.selfcheck, simprune.testing\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest', 'hypothesis'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr
