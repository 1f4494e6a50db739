"""Test setup: poison the compiled kernels' outputs (see csrc/checks.h) so an
unwritten element fails, run Triton in its interpreter where there is no GPU,
and give every test a fresh, seeded random stream."""
import os
import shutil
import zlib

os.environ.setdefault("DMKERNELS_POISON_OUTPUTS", "1")
# Without a GPU, Triton kernels run in its interpreter on CPU tensors; the
# variable must be set before triton is first imported.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import dmkernels  # noqa: E402,F401
from dmkernels import _extension  # noqa: E402

requires_extension = pytest.mark.skipif(not _extension.LOADED, reason=f"dmkernels._C: {_extension.REASON}")


@pytest.fixture(autouse=True)
def _seed(request):
    # A different but reproducible stream per test.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture
def tiles(monkeypatch):
    """Force the Triton token_stats tile width and number of vocabulary splits
    (None: the kernel's own choice), for the Triton token_stats tests."""
    from dmkernels.triton import token_stats as triton_token_stats

    def force(block_v=None, splits=None):
        monkeypatch.setattr(triton_token_stats, "BLOCK_V_OVERRIDE", block_v)
        monkeypatch.setattr(triton_token_stats, "SPLITS_OVERRIDE", splits)

    return force
