"""The compiled extension uses PyTorch's shared libstdc++, never a static copy of
its own: with two copies in one process, formatting a number in a check's
message segfaulted (the first GPU run, a Python built by a GCC that links
libstdc++ statically; setup.py now builds with a g++ that links it shared)."""
from __future__ import annotations

import shutil
import sys

import pytest

from dmkernels import _extension
from dmkernels.bench.gpu_check import needed_libraries


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared objects")
@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf")
def test_extension_links_libstdcxx_shared():
    from pathlib import Path

    import dmkernels

    if not _extension.LOADED:
        pytest.skip("no compiled extension (DMKERNELS_NO_EXTENSION)")
    path = Path(dmkernels._C.__file__)
    needed = needed_libraries(path)
    assert needed is not None, f"readelf could not read {path}"
    assert any(name.startswith("libstdc++") for name in needed), needed


def test_checks_format_numbers_in_messages():
    # What crashed: a C++ check whose message prints an int64 (here the stride).
    import torch

    if not _extension.LOADED:
        pytest.skip("no compiled extension (DMKERNELS_NO_EXTENSION)")
    with pytest.raises(ValueError, match="got stride 3"):
        torch.ops.dmkernels.token_stats(torch.randn(11, 3).t(), 0.0, 0, 0, False, None, None)
