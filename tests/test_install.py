"""`SIMPRUNE_BUILD_EXT=0 pip install --no-build-isolation .` gives a working pure-Python install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import os, sys, numpy as np, scipy.cluster.hierarchy as sch, torch
import simprune, simprune.kernels
assert simprune.__file__.startswith(sys.argv[1]), simprune.__file__
assert not simprune.has_c_extension(), "a pure-Python install must not have _C"
assert simprune.available_backends("linkage", "cpu") == ("torch",)
x = np.random.default_rng(0).standard_normal((30, 4))
z = simprune.linkage(torch.from_numpy(x), "average")
zs = sch.linkage(x, "average")
assert np.array_equal(z[:, [0, 1, 3]].numpy(), zs[:, [0, 1, 3]])
try:
    simprune.linkage(torch.from_numpy(x), backend="cpu")
except simprune.BackendUnavailableError as e:
    assert "build the C++ extension" in str(e), e
else:
    raise AssertionError("backend='cpu' must fail loudly without _C")
print("pure-python install ok")
"""


@pytest.mark.slow
def test_pure_python_install(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.o")
    for d in ("simprune", "kernels", "csrc"):
        shutil.copytree(os.path.join(ROOT, d), src / d, ignore=ignore)
    target = tmp_path / "site"
    env = dict(os.environ, SIMPRUNE_BUILD_EXT="0")
    env.pop("TRITON_INTERPRET", None)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    out = subprocess.run(
        [*pip, "--no-build-isolation", "--no-deps", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(target.glob("simprune/_C*")), (
        "the extension was built despite SIMPRUNE_BUILD_EXT=0"
    )
    # `python -S` skips .pth files, so the developer's editable install of simprune stays invisible:
    # only the pure-Python install and the third-party packages are importable.
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = os.pathsep.join([str(target), *site_packages])
    out = subprocess.run(
        [sys.executable, "-S", "-c", CHECK, str(target)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and "pure-python install ok" in out.stdout, out.stderr[-3000:]
