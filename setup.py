"""Build script for simprune's compiled extension ``simprune._C``.

What gets built is decided here, never by ``torch.cuda.is_available()`` (a CPU-only build machine can
still compile CUDA code):

* ``SIMPRUNE_BUILD_EXT=0``  -> no compiled code at all; the package works through its reference path.
* otherwise the C++ CPU sources in ``csrc/cpu/`` are always built (OpenMP);
* the CUDA sources in ``csrc/cuda/`` (``*.cu`` for nvcc, ``*.cpp`` host code for the C++ compiler) are
  added when torch is a CUDA build *and* a real CUDA toolkit is found (``SIMPRUNE_BUILD_CUDA=0`` forces
  them off).  The ``nvcc`` on PATH may be a wrapper script
  outside the toolkit, so the toolkit root is asked from nvcc itself (``nvcc --dryrun`` prints it).
* target architectures: ``TORCH_CUDA_ARCH_LIST`` (default ``9.0``).

The Triton kernels live in ``kernels/`` and install as the subpackage ``simprune.kernels``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Every subpackage of simprune/, plus kernels/ installed as simprune.kernels, plus simprune/data (no
# Python in it: listed so that setuptools ships it as a data package instead of warning about it).
PACKAGES = find_packages(include=["simprune", "simprune.*"]) + ["simprune.kernels", "simprune.data"]
PACKAGE_DIR = {"simprune": "simprune", "simprune.kernels": "kernels"}


def _log(msg: str) -> None:
    print(f"[simprune setup] {msg}", file=sys.stderr)


def _env_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def _toolkit_root_from_nvcc(nvcc: str) -> str | None:
    """Ask nvcc where its toolkit lives (works through wrapper scripts)."""
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if not m:
        return None
    return os.path.dirname(m.group(1).strip())


def _is_toolkit(root: str | None) -> bool:
    return bool(root) and all(
        os.path.exists(os.path.join(root, p)) for p in ("bin/nvcc", "include/cuda_runtime.h")
    )


def find_cuda_toolkit() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if _is_toolkit(root):
            return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_root_from_nvcc(nvcc)
        if _is_toolkit(root):
            return root
    for root in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if _is_toolkit(root):
            return root
    return None


def _pip_cuda_include_dirs() -> list[str]:
    """Headers shipped by the nvidia-* wheels (cuBLAS etc. are missing from minimal toolkits)."""
    dirs = []
    for p in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include", "nvidia/cublas/include"):
            d = os.path.join(p, sub)
            if os.path.isdir(d):
                dirs.append(d)
    return dirs


def build_extensions():
    if _env_off("SIMPRUNE_BUILD_EXT"):
        _log("SIMPRUNE_BUILD_EXT=0: skipping the compiled extension (reference path only)")
        return [], {}

    want_cuda = not _env_off("SIMPRUNE_BUILD_CUDA")
    toolkit = None
    if want_cuda:
        toolkit = find_cuda_toolkit()
        if toolkit:
            # torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first.
            os.environ["CUDA_HOME"] = toolkit

    import torch
    from torch.utils import cpp_extension

    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # The kernels (nvcc) and the ops' host code (the C++ compiler: much faster than nvcc on ATen).
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cuda_host_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    with_cuda = bool(want_cuda and torch.version.cuda and toolkit and cuda_sources)
    if want_cuda and not with_cuda:
        why = (
            "torch is a CPU build"
            if not torch.version.cuda
            else "no CUDA toolkit found (set CUDA_HOME)"
            if not toolkit
            else "no CUDA sources"
        )
        _log(f"building without CUDA: {why}")

    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    define_macros: list[tuple[str, str | None]] = []
    # torch >= 2.10's ATen headers need C++20.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    link_args = ["-fopenmp"]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        include_dirs += _pip_cuda_include_dirs()
        _log(
            f"building CUDA sources with toolkit {toolkit} for arch "
            f"{os.environ['TORCH_CUDA_ARCH_LIST']}"
        )
        ext = cpp_extension.CUDAExtension(
            "simprune._C",
            cpu_sources + cuda_host_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=define_macros + [("SIMPRUNE_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                # No FMA contraction: the linkage arithmetic must round like the CPU code.
                "nvcc": ["-O3", "-std=c++20", "--fmad=false", "-lineinfo"],
            },
            extra_link_args=link_args,
        )
    else:
        ext = cpp_extension.CppExtension(
            "simprune._C",
            cpu_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_args,
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


ext_modules, cmdclass = build_extensions()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    # Real data and the trained baseline ship inside the package (no downloads at run time).
    package_data={"simprune.data": ["*.npz", "*.pt", "*.json", "*.md"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
