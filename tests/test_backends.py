"""Backend choice: the keyword, DMKERNELS_BACKEND, and what backends() reports."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dmkernels
from dmkernels import _extension

from conftest import requires_extension


def test_backends_reports_every_backend():
    report = dmkernels.backends()
    assert set(report) == {"cpu", "cuda", "triton", "reference"}
    assert report["reference"] == "available"
    assert report["cpu"] == ("available" if _extension.LOADED else _extension.REASON)
    if not torch.cuda.is_available():
        assert report["cuda"] != "available"


@requires_extension
def test_keyword_picks_the_backend():
    logits = torch.randn(3, 4, 301)
    native = dmkernels.token_stats(logits, temperature=1.0, seed=3, backend="native")
    reference = dmkernels.token_stats(logits, temperature=1.0, seed=3, backend="reference")
    assert torch.equal(native.token, reference.token)
    x = torch.full((3, 4), 300)
    eligible = x == 300
    for backend in ("native", "reference"):
        sel = dmkernels.select_topk(native.confidence, torch.tensor([1, 2, 3]), eligible, backend=backend)
        assert sel.sum().item() == 6


def test_unknown_or_unavailable_backend_is_a_clear_error():
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="backend must be one of"):
        dmkernels.token_stats(logits, backend="fast")
    with pytest.raises(RuntimeError, match="backend='native' is not available for meta"):
        dmkernels.token_stats(torch.empty(2, 5, device="meta"), backend="native")


def test_environment_variable_picks_the_backend():
    script = ("import dmkernels, torch, warnings; warnings.simplefilter('error');"
              "out = dmkernels.token_stats(torch.randn(2, 7))")
    env = dict(os.environ, DMKERNELS_BACKEND="reference")
    # The reference chosen on purpose is not a fallback: no warning, no error.
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    env["DMKERNELS_BACKEND"] = "nonsense"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "backend must be one of" in result.stderr
