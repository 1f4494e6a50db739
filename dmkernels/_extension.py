"""Loads the compiled ops (`dmkernels._C`) and remembers why not when it can't.

DMKERNELS_NO_EXTENSION=1 turns compiled code off at run time (setup.py reads the
same variable at build time). Without it every op runs on its PyTorch reference
(dmkernels/reference/), which is correct but allocates copies of the logits;
the package says so once, on the first op that falls back.
"""
from __future__ import annotations

import os
import warnings

import torch

_TRUE = ("1", "true", "yes", "on")


def _load() -> tuple[bool, str]:
    if os.environ.get("DMKERNELS_NO_EXTENSION", "0").lower() in _TRUE:
        return False, "turned off by DMKERNELS_NO_EXTENSION=1"
    try:
        from dmkernels import _C  # noqa: F401  (registers torch.ops.dmkernels.*)
    except ImportError as exc:
        return False, f"dmkernels._C is not built ({exc}); run `pip install --no-build-isolation .`"
    return True, "loaded"


LOADED, REASON = _load()
_warned = False


_has_kernel: dict[tuple[str, str], bool] = {}


def has_kernel(op: str, device: torch.device) -> bool:
    """Whether the compiled extension implements ``dmkernels::<op>`` for ``device``
    (asked of the dispatcher once per op and device type)."""
    found = _has_kernel.get((op, device.type))
    if found is None:
        found = _ask_dispatcher(op, device.type)
        _has_kernel[(op, device.type)] = found
    return found


# torch.compile cannot trace the dispatcher query; its answer is a constant.
@torch.compiler.assume_constant_result
def _ask_dispatcher(op: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return bool(LOADED and key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"dmkernels::{op}", key))


def note_fallback(op: str, device: torch.device) -> None:
    """Warn once per process that ops run on the slow reference path, and why."""
    global _warned
    if not _warned:
        _warned = True
        why = REASON if not LOADED else f"no compiled kernel for {device.type} tensors"
        warnings.warn(
            f"dmkernels: running {op} (and any other op without a kernel) on the PyTorch reference: {why}",
            RuntimeWarning,
            stacklevel=3,
        )
