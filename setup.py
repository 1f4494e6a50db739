"""Build dmkernels: always the C++ CPU extension `dmkernels._C`; CUDA kernels in
csrc/cuda/ too when PyTorch has CUDA and a toolkit is present.

Environment:
  DMKERNELS_NO_EXTENSION=1   build no compiled code (the package runs on its
                             PyTorch reference ops and says so once)
  DMKERNELS_NO_CUDA=1        skip csrc/cuda/ even where it could be built
  DMKERNELS_CPU_ARCH=auto|avx512|avx2|generic
                             SIMD level of the CPU kernels (auto: the best of
                             AVX-512 (F/BW/DQ/VL) and AVX2+FMA this machine has,
                             since it builds for itself)

Install with the PyTorch already present:  pip install --no-build-isolation .
"""
import glob
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cpu_flags():
    """The flags of /proc/cpuinfo's first processor, empty off x86-64 Linux."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
# The AVX-512 build keeps AVX2 (the 8-lane sampling code of token_stats.cpp).
AVX512_FLAGS = ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"]


def _cpu_arch_flags():
    arch = os.environ.get("DMKERNELS_CPU_ARCH", "auto")
    if arch not in ("auto", "avx512", "avx2", "generic"):
        raise SystemExit(f"DMKERNELS_CPU_ARCH must be auto, avx512, avx2 or generic, got {arch!r}")
    if arch == "auto":
        have = _cpu_flags()
        if {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"} <= have:
            arch = "avx512"
        elif {"avx2", "fma", "f16c"} <= have:
            arch = "avx2"
    # at::vec picks its AVX2 / AVX-512 specialisations from the CPU_CAPABILITY macros.
    return {"avx512": AVX512_FLAGS, "avx2": AVX2_FLAGS}.get(arch, [])


def _needed_libraries(path):
    """The DT_NEEDED entries of a shared object (``readelf -d``), or None where
    readelf is missing or fails."""
    try:
        out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _links_shared_libstdcxx(cxx):
    """Whether ``cxx -shared`` links libstdc++ as a shared library: True, False,
    or None where the probe cannot tell (no compiler, no readelf)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "probe.cpp"), os.path.join(tmp, "probe.so")
        with open(src, "w") as f:
            f.write("#include <sstream>\n#include <string>\n"
                    "std::string probe(long v) { std::ostringstream s; s << v; return s.str(); }\n")
        try:
            subprocess.run(shlex.split(cxx) + ["-shared", "-fPIC", src, "-o", lib], capture_output=True,
                           check=True, timeout=300)
        except (OSError, subprocess.SubprocessError):
            return None
        needed = _needed_libraries(lib)
    return None if needed is None else any(name.startswith("libstdc++") for name in needed)


def _use_shared_libstdcxx():
    """PyTorch uses the shared libstdc++. An extension linked with its own static
    copy has a second std::locale, and formatting a number (an error message of
    a check, say) then segfaults: seen on a GPU machine whose Python was built by
    a GCC that links libstdc++ statically. Where the compiler the link would use
    (CXX, else the one Python was configured with) does that, build with a g++ on
    PATH that links it shared, and say so; where there is none, stop."""
    if not sys.platform.startswith("linux"):
        return
    configured = os.environ.get("CXX") or sysconfig.get_config_var("CXX")
    if not configured or _links_shared_libstdcxx(configured) is not False:
        return
    for cc, cxx in (("gcc", "g++"), ("cc", "c++")):
        found = shutil.which(cxx)
        if found and _links_shared_libstdcxx(found):
            print(f"dmkernels: {configured} links libstdc++ statically, which crashes beside PyTorch's "
                  f"shared libstdc++; building with {found} (CC={cc}, CXX={cxx})")
            os.environ["CC"], os.environ["CXX"] = cc, cxx
            return
    raise SystemExit(f"dmkernels: {configured} links libstdc++ statically, and no g++ on PATH links it "
                     "shared. PyTorch uses the shared libstdc++; an extension with its own copy crashes. "
                     "Set CC and CXX to a GCC that links libstdc++ shared.")


def _extensions():
    if _flag("DMKERNELS_NO_EXTENSION"):
        print("dmkernels: DMKERNELS_NO_EXTENSION=1, building no compiled code")
        return [], {}
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "dmkernels: PyTorch is not importable. Install it first (pip install torch), then build\n"
            "without build isolation: pip install --no-build-isolation .\n"
            "(or set DMKERNELS_NO_EXTENSION=1 to build without compiled kernels)"
        ) from None
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    _use_shared_libstdcxx()

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    use_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and bool(cuda_sources)
        and not _flag("DMKERNELS_NO_CUDA")
    )
    # No FMA contraction: the sampling arithmetic must round like the other backends.
    cxx = ["-O3", "-g0", "-ffp-contract=off", "-fno-math-errno"] + _cpu_arch_flags()
    extra = {"cxx": cxx}
    if use_cuda:
        extra["nvcc"] = ["-O3", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr"]
        ext = CUDAExtension("dmkernels._C", sources + cuda_sources, extra_compile_args=extra,
                            include_dirs=[os.path.join(ROOT, "csrc")])
    else:
        ext = CppExtension("dmkernels._C", sources, extra_compile_args=extra,
                           include_dirs=[os.path.join(ROOT, "csrc")])
    print(f"dmkernels: building _C for CPU{' and CUDA' if use_cuda else ''} with {' '.join(cxx)}")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="dmkernels",
    version="0.1.0",
    description="Fused sampling ops and schedulers for masked diffusion language models",
    packages=find_packages(include=["dmkernels", "dmkernels.*"]),
    # The shipped Sudoku denoisers and learned policies (dmkernels.tasks.sudoku.checkpoint_dir()).
    package_data={"dmkernels.tasks": ["checkpoints/*.json", "checkpoints/*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    # Tested ranges (README, "Versions"): the lower bounds are the oldest versions
    # the suite passed on, the upper bounds the next major versions. Exact tested
    # versions are pinned in constraints.txt.
    install_requires=[
        "torch>=2.13,<3",
        "transformers>=5.0,<6",
        "numpy>=1.26,<3",
        "safetensors>=0.4.3,<1",
        "tqdm>=4.60,<5",
    ],
    extras_require={
        "triton": ["triton>=3.6,<4"],
        "bench": ["matplotlib>=3.8,<4"],
        # dmkernels.compat.diffusers (BlockRefinementScheduler appeared in 0.42).
        "diffusers": ["diffusers>=0.42.1,<0.43"],
        "test": ["pytest>=8,<10", "pytest-benchmark>=5,<6", "hypothesis>=6.100,<7", "ninja"],
    },
)
