"""scripts/gpu_check.sh without a GPU: its dry run (GPU_CHECK_DRY_RUN=1) must find every step's
script or module, every flag the step passes, every pytest file, and (where ``make wheelhouse`` has
filled wheelhouse/) wheels that install for CPython 3.12 -- so that the one prepared run on a GPU
machine does not fail on a renamed flag or file. Nothing is downloaded, built or run on a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
STEPS = ["build", "selfcheck", "pytest_linkage", "bench_distance", "bench_linkage_gpu"]
STEPS += ["pytest_gpu", "bench_wide", "bench_model", "bench_latency", "record"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry_run(tmp_path, script=SCRIPT, steps=None, extra_env=None):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    env.pop("GPU_CHECK_PACK", None)
    if steps:
        env["GPU_CHECK_STEPS"] = " ".join(steps)
    env.update(extra_env or {})
    return subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=300)


def test_every_step_resolves(tmp_path):
    out = _dry_run(tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    for name in STEPS:
        assert f"[gpu_check] {name}: resolves" in out.stdout, (name, out.stdout[-4000:])
    assert (tmp_path / "out" / "results.md").exists()


def test_a_renamed_flag_fails_the_dry_run(tmp_path):
    # A copy of the script in a tree whose benchmark no longer defines the flag the script passes.
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / "benchmarks").mkdir()
    for name in os.listdir(os.path.join(ROOT, "benchmarks")):
        src = os.path.join(ROOT, "benchmarks", name)
        if name == "bench_distance.py":
            text = open(src).read().replace('"--markdown"', '"--md"')
            (tree / "benchmarks" / name).write_text(text)
        elif os.path.isfile(src):
            os.symlink(src, tree / "benchmarks" / name)
    for name in ("simprune", "tests", "setup.py"):
        os.symlink(os.path.join(ROOT, name), tree / name)
    shutil.copy(SCRIPT, tree / "scripts" / "gpu_check.sh")
    out = _dry_run(tmp_path, str(tree / "scripts" / "gpu_check.sh"), ["bench_distance", "record"])
    assert out.returncode != 0
    assert "bench_distance: DRY RUN FAILED -- flag --markdown not defined" in out.stdout, out.stdout
    assert "record: resolves" in out.stdout


def test_missing_packages_skip_their_steps_with_a_clear_line(tmp_path):
    # As on the device without its wheelhouse: Torch-Pruning and fastcluster cannot be found.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch_pruning', 'fastcluster'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    pp = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    steps = ["bench_linkage_gpu", "bench_model", "pytest_gpu", "bench_distance"]
    out = _dry_run(tmp_path, steps=steps, extra_env={"PYTHONPATH": pp})
    assert out.returncode == 0, out.stdout[-4000:]
    assert "bench_linkage_gpu: SKIPPED -- missing Python package(s): fastcluster" in out.stdout
    assert "bench_model: SKIPPED -- missing Python package(s): torch_pruning" in out.stdout
    assert "pytest_gpu: torch_pruning missing" in out.stdout
    assert "bench_distance: resolves" in out.stdout and "pytest_gpu: resolves" in out.stdout
