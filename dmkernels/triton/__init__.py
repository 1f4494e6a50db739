"""Triton kernels for every dmkernels op (the GPU backend where the CUDA kernels
are not built, and a second implementation to check them against).

Each op is a ``torch.library.custom_op`` in the ``dmkernels_triton`` namespace
defined by ``dmkernels._registry.triton_op``: the registry's schema (the same as
``torch.ops.dmkernels``), fake and argument checks; a module here only writes
the kernels and their launch. On a machine without a GPU they
run under the Triton interpreter (``TRITON_INTERPRET=1``, set before triton is
imported) on CPU tensors, which is how CI tests them.
"""
from __future__ import annotations

try:
    import triton  # noqa: F401

    AVAILABLE, REASON = True, "available"
except ImportError as exc:  # pragma: no cover - depends on the machine
    AVAILABLE, REASON = False, f"triton is not installed ({exc})"


def load() -> None:
    """Import the kernel modules (registering torch.ops.dmkernels_triton.*)."""
    from . import commit, denoise_stats, edit, renoise, select, token_stats  # noqa: F401
