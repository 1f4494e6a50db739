"""The checklist of every op (dmkernels/_registry.py, steps in CONTRIBUTING.md):
an op that lacks a compiled kernel, a fake, a reference, a
Triton implementation, an opcheck case, sample inputs, invalid calls, a public
function or a benchmark case fails here."""
from __future__ import annotations

import inspect

import pytest
import torch

import dmkernels
from dmkernels import _extension, _registry, ops
from dmkernels import triton as _triton
from dmkernels.bench import cases as bench_cases

from conftest import requires_extension

OPS = list(_registry.OPS)


@pytest.mark.parametrize("op", OPS)
def test_op_has_everything(op):
    spec = _registry.OPS[op]
    # A public function of the same name, exported by the package.
    assert callable(getattr(ops, op)) and op in ops.__all__ and getattr(dmkernels, op) is getattr(ops, op)
    assert "backend" in inspect.signature(getattr(ops, op)).parameters
    # A reference, reached through dmkernels.ops (where a spy can replace it).
    assert callable(getattr(ops, spec.reference)), spec.reference
    assert getattr(ops, spec.reference).__module__.startswith("dmkernels.reference."), spec.reference
    # A fake; samples (opcheck cases) and invalid calls.
    assert callable(spec.fake) and callable(spec.check)
    assert len(spec.samples()) >= 2, "at least two sample inputs (opcheck, cross-backend)"
    assert spec.bad(), "invalid calls for tests/test_validation.py"
    # A benchmark case (dmkernels/bench/cases.py) whose op mentions it.
    assert any(op in case.op.split("+") for case in bench_cases.all_cases()), f"no benchmark case for {op}"


@pytest.mark.parametrize("op", OPS)
def test_op_has_a_triton_implementation(op):
    if not _triton.AVAILABLE:
        pytest.skip(_triton.REASON)
    _triton.load()
    schema = getattr(torch.ops.dmkernels_triton, op).default._schema
    assert str(schema) == f"dmkernels_triton::{op}{_registry.OPS[op].schema}"


@requires_extension
@pytest.mark.parametrize("op", OPS)
def test_compiled_op_is_the_registry_op(op):
    # The registry defines the schema (dmkernels/fake.py); csrc/ only implements it.
    schema = getattr(torch.ops.dmkernels, op).default._schema
    assert str(schema) == f"dmkernels::{op}{_registry.OPS[op].schema}"
    assert _extension.has_kernel(op, torch.device("cpu")), f"no CPU kernel for {op}"


@requires_extension
@pytest.mark.parametrize("op", OPS)
def test_compiled_op_has_the_registry_fake(op):
    spec = _registry.OPS[op]
    args = spec.samples()[0]
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    got = getattr(torch.ops.dmkernels, op)(*meta)
    want = spec.fake(*meta)
    for g, w in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, want))):
        assert g.shape == w.shape and g.dtype == w.dtype


def test_every_compiled_op_is_in_the_registry():
    if not _extension.LOADED:
        pytest.skip(_extension.REASON)
    defined = {name for name in dir(torch.ops.dmkernels) if not name.startswith("_")}
    defined = {name for name in defined if isinstance(getattr(torch.ops.dmkernels, name), torch._ops.OpOverloadPacket)}
    assert defined == set(OPS)

