"""The CPU kernels' portable path (no AVX2: generic at::vec and the scalar noise
of noise.h) built separately and checked against the reference, so machines
without AVX2 (or ARM) get the same tokens. Builds token_stats alone (~40 s)."""
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
    root, build = sys.argv[1], sys.argv[2]
    load(name="dmkernels_generic_check", sources=[f"{root}/csrc/cpu/token_stats.cpp"],
         extra_cflags=["-O2", "-g0", "-ffp-contract=off"], extra_include_paths=[f"{root}/csrc"],
         build_directory=build, is_python_module=False, verbose=False)
    from dmkernels import _registry
    from dmkernels.reference import token_stats_reference
    _registry.define_ops("dmkernels")  # the schemas this build's kernels implement
    torch.manual_seed(0)
    for shape, dtype, T, tempered in [((3, 5, 1000), torch.float32, 0.0, False), ((7, 4099), torch.bfloat16, 1.0, False),
                                      ((2, 33), torch.float16, 0.6, True), ((4, 1), torch.float32, 2.0, False)]:
        logits = (torch.randn(shape) * 3).to(dtype)
        logits.view(-1, shape[-1])[0, 0] = float("-inf")
        ours = torch.ops.dmkernels.token_stats(logits, T, 99, 5, tempered, None)
        ref = token_stats_reference(logits, temperature=T, seed=99, offset=5, tempered_scores=tempered)
        assert torch.equal(ours[0], ref.token), (shape, dtype, T)
        for a, b in zip(ours[1:], ref[1:]):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, equal_nan=True)
    print("ok")
""")


@pytest.mark.skipif(sys.platform != "linux", reason="builds with the system C++ compiler")
def test_portable_cpu_path_matches_reference(tmp_path):
    # DMKERNELS_NO_EXTENSION keeps the installed _C (same op names) out of this process.
    env = dict(os.environ, DMKERNELS_NO_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
