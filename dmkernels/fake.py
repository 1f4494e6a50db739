"""Fake (meta) implementations of every torch.ops.dmkernels op, for torch.compile
and torch.library.opcheck: output shapes and dtypes only, no data. Each op's
fake is declared once, in dmkernels/_registry.py (the Triton ops use the same)."""
from __future__ import annotations

from . import _extension, _registry

if _extension.LOADED:
    _registry.register_fakes("dmkernels")
