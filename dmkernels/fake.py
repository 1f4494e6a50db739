"""Defines every ``torch.ops.dmkernels`` op from dmkernels/_registry.py (schema and
fake: output shapes and dtypes for torch.compile and opcheck) once the compiled
library is loaded. The C++ and CUDA kernels in csrc/ only implement these ops."""
from __future__ import annotations

from . import _extension, _registry

if _extension.LOADED:
    _registry.define_ops("dmkernels")
