"""Argument checks of the ops. Every message names the op and the argument; a
wrong type or dtype is a TypeError, any other bad argument a ValueError.

Each op's checks are composed from these in dmkernels/_registry.py and run by the
public wrappers, the Triton ops and the reference path alike. The compiled
kernels check the same things with the same exception types (csrc/checks.h),
because torch.ops.dmkernels.* can be called without the wrappers.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SCORE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32)


def fail(op: str, message: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"dmkernels.{op}: {message}")


def tensor(op: str, name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(value).__name__}", TypeError)
    return value


def dtype(op: str, name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        fail(op, f"{name} must be one of ({names}), got {str(t.dtype).replace('torch.', '')}", TypeError)


def same_device(op: str, name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        fail(op, f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        fail(op, f"{name} must have shape {list(expected)} ({what}), got {list(t.shape)}")


def number(op: str, name: str, value, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(op, f"{name} must be a Python number, got {type(value).__name__}", TypeError)
    value = float(value)
    if math.isnan(value):
        fail(op, f"{name} is NaN")
    if minimum is not None and not (value >= minimum and math.isfinite(value)):
        fail(op, f"{name} must be finite and >= {minimum:g}, got {value}")
    return value


#: Smallest temperature > 0 (csrc/common/noise.h kMinTemperature): below it the
#: scaled noise of the Gumbel-max draw leaves float32's normal range.
MIN_TEMPERATURE = 2.0**-100


def temperature(op: str, value) -> float:
    """0 (argmax) or a finite float >= MIN_TEMPERATURE."""
    value = number(op, "temperature", value, minimum=0.0)
    if 0.0 < value < MIN_TEMPERATURE:
        fail(op, f"temperature must be 0 or >= 2**-100 (about 7.9e-31), got {value}")
    return value


def no_internal_overlap(op: str, name: str, t: torch.Tensor) -> None:
    """An output written in place must not have elements sharing memory (expand())."""
    if torch._debug_has_internal_overlap(t) == 1:  # 1: overlap for sure
        fail(op, f"{name} has elements that share memory (e.g. from expand()); "
                 f"pass a tensor whose elements are distinct, e.g. {name}.clone()")


def tokens_fit_int32(op: str, x: torch.Tensor, token: torch.Tensor, select: torch.Tensor, *, name: str = "token",
                     canvas_name: str = "x") -> None:
    """int64 tokens selected for an int32 canvas would wrap. Checked for CPU
    tensors only, where reading them is free (the kernels write what they get)."""
    if x.dtype == torch.int32 and token.dtype == torch.int64 and token.device.type == "cpu":
        bad = select & (token > 2**31 - 1)
        if bad.any():
            b, i = (int(v) for v in bad.nonzero()[0])
            fail(op, f"{name}[{b}, {i}] = {int(token[b, i])} does not fit {canvas_name}'s dtype int32")


def integer(op: str, name: str, value, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(op, f"{name} must be a Python int, got {type(value).__name__}", TypeError)
    if minimum is not None and value < minimum:
        fail(op, f"{name} must be >= {minimum}, got {value}")
    if value >= 2**63:
        fail(op, f"{name} must be < 2**63, got {value}")
    return value


def real(op: str, name: str, value, *, minimum: float | None = None, maximum: float | None = None,
         above: bool = False) -> float:
    """A finite real number (Python or NumPy; not bool, not str, not a tensor) in
    [minimum, maximum], or (minimum, maximum] with ``above``. Used for the sampler's
    and the policies' arguments, where NaN or inf would silently change the result."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(op, f"{name} must be a real number, got {type(value).__name__}", TypeError)
    value = float(value)
    if minimum is not None and maximum is not None:
        wanted = f" in {'(' if above else '['}{minimum:g}, {maximum:g}]"
    elif minimum is not None:
        wanted = f" {'>' if above else '>='} {minimum:g}"
    else:
        wanted = f" <= {maximum:g}" if maximum is not None else ""
    ok = math.isfinite(value)
    ok = ok and (minimum is None or (value > minimum if above else value >= minimum))
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        fail(op, f"{name} must be a finite number{wanted}, got {value}")
    return value


def logits(op: str, t) -> torch.Tensor:
    t = tensor(op, "logits", t)
    if t.dim() < 1:
        fail(op, "logits must have a vocabulary dim [..., V], got a 0-d tensor")
    dtype(op, "logits", t, LOGITS_DTYPES)
    V = t.shape[-1]
    if V < 1:
        fail(op, "logits has an empty vocabulary dim (V = 0)")
    if V > 2**24:
        fail(op, f"logits vocabulary dim V = {V} exceeds 2**24")
    if V > 1 and t.stride(-1) != 1:
        fail(op, f"logits must have unit stride on the vocabulary dim, got stride {t.stride(-1)}")
    return t


def scores_2d(op: str, name: str, t, dtypes: Sequence[torch.dtype] = SCORE_DTYPES) -> torch.Tensor:
    t = tensor(op, name, t)
    if t.dim() != 2:
        fail(op, f"{name} must be 2-D [B, L], got shape {list(t.shape)}")
    dtype(op, name, t, dtypes)
    return t


def like(op: str, name: str, t, ref: torch.Tensor, ref_name: str, dtypes: Sequence[torch.dtype],
         expected_shape=None, shape_what: str | None = None) -> torch.Tensor:
    """A tensor argument on ``ref``'s device, of one of ``dtypes``, and of
    ``expected_shape`` when given (``shape_what`` says what that shape is)."""
    t = tensor(op, name, t)
    same_device(op, name, t, ref, ref_name)
    dtype(op, name, t, dtypes)
    if expected_shape is not None:
        shape(op, name, t, expected_shape, shape_what)
    return t


def eligible(op: str, t, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    return like(op, "eligible", t, ref, ref_name, (torch.bool,), ref.shape, f"{ref_name}.shape")
