"""token_stats.cpp and denoise_stats.cpp (which samples through token_stats.cpp's
row entry point) built for the other CPU levels (setup.py's DMKERNELS_CPU_ARCH)
and checked against the reference: the portable path (generic at::vec and the
scalar noise of noise.h, for machines without AVX2 or ARM), the AVX2 path and
the AVX-512 path (where the CPU has them), whichever level the installed
extension was built for. Builds the two files alone (~30-60 s per level)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r"""
    import sys, torch
    from torch.utils.cpp_extension import load
    root, build, arch = sys.argv[1], sys.argv[2], sys.argv[3:]
    load(name="dmkernels_arch_check", sources=[f"{root}/csrc/cpu/token_stats.cpp", f"{root}/csrc/cpu/denoise_stats.cpp"],
         extra_cflags=["-O2", "-g0", "-ffp-contract=off"] + arch, extra_include_paths=[f"{root}/csrc"],
         build_directory=build, is_python_module=False, verbose=False)
    from dmkernels import _registry
    from dmkernels.reference import token_stats_reference
    _registry.define_ops("dmkernels")  # the schemas this build's kernels implement
    torch.manual_seed(0)
    # Rows over several 2048-column chunks, ends mid-group, float32 in place and copied.
    for shape, dtype, T, tempered in [((3, 5, 1000), torch.float32, 0.0, False), ((7, 4099), torch.bfloat16, 1.0, False),
                                      ((2, 33), torch.float16, 0.6, True), ((4, 1), torch.float32, 2.0, False),
                                      ((3, 6144), torch.float32, 0.0, False), ((3, 6144), torch.float32, 1.0, False),
                                      ((2, 4131), torch.bfloat16, 0.0, False), ((5, 2080), torch.float32, 0.7, False)]:
        logits = (torch.randn(shape) * 3).to(dtype)
        logits.view(-1, shape[-1])[0, 0] = float("-inf")
        ours = torch.ops.dmkernels.token_stats(logits, T, 99, 5, tempered, None)
        ref = token_stats_reference(logits, temperature=T, seed=99, offset=5, tempered_scores=tempered)
        assert torch.equal(ours[0], ref.token), (shape, dtype, T)
        for a, b in zip(ours[1:], ref[1:]):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, equal_nan=True)
    # Edge rows over 34 groups (the AVX-512 group pass takes 16 at a time): -inf,
    # NaN, ties, whole -inf groups, the mass in the short last group.
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(8, 1100) * 3).to(dtype)
        x[0] = float("-inf")
        x[1, 700] = float("nan")
        x[2, ::3] = float("-inf")
        x[3, 600:] = float("-inf")
        x[4] = x[4].round()
        x[5, 1090:] = 40.0
        x[6, 32:544] = float("-inf")
        for T, tempered in [(0.0, False), (1.0, False), (0.7, True), (0.7, False), (1e-20, False), (1e20, True)]:
            for seed in (0, 3, 2**40 + 3):
                ours = torch.ops.dmkernels.token_stats(x, T, seed, seed % 7, tempered, None)
                ref = token_stats_reference(x, temperature=T, seed=seed, offset=seed % 7, tempered_scores=tempered)
                assert torch.equal(ours[0], ref.token), (dtype, T, tempered, seed)
    # denoise_stats: tempered sampling, torch's division for the argmax and the
    # processed logits, frozen rows left as they were (poisoned here).
    from dmkernels.reference import denoise_stats_reference
    for shape, dtype, T in [((3, 5, 1000), torch.float32, 0.7), ((4, 4099), torch.bfloat16, 1.0),
                            ((2, 33), torch.float16, 1e-3), ((5, 2080), torch.float32, 3.0)]:
        logits = (torch.randn(shape) * 3).to(dtype)
        logits.view(-1, shape[-1])[0, :7] = float("-inf")
        frozen = torch.rand(shape[:-1]) < 0.3
        out = torch.full(shape, float("nan"), dtype=dtype)
        ref_out = out.clone()
        ours = torch.ops.dmkernels.denoise_stats(logits, T, None, 7, 2, None, out, frozen)
        ref = denoise_stats_reference(logits, T, seed=7, offset=2, processed_out=ref_out, frozen=frozen)
        assert torch.equal(ours[0], ref.token) and torch.equal(ours[1], ref.argmax), (shape, dtype, T)
        torch.testing.assert_close(ours[2], ref.entropy, rtol=2e-5, atol=2e-6, equal_nan=True)
        assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(out.nan_to_num(), ref_out.nan_to_num())
    print("ok")
""")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


# The flags setup.py passes for each level (setup.py is not importable: it builds on import).
ARCHES = {
    "generic": ([], set()),
    "avx2": (["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"], {"avx2", "fma", "f16c"}),
    "avx512": (["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
               {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}),
}


@pytest.mark.skipif(sys.platform != "linux", reason="builds with the system C++ compiler")
@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_cpu_build_matches_reference(tmp_path, arch):
    flags, needs = ARCHES[arch]
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    # DMKERNELS_NO_EXTENSION keeps the installed _C (same op names) out of this process.
    env = dict(os.environ, DMKERNELS_NO_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path), *flags], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
