"""torch.library.opcheck on every op of the registry, on every kernel backend:
schema, fake implementation, dispatch (torch.ops.dmkernels.* and
torch.ops.dmkernels_triton.*). The inputs are each op's samples in
dmkernels/_registry.py."""
from __future__ import annotations

import pytest
import torch

from dmkernels import _registry, ops
from dmkernels import triton as _triton

CASES = [(op, i) for op, spec in _registry.OPS.items() for i in range(len(spec.samples()))]


@pytest.mark.parametrize("op,index", CASES, ids=[f"{op}-{i}" for op, i in CASES])
def test_opcheck(kernel_backend, op, index):
    args = kernel_backend.to(_registry.OPS[op].samples()[index])
    if kernel_backend.name == "triton":
        _triton.load()
    namespace = torch.ops.dmkernels if kernel_backend.name == "native" else torch.ops.dmkernels_triton
    torch.library.opcheck(getattr(namespace, op).default, args)


@pytest.mark.parametrize("op", list(_registry.OPS))
def test_samples_agree_across_backends(kernel_backend, op):
    # Every sample on this backend gives the reference's outputs (tokens and
    # selections exactly, float scores within float32 rounding).
    spec = _registry.OPS[op]
    for args in spec.samples():
        cpu_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        want = spec.call_reference(getattr(ops, spec.reference), spec.check(*cpu_args))
        got = kernel_backend.raw(op, *args)
        for g, w in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, want))):
            torch.testing.assert_close(g.cpu(), w, rtol=2e-5, atol=2e-6, equal_nan=True)
