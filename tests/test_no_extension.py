"""With compiled code turned off, the package still works on its references and says so once."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import warnings, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import dmkernels
    from dmkernels.reference import token_stats_reference
    logits = torch.randn(2, 9, 31)
    out = dmkernels.token_stats(logits, temperature=1.0, seed=4)
    ref = token_stats_reference(logits, temperature=1.0, seed=4)
    assert torch.equal(out.token, ref.token)
    x = torch.full((2, 9), 31)  # mask id outside the sampled range [0, 31)
    sel = dmkernels.select_topk(out.confidence, torch.tensor([2, 3]), x == 31)
    changed, remaining = dmkernels.commit_(x, out.token, sel, 31)
    assert remaining.tolist() == [7, 6], remaining
    assert dmkernels.backends()["cpu"].startswith("turned off")
notes = [w for w in caught if "reference" in str(w.message)]
assert len(notes) == 1, [str(w.message) for w in caught]
assert "DMKERNELS_NO_EXTENSION" in str(notes[0].message)
print("ok")
"""


def test_reference_fallback_in_a_fresh_process():
    env = dict(os.environ, DMKERNELS_NO_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
