"""Triton kernels for every dmkernels op (the GPU backend where the CUDA kernels
are not built, and a second implementation to check them against).

Each op is a ``torch.library.custom_op`` in the ``dmkernels_triton`` namespace
with a fake implementation, taking the same positional arguments as the
``torch.ops.dmkernels`` schema in csrc/ops.cpp. On a machine without a GPU they
run under the Triton interpreter (``TRITON_INTERPRET=1``, set before triton is
imported) on CPU tensors, which is how CI tests them.
"""
from __future__ import annotations

try:
    import triton  # noqa: F401

    AVAILABLE, REASON = True, "available"
except ImportError as exc:  # pragma: no cover - depends on the machine
    AVAILABLE, REASON = False, f"triton is not installed ({exc})"

OPS = (
    "token_stats",
    "token_stats_partial",
    "select_topk",
    "select_threshold",
    "select_factor",
    "select_entropy_bounded",
    "select_group",
    "commit_",
)


def load() -> None:
    """Import the kernel modules (registering torch.ops.dmkernels_triton.*)."""
    from . import commit, select, token_stats  # noqa: F401
