"""The CUDA code compiles with nvcc on a machine without a GPU, so a kernel that
does not compile fails CI even here:

- each binding (csrc/cuda/*.cu, which instantiates every kernel it launches for
  every dtype it dispatches) against PyTorch's headers, for sm_80 and sm_90a,
  with every warning of ours an error; the objects cannot link here;
- each device header (csrc/cuda/*.cuh) alone, with no torch on the include
  path: device code must not depend on torch (bindings only wrap it).

Adding a kernel needs no edit here."""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
CUDA = ROOT / "csrc" / "cuda"
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def _nvcc(args: list[str]) -> None:
    result = subprocess.run([NVCC, "-std=c++20", "-O3", "--fmad=false", "--expt-relaxed-constexpr", "-Werror",
                             "all-warnings", *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("binding", sorted(p.name for p in CUDA.glob("*.cu")))
def test_binding_compiles(binding, arch, tmp_path):
    import torch.utils.cpp_extension as ext

    # The CPU wheel ships c10/cuda headers but not the one its CMake generates;
    # a stand-in lets nvcc compile against them. -isystem: torch's own warnings
    # are not ours to fix.
    shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [str(tmp_path / "shim"), *ext.include_paths(), sysconfig.get_paths()["include"]]
    _nvcc([f"-arch={arch}", "-D_GLIBCXX_USE_CXX11_ABI=1", *(x for p in includes for x in ("-isystem", p)),
           "-c", str(CUDA / binding), "-o", str(tmp_path / "binding.o")])


@needs_nvcc
@pytest.mark.parametrize("header", sorted(p.name for p in CUDA.glob("*.cuh")))
def test_device_header_needs_no_torch(header, tmp_path):
    unit = tmp_path / "unit.cu"
    unit.write_text(f'#include "{CUDA / header}"\n')
    _nvcc(["-arch=sm_90a", "-c", str(unit), "-o", str(tmp_path / "unit.o")])
