"""Every dmkernels op, declared once.

An :class:`OpSpec` holds what every backend shares: the schema, the argument
checks, the fake (meta) implementation, the name of the PyTorch reference, and
sample inputs for the tests. From it

- ``dmkernels/fake.py`` defines ``torch.ops.dmkernels.*`` (schema and fake) when
  the compiled library loads; its C++ kernels only implement them;
- ``dmkernels/triton/*`` defines ``torch.ops.dmkernels_triton.*`` (schema, fake
  and checks: a Triton module only writes the kernel, see :func:`triton_op`);
- ``dmkernels/ops.py`` checks the arguments once and dispatches to a backend;
- the tests run opcheck, the validation cases and the checklist
  (tests/test_registry.py) over every op.

Adding an op: CONTRIBUTING.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import _checks as check
from .reference.token_stats_partial import MAX_COLUMNS


@dataclass(frozen=True)
class Bad:
    """An invalid call of the raw op: every backend raises ``error`` with all ``words``
    in the message. ``cpu_only``: the problem is in a tensor's values (read only
    where that is free) or in its layout (an expand()ed tensor moved to a GPU is
    materialised), so GPU backends are not held to it."""

    args: tuple
    error: type
    words: tuple[str, ...]
    cpu_only: bool = False


@dataclass(frozen=True)
class OpSpec:
    """One op, as every backend implements it.

    name: the op (``torch.ops.dmkernels.<name>``, ``dmkernels.<name>``).
    schema: arguments and returns, as after the op's name (defines the op).
    check: raw op arguments in schema order -> the same, normalised; raises
        ValueError / TypeError naming the op and the argument (the C++ kernels
        raise the same types, csrc/checks.h).
    fake: output shapes and dtypes, no data (torch.compile, opcheck).
    reference: name of the PyTorch reference in dmkernels.reference.
    reference_call: how the raw op arguments become the reference's (args, kwargs);
        None when the reference takes them positionally as they are.
    samples: valid raw arguments (CPU tensors) for opcheck and the cross-backend tests.
    bad: invalid raw calls and the error each backend raises.
    bench: the ``op`` of at least one case in dmkernels/bench/cases.py mentions it.
    mutates: arguments written in place.
    """

    name: str
    schema: str
    check: Callable[..., tuple]
    fake: Callable[..., Any]
    reference: str
    samples: Callable[[], list[tuple]]
    bad: Callable[[], list[Bad]]
    reference_call: Callable[..., tuple[tuple, dict]] | None = None
    mutates: tuple[str, ...] = field(default=())

    def call_reference(self, fn: Callable, args: tuple):
        """``fn`` (the reference) on the raw op arguments."""
        if self.reference_call is None:
            return fn(*args)
        a, kw = self.reference_call(*args)
        return fn(*a, **kw)


OPS: dict[str, OpSpec] = {}


def _register(spec: OpSpec) -> OpSpec:
    OPS[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------
# Checks of the raw op arguments (shared by the wrappers, the Triton ops and the
# reference path). The compiled kernels check the same in csrc/checks.h.
# ---------------------------------------------------------------------------


def rng_values(op: str, rng: torch.Tensor) -> tuple[int, int]:
    """(seed, offset) of an rng tensor, read on the host."""
    seed, offset = (int(v) for v in rng.tolist())
    if seed < 0 or offset < 0:
        check.fail(op, f"rng must hold (seed, offset) >= 0, got {(seed, offset)}")
    return seed, offset


def _check_token_stats(logits, temperature, seed, offset, tempered_scores, positions, rng=None,
                       op="token_stats"):
    logits = check.logits(op, logits)
    temperature = check.temperature(op, temperature)
    seed = check.integer(op, "seed", seed, minimum=0)
    offset = check.integer(op, "offset", offset, minimum=0)
    if logits.numel() // logits.shape[-1] > 2**32:
        check.fail(op, "logits has more than 2**32 rows")
    if positions is not None:
        check.like(op, "positions", positions, logits, "logits", (torch.bool,), logits.shape[:-1],
                   "logits.shape[:-1]")
    if rng is not None:
        check.like(op, "rng", rng, logits, "logits", (torch.int64,), (2,), "(seed, offset)")
        if rng.device.type == "cpu" and not torch.compiler.is_compiling():
            rng_values(op, rng)  # free to read on the CPU; on a GPU it is the kernel's to read
    return logits, temperature, seed, offset, bool(tempered_scores), positions, rng


def _check_token_stats_partial(logits, temperature, seed, offset, tempered_scores, positions, rng,
                               vocab_start, row_offset):
    op = "token_stats_partial"
    args = _check_token_stats(logits, temperature, seed, offset, tempered_scores, positions, rng, op=op)
    vocab_start = check.integer(op, "vocab_start", vocab_start, minimum=0)
    row_offset = check.integer(op, "row_offset", row_offset, minimum=0)
    if vocab_start + logits.shape[-1] > MAX_COLUMNS:
        check.fail(op, f"vocab_start + V = {vocab_start + logits.shape[-1]} exceeds 2**24")
    if args[1] > 0 and vocab_start % 32:
        # Sampling draws per noise group of 32 columns (csrc/common/noise.h): a slice
        # must hold whole groups to reproduce the whole row's draw.
        check.fail(op, f"vocab_start must be a multiple of 32 when temperature > 0, got {vocab_start}")
    if row_offset + logits.numel() // logits.shape[-1] > 2**32:
        check.fail(op, "row_offset + rows exceeds 2**32")
    return (*args, vocab_start, row_offset)


def _positive_temperature(op: str, value) -> float:
    """A sampling temperature: finite and >= 2**-100 (0 is not an argmax here)."""
    value = check.number(op, "temperature", value)
    if not (math.isfinite(value) and value >= check.MIN_TEMPERATURE):
        check.fail(op, f"temperature must be finite and >= 2**-100 (about 7.9e-31), got {value}")
    return value


def _check_denoise_stats(logits, temperature, temperature_tensor, seed, offset, rng, processed_out, frozen):
    op = "denoise_stats"
    logits = check.logits(op, logits)
    temperature = _positive_temperature(op, temperature)
    if temperature_tensor is not None:
        check.like(op, "temperature", temperature_tensor, logits, "logits", (torch.float32,), (), "a 0-d tensor")
        if temperature_tensor.device.type == "cpu" and not torch.compiler.is_compiling():
            _positive_temperature(op, float(temperature_tensor))  # free on the CPU; a GPU's is the kernel's
    seed = check.integer(op, "seed", seed, minimum=0)
    offset = check.integer(op, "offset", offset, minimum=0)
    if logits.numel() // logits.shape[-1] > 2**32:
        check.fail(op, "logits has more than 2**32 rows")
    if rng is not None:
        check.like(op, "rng", rng, logits, "logits", (torch.int64,), (2,), "(seed, offset)")
        if rng.device.type == "cpu" and not torch.compiler.is_compiling():
            rng_values(op, rng)
    if processed_out is not None:
        check.like(op, "processed_out", processed_out, logits, "logits", check.LOGITS_DTYPES, logits.shape,
                   "logits.shape")
        if logits.shape[-1] > 1 and processed_out.stride(-1) != 1:
            check.fail(op, "processed_out must have unit stride on the vocabulary dim, got stride "
                           f"{processed_out.stride(-1)}")
        if not torch.compiler.is_compiling():
            check.no_internal_overlap(op, "processed_out", processed_out)
    if frozen is not None:
        check.like(op, "frozen", frozen, logits, "logits", (torch.bool,), logits.shape[:-1], "logits.shape[:-1]")
    return logits, temperature, temperature_tensor, seed, offset, rng, processed_out, frozen


def _check_select_topk(scores, k, eligible):
    op = "select_topk"
    check.scores_2d(op, "scores", scores)
    check.eligible(op, eligible, scores, "scores")
    check.like(op, "k", k, scores, "scores", check.INDEX_DTYPES, (scores.shape[0],), "one count per row of scores")
    return scores, k, eligible


def _scored_rule(op: str, param: str):
    def check_args(scores, eligible, value):
        check.scores_2d(op, "scores", scores)
        check.eligible(op, eligible, scores, "scores")
        return scores, eligible, check.number(op, param, value)

    return check_args


def _check_select_entropy_bounded(error, entropy, eligible, gamma):
    op = "select_entropy_bounded"
    check.scores_2d(op, "error", error)
    check.scores_2d(op, "entropy", entropy)
    check.same_device(op, "entropy", entropy, error, "error")
    check.shape(op, "entropy", entropy, error.shape, "error.shape")
    check.eligible(op, eligible, error, "error")
    return error, entropy, eligible, check.number(op, "gamma", gamma)


def _check_select_group(eligible, groups, step):
    op = "select_group"
    check.scores_2d(op, "eligible", eligible, (torch.bool,))
    for name, t in (("groups", groups), ("step", step)):
        check.like(op, name, t, eligible, "eligible", check.INDEX_DTYPES)
    B, L = eligible.shape
    if tuple(groups.shape) not in ((L,), (B, L)):
        check.fail(op, f"groups must have shape [L] or [B, L] = {[B, L]}, got {list(groups.shape)}")
    if step.dim() != 0 and tuple(step.shape) != (B,):
        check.fail(op, f"step must be a scalar or have shape [B] = [{B}], got {list(step.shape)}")
    return eligible, groups, step


def _check_commit(x, token, select, mask_id):
    op = "commit_"
    check.scores_2d(op, "x", x, check.INDEX_DTYPES)
    for name, t, dtypes in (("token", token, check.INDEX_DTYPES), ("select", select, (torch.bool,))):
        check.like(op, name, t, x, "x", dtypes, x.shape, "x.shape")
    mask_id = check.integer(op, "mask_id", mask_id, minimum=0)
    if x.dtype == torch.int32 and mask_id > 2**31 - 1:
        check.fail(op, f"mask_id = {mask_id} does not fit x's dtype int32")
    if not torch.compiler.is_compiling():  # the traced op checks both again when it runs (not traceable here)
        check.no_internal_overlap(op, "x", x)
        check.tokens_fit_int32(op, x, token, select)  # CPU tensors only, where reading is free
    return x, token, select, mask_id


def _check_edit(x, token, confidence, editable, threshold):
    op = "edit_"
    check.scores_2d(op, "x", x, check.INDEX_DTYPES)
    for name, t, dtypes in (("token", token, check.INDEX_DTYPES), ("confidence", confidence, check.SCORE_DTYPES),
                            ("editable", editable, (torch.bool,))):
        check.like(op, name, t, x, "x", dtypes, x.shape, "x.shape")
    threshold = check.number(op, "threshold", threshold)  # +-inf allowed: every / no confident position
    if not torch.compiler.is_compiling():  # the traced op checks both again when it runs (not traceable here)
        check.no_internal_overlap(op, "x", x)
        check.tokens_fit_int32(op, x, token, editable)  # CPU tensors only, where reading is free
    return x, token, confidence, editable, threshold


def _check_renoise(canvas, sample, accept, frozen, vocab_size, seed, offset, rng=None):
    op = "renoise_"
    check.scores_2d(op, "canvas", canvas, check.INDEX_DTYPES)
    check.like(op, "sample", sample, canvas, "canvas", check.INDEX_DTYPES, canvas.shape, "canvas.shape")
    check.like(op, "accept", accept, canvas, "canvas", (torch.bool,), canvas.shape, "canvas.shape")
    if frozen is not None:
        check.like(op, "frozen", frozen, canvas, "canvas", (torch.bool,), (canvas.shape[0],), "one flag per row")
    vocab_size = check.integer(op, "vocab_size", vocab_size, minimum=1)
    if canvas.dtype == torch.int32 and vocab_size > 2**31:
        check.fail(op, f"vocab_size = {vocab_size} does not fit canvas's dtype int32 (tokens up to 2**31 - 1)")
    seed = check.integer(op, "seed", seed, minimum=0)
    offset = check.integer(op, "offset", offset, minimum=0)
    if rng is not None:
        check.like(op, "rng", rng, canvas, "canvas", (torch.int64,), (2,), "(seed, offset)")
        if rng.device.type == "cpu" and not torch.compiler.is_compiling():
            rng_values(op, rng)  # free to read on the CPU; on a GPU it is the kernel's to read
    if not torch.compiler.is_compiling():  # the traced op checks both again when it runs (not traceable here)
        check.no_internal_overlap(op, "canvas", canvas)
        if canvas.dtype == torch.int32 and sample.dtype == torch.int64 and sample.device.type == "cpu":
            written = accept if frozen is None else accept & ~frozen[:, None]  # frozen rows are not written
            check.tokens_fit_int32(op, canvas, sample, written, name="sample", canvas_name="canvas")
    return canvas, sample, accept, frozen, vocab_size, seed, offset, rng


# ---------------------------------------------------------------------------
# Fakes: the kernels return contiguous outputs whatever the inputs' strides.
# ---------------------------------------------------------------------------


def _fake_token_stats(logits, temperature, seed, offset, tempered_scores, positions, rng=None):
    rows = logits.shape[:-1]
    scores = [logits.new_empty(rows, dtype=torch.float32) for _ in range(3)]
    return (logits.new_empty(rows, dtype=torch.int64), *scores)


def _fake_token_stats_partial(logits, temperature, seed, offset, tempered_scores, positions, rng, vocab_start,
                              row_offset):
    return logits.new_empty((*logits.shape[:-1], 8), dtype=torch.float32)


def _fake_denoise_stats(logits, temperature, temperature_tensor, seed, offset, rng, processed_out, frozen):
    rows = logits.shape[:-1]
    return (logits.new_empty(rows, dtype=torch.int64), logits.new_empty(rows, dtype=torch.int64),
            logits.new_empty(rows, dtype=torch.float32))


def _fake_selection(*args):
    eligible = next(a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.bool)
    return eligible.new_empty(eligible.shape, dtype=torch.bool)


def _fake_commit(x, token, select, mask_id):
    return select.new_empty(x.shape, dtype=torch.bool), x.new_empty((x.shape[0],), dtype=torch.int64)


def _fake_edit(x, token, confidence, editable, threshold):
    return editable.new_empty(x.shape, dtype=torch.bool), x.new_empty((x.shape[0],), dtype=torch.int64)


def _fake_renoise(canvas, sample, accept, frozen, vocab_size, seed, offset, rng=None):
    return canvas.new_empty((canvas.shape[0],), dtype=torch.int64)


# ---------------------------------------------------------------------------
# How the references take the raw arguments.
# ---------------------------------------------------------------------------


def _token_stats_reference_call(logits, temperature, seed, offset, tempered_scores, positions, rng=None):
    if rng is not None:  # the reference reads it on the host
        seed, offset = rng_values("token_stats", rng)
    return (logits,), dict(temperature=temperature, seed=seed, offset=offset, positions=positions,
                           tempered_scores=tempered_scores)


def _token_stats_partial_reference_call(logits, temperature, seed, offset, tempered_scores, positions, rng,
                                        vocab_start, row_offset):
    if rng is not None:
        seed, offset = rng_values("token_stats_partial", rng)
    return (logits,), dict(temperature=temperature, seed=seed, offset=offset, positions=positions,
                           tempered_scores=tempered_scores, vocab_start=vocab_start, row_offset=row_offset)


def _denoise_stats_reference_call(logits, temperature, temperature_tensor, seed, offset, rng, processed_out, frozen):
    if rng is not None:  # the reference reads it on the host
        seed, offset = rng_values("denoise_stats", rng)
    t = temperature if temperature_tensor is None else temperature_tensor
    return (logits, t), dict(seed=seed, offset=offset, processed_out=processed_out, frozen=frozen)


def _renoise_reference_call(canvas, sample, accept, frozen, vocab_size, seed, offset, rng=None):
    if rng is not None:  # the reference reads it on the host
        seed, offset = rng_values("renoise_", rng)
    return (canvas, sample, accept, frozen, vocab_size, seed, offset), {}


# ---------------------------------------------------------------------------
# Sample inputs (CPU; the tests move them to each backend's device).
# ---------------------------------------------------------------------------


def _logits():
    logits = torch.randn(3, 5, 37)
    logits[0, 0, 3] = -math.inf
    return logits


def _token_stats_samples():
    logits = _logits()
    return [
        (logits, 0.0, 0, 0, False, None),
        (logits.bfloat16(), 0.7, 3, 2, True, torch.rand(3, 5) < 0.5),
        (logits[:, :, :30], 1.0, 1, 0, False, None),
        (logits.half(), 1.0, 0, 0, False, None, torch.tensor([5, 2])),
    ]


def _token_stats_partial_samples():
    logits = _logits()
    return [
        (logits, 0.0, 0, 0, False, None, None, 45, 0),
        (logits.bfloat16(), 0.7, 3, 2, True, torch.rand(3, 5) < 0.5, None, 96, 7),
        (logits[:, :, :30], 1.0, 1, 0, False, None, torch.tensor([5, 2]), 64, 0),
        (logits.half(), 0.5, 2, 1, False, None, None, 0, 100),
    ]


def _denoise_stats_samples():
    logits = _logits()
    frozen = torch.rand(3, 5) < 0.3
    return [
        (logits, 0.7, None, 3, 2, None, None, None),
        (logits.bfloat16(), 1.0, torch.tensor(0.55), 1, 0, None, torch.zeros(3, 5, 37), frozen),
        (logits.half()[:, :, :30], 1.3, None, 0, 0, torch.tensor([5, 2]), torch.zeros(3, 5, 30, dtype=torch.bfloat16),
         None),
    ]


def _scores():
    scores = torch.rand(4, 19)
    return scores, torch.rand(4, 19) < 0.5


def _select_topk_samples():
    scores, eligible = _scores()
    return [
        (scores, torch.tensor([0, 3, 19, 2]), eligible),
        (scores.double().t().contiguous().t(), torch.tensor([1, -2, 3, 40], dtype=torch.int32), eligible),
    ]


def _select_threshold_samples():
    scores, eligible = _scores()
    return [(scores, eligible, 0.5), (scores.bfloat16(), eligible, -math.inf)]


def _select_factor_samples():
    scores, eligible = _scores()
    return [(scores, eligible, 1.0), (scores.half(), eligible, 0.0)]


def _select_entropy_bounded_samples():
    scores, eligible = _scores()
    return [(scores, scores * 0.1, eligible, 0.2), (scores.double(), scores.bfloat16(), eligible, math.inf)]


def _select_group_samples():
    _, eligible = _scores()
    return [
        (eligible, torch.arange(19) % 3, torch.tensor(1)),
        (eligible, (torch.arange(76) % 4).reshape(4, 19).int(), torch.tensor([0, 2, 1, 5])),
    ]


def _commit_samples():
    out = []
    for dtype in (torch.int64, torch.int32):
        x = torch.randint(0, 9, (4, 19), dtype=dtype)
        select = torch.rand(4, 19) < 0.5
        x[select] = 9
        out.append((x, torch.randint(-1, 12, (4, 19)), select, 9))
    return out


def _edit_samples():
    out = []
    for dtype, conf_dtype in ((torch.int64, torch.float32), (torch.int32, torch.bfloat16),
                              (torch.int64, torch.float64)):
        x = torch.randint(0, 6, (4, 19), dtype=dtype)
        token = torch.randint(-1, 6, (4, 19), dtype=torch.int32 if dtype == torch.int64 else torch.int64)
        confidence = torch.rand(4, 19).to(conf_dtype)
        confidence[0, :3] = torch.tensor([math.nan, math.inf, -math.inf]).to(conf_dtype)
        out.append((x, token, confidence, torch.rand(4, 19) < 0.7, 0.5))
    return out


def _renoise_samples():
    canvas = torch.randint(0, 50, (3, 7))
    accept = torch.rand(3, 7) < 0.4
    return [
        (canvas, torch.randint(0, 50, (3, 7)), accept, None, 50, 5, 0),
        (canvas.int(), torch.randint(0, 50, (3, 7)), accept, torch.tensor([False, True, False]), 50, 2**40 + 3, 9),
        (canvas.t().contiguous().t(), torch.randint(0, 9, (3, 7), dtype=torch.int32), accept, None, 9, 0, 0,
         torch.tensor([7, 2])),
    ]


# ---------------------------------------------------------------------------
# Invalid raw calls: the same error type on every backend.
# ---------------------------------------------------------------------------

S = (4, 19)


def _token_stats_bad(partial: bool):
    tail = (None, 0, 0) if partial else ()
    L = torch.randn(2, 3, 11)
    rng_tail = lambda rng: (rng, 0, 0) if partial else (rng,)  # noqa: E731
    return [
        Bad((L.double(), 0.0, 0, 0, False, None, *tail), TypeError, ("logits", "float64")),
        Bad((L.long(), 0.0, 0, 0, False, None, *tail), TypeError, ("logits", "int64")),
        Bad((torch.randn(3, 0), 0.0, 0, 0, False, None, *tail), ValueError, ("logits", "V = 0")),
        Bad((torch.randn(11, 3).t(), 0.0, 0, 0, False, None, *tail), ValueError, ("logits", "stride")),
        Bad((L, -1.0, 0, 0, False, None, *tail), ValueError, ("temperature",)),
        Bad((L, math.nan, 0, 0, False, None, *tail), ValueError, ("temperature",)),
        Bad((L, 1e-40, 0, 0, False, None, *tail), ValueError, ("temperature", "2**-100")),
        Bad((L, 1.0, -5, 0, False, None, *tail), ValueError, ("seed", ">= 0")),
        Bad((L, 1.0, 0, -3, False, None, *tail), ValueError, ("offset", ">= 0")),
        Bad((L, 0.0, 0, 0, False, torch.ones(3, 2, dtype=torch.bool), *tail), ValueError, ("positions", "shape")),
        Bad((L, 0.0, 0, 0, False, torch.ones(2, 3), *tail), TypeError, ("positions", "bool")),
        Bad((L, 1.0, 0, 0, False, None, *rng_tail(torch.tensor([1, 2, 3]))), ValueError, ("rng", "shape")),
        Bad((L, 1.0, 0, 0, False, None, *rng_tail(torch.tensor([1.0, 2.0]))), TypeError, ("rng", "int64")),
        Bad((L, 1.0, 0, 0, False, None, *rng_tail(torch.tensor([-1, 0]))), ValueError, ("rng", ">= 0"), True),
    ]


def _token_stats_partial_bad():
    x = torch.randn(3, 10)
    return _token_stats_bad(True) + [
        Bad((x, 0.0, 0, 0, False, None, None, -1, 0), ValueError, ("vocab_start", ">= 0")),
        Bad((x, 0.0, 0, 0, False, None, None, 2**24 - 5, 0), ValueError, ("vocab_start", "2**24")),
        Bad((x, 0.5, 0, 0, False, None, None, 40, 0), ValueError, ("vocab_start", "multiple of 32")),
        Bad((x, 0.0, 0, 0, False, None, None, 0, -1), ValueError, ("row_offset", ">= 0")),
        Bad((x, 0.0, 0, 0, False, None, None, 0, 2**32 - 1), ValueError, ("row_offset", "2**32")),
    ]


def _denoise_stats_bad():
    L = torch.randn(2, 3, 11)

    def call(logits=L, t=1.0, tt=None, seed=0, offset=0, rng=None, out=None, frozen=None):
        return (logits, t, tt, seed, offset, rng, out, frozen)

    return [
        Bad(call(logits=L.double()), TypeError, ("logits", "float64")),
        Bad(call(logits=torch.randn(3, 0)), ValueError, ("logits", "V = 0")),
        Bad(call(logits=torch.randn(11, 3).t()), ValueError, ("logits", "stride")),
        Bad(call(t=0.0), ValueError, ("temperature", "2**-100")),
        Bad(call(t=-1.0), ValueError, ("temperature",)),
        Bad(call(t=math.nan), ValueError, ("temperature",)),
        Bad(call(t=math.inf), ValueError, ("temperature",)),
        Bad(call(t=1e-40), ValueError, ("temperature", "2**-100")),
        Bad(call(tt=torch.tensor(0.5, dtype=torch.float64)), TypeError, ("temperature", "float32")),
        Bad(call(tt=torch.tensor([0.5])), ValueError, ("temperature", "shape")),
        Bad(call(tt=torch.tensor(0.0)), ValueError, ("temperature", "2**-100"), True),
        Bad(call(tt=torch.tensor(math.nan)), ValueError, ("temperature",), True),
        Bad(call(seed=-5), ValueError, ("seed", ">= 0")),
        Bad(call(offset=-3), ValueError, ("offset", ">= 0")),
        Bad(call(rng=torch.tensor([1, 2, 3])), ValueError, ("rng", "shape")),
        Bad(call(rng=torch.tensor([1.0, 2.0])), TypeError, ("rng", "int64")),
        Bad(call(rng=torch.tensor([-1, 0])), ValueError, ("rng", ">= 0"), True),
        Bad(call(out=torch.zeros(2, 3, 10)), ValueError, ("processed_out", "shape")),
        Bad(call(out=torch.zeros(2, 3, 11, dtype=torch.int64)), TypeError, ("processed_out", "int64")),
        Bad(call(out=torch.zeros(2, 3, 11, dtype=torch.float64)), TypeError, ("processed_out", "float64")),
        Bad(call(out=torch.zeros(11, 2, 3).permute(1, 2, 0)), ValueError, ("processed_out", "stride")),
        Bad(call(out=torch.zeros(1, 1, 11).expand(2, 3, 11)), ValueError, ("processed_out", "share memory"), True),
        Bad(call(frozen=torch.ones(2, 3)), TypeError, ("frozen", "bool")),
        Bad(call(frozen=torch.ones(3, 2, dtype=torch.bool)), ValueError, ("frozen", "shape")),
    ]


def _scored_bad(op_param: str | None):
    """Bad calls shared by select_topk (op_param None) and the scored rules."""
    scores, eligible = torch.rand(*S), torch.ones(*S, dtype=torch.bool)
    mid = (torch.tensor([1, 2, 3, 4]),) if op_param is None else ()
    tail = () if op_param is None else (0.5,)
    out = [
        Bad((scores[0], *mid, eligible[0], *tail), ValueError, ("scores", "2-D")),
        Bad((scores.long(), *mid, eligible, *tail), TypeError, ("scores", "int64")),
        Bad((scores, *mid, eligible.float(), *tail), TypeError, ("eligible", "bool")),
        Bad((scores, *mid, eligible[:, :4], *tail), ValueError, ("eligible", "shape")),
    ]
    if op_param is not None:
        out.append(Bad((scores, eligible, math.nan), ValueError, (op_param, "NaN")))
    return out


def _select_topk_bad():
    scores, eligible = torch.rand(*S), torch.ones(*S, dtype=torch.bool)
    return _scored_bad(None) + [
        Bad((scores, torch.tensor([1.0, 2.0, 3.0, 4.0]), eligible), TypeError, ("k", "float32")),
        Bad((scores, torch.tensor([1, 2, 3]), eligible), ValueError, ("k", "shape")),
    ]


def _select_entropy_bounded_bad():
    e, eligible = torch.rand(*S), torch.ones(*S, dtype=torch.bool)
    return [
        Bad((e, e[:, :4], eligible, 0.1), ValueError, ("entropy", "shape")),
        Bad((e, e.t(), eligible, 0.1), ValueError, ("entropy", "shape")),
        Bad((e.long(), e, eligible, 0.1), TypeError, ("error", "int64")),
        Bad((e, e.int(), eligible, 0.1), TypeError, ("entropy", "int32")),
        Bad((e, e, eligible.int(), 0.1), TypeError, ("eligible", "bool")),
        Bad((e, e, eligible, math.nan), ValueError, ("gamma", "NaN")),
    ]


def _select_group_bad():
    eligible = torch.ones(*S, dtype=torch.bool)
    g = torch.arange(19)
    return [
        Bad((eligible[0], g, torch.tensor(0)), ValueError, ("eligible", "2-D")),
        Bad((eligible.int(), g, torch.tensor(0)), TypeError, ("eligible", "bool")),
        Bad((eligible, torch.arange(4), torch.tensor(0)), ValueError, ("groups", "shape")),
        Bad((eligible, g.float(), torch.tensor(0)), TypeError, ("groups", "float32")),
        Bad((eligible, g, torch.tensor([0, 1, 2])), ValueError, ("step", "shape")),
        Bad((eligible, g, torch.tensor(0.0)), TypeError, ("step", "float32")),
    ]


def _commit_bad():
    x, t, s = torch.zeros(*S, dtype=torch.int64), torch.zeros(*S, dtype=torch.int64), torch.ones(*S, dtype=torch.bool)
    return [
        Bad((x, t, s, -4), ValueError, ("mask_id", ">= 0")),
        Bad((x.int(), t, s, 2**31), ValueError, ("mask_id", "int32")),
        Bad((x.float(), t, s, 7), TypeError, ("x", "float32")),
        Bad((x[0], t[0], s[0], 7), ValueError, ("x", "2-D")),
        Bad((x, t[:, :4], s, 7), ValueError, ("token", "shape")),
        Bad((x, t.float(), s, 7), TypeError, ("token", "float32")),
        Bad((x, t, s.int(), 7), TypeError, ("select", "bool")),
        Bad((torch.full((1, 19), 9).expand(4, 19), t, s, 9), ValueError, ("x", "share memory"), True),
    ]


def _edit_bad():
    x, t = torch.zeros(*S, dtype=torch.int64), torch.ones(*S, dtype=torch.int64)
    c, e = torch.rand(*S), torch.ones(*S, dtype=torch.bool)
    return [
        Bad((x.float(), t, c, e, 0.5), TypeError, ("x", "float32")),
        Bad((x[0], t[0], c[0], e[0], 0.5), ValueError, ("x", "2-D")),
        Bad((x, t[:, :4], c, e, 0.5), ValueError, ("token", "shape")),
        Bad((x, t.float(), c, e, 0.5), TypeError, ("token", "float32")),
        Bad((x, t, c.long(), e, 0.5), TypeError, ("confidence", "int64")),
        Bad((x, t, c.t(), e, 0.5), ValueError, ("confidence", "shape")),
        Bad((x, t, c, e.int(), 0.5), TypeError, ("editable", "bool")),
        Bad((x, t, c, e[:3], 0.5), ValueError, ("editable", "shape")),
        Bad((x, t, c, e, math.nan), ValueError, ("threshold", "NaN")),
        Bad((torch.zeros(1, 19, dtype=torch.int64).expand(4, 19), t, c, e, 0.5), ValueError,
            ("x", "share memory"), True),
        Bad((x.int(), torch.full(S, 2**31), c, e, 0.5), ValueError, ("token[0, 0]", "int32"), True),
    ]


def _renoise_bad():
    x, t, a = torch.zeros(*S, dtype=torch.int64), torch.ones(*S, dtype=torch.int64), torch.rand(*S) < 0.5
    f = torch.tensor([False, True, False, False])

    def call(canvas=x, sample=t, accept=a, frozen=None, vocab_size=10, seed=0, offset=0, *rng):
        return (canvas, sample, accept, frozen, vocab_size, seed, offset, *rng)

    return [
        Bad(call(canvas=x.float()), TypeError, ("canvas", "float32")),
        Bad(call(canvas=x[0], sample=t[0], accept=a[0]), ValueError, ("canvas", "2-D")),
        Bad(call(sample=t[:, :4]), ValueError, ("sample", "shape")),
        Bad(call(sample=t.float()), TypeError, ("sample", "float32")),
        Bad(call(accept=a.int()), TypeError, ("accept", "bool")),
        Bad(call(accept=a.t()), ValueError, ("accept", "shape")),
        Bad(call(frozen=f.int()), TypeError, ("frozen", "bool")),
        Bad(call(frozen=a), ValueError, ("frozen", "shape")),
        Bad(call(vocab_size=0), ValueError, ("vocab_size", ">= 1")),
        Bad(call(canvas=x.int(), vocab_size=2**31 + 1), ValueError, ("vocab_size", "int32")),
        Bad(call(seed=-1), ValueError, ("seed", ">= 0")),
        Bad(call(offset=-2), ValueError, ("offset", ">= 0")),
        Bad(call(x, t, a, f, 10, 0, 0, torch.tensor([1, 2, 3])), ValueError, ("rng", "shape")),
        Bad(call(x, t, a, f, 10, 0, 0, torch.tensor([1.0, 2.0])), TypeError, ("rng", "int64")),
        Bad(call(x, t, a, f, 10, 0, 0, torch.tensor([3, -1])), ValueError, ("rng", ">= 0"), True),
        Bad(call(canvas=torch.zeros(1, 19, dtype=torch.int64).expand(4, 19)), ValueError, ("canvas", "share memory"),
            True),
        Bad(call(canvas=x.int(), sample=torch.full(S, 2**31), accept=torch.ones(*S, dtype=torch.bool)), ValueError,
            ("sample[0, 0]", "int32"), True),
    ]


# ---------------------------------------------------------------------------
# The ops.
# ---------------------------------------------------------------------------

_register(OpSpec(
    name="token_stats",
    schema="(Tensor logits, float temperature, int seed, int offset, bool tempered_scores, Tensor? positions, "
           "Tensor? rng=None) -> (Tensor, Tensor, Tensor, Tensor)",
    check=_check_token_stats, fake=_fake_token_stats, reference="token_stats_reference",
    reference_call=_token_stats_reference_call, samples=_token_stats_samples, bad=lambda: _token_stats_bad(False),
))
_register(OpSpec(
    name="token_stats_partial",
    schema="(Tensor logits, float temperature, int seed, int offset, bool tempered_scores, Tensor? positions, "
           "Tensor? rng, int vocab_start, int row_offset) -> Tensor",
    check=_check_token_stats_partial, fake=_fake_token_stats_partial, reference="token_stats_partial_reference",
    reference_call=_token_stats_partial_reference_call, samples=_token_stats_partial_samples,
    bad=_token_stats_partial_bad,
))
_register(OpSpec(
    name="denoise_stats",
    schema="(Tensor logits, float temperature, Tensor? temperature_tensor, int seed, int offset, Tensor? rng, "
           "Tensor(a!)? processed_out, Tensor? frozen) -> (Tensor, Tensor, Tensor)",
    check=_check_denoise_stats, fake=_fake_denoise_stats, reference="denoise_stats_reference",
    reference_call=_denoise_stats_reference_call, samples=_denoise_stats_samples, bad=_denoise_stats_bad,
    mutates=("processed_out",),
))
_register(OpSpec(
    name="select_topk", schema="(Tensor scores, Tensor k, Tensor eligible) -> Tensor",
    check=_check_select_topk, fake=_fake_selection, reference="select_topk_reference",
    samples=_select_topk_samples, bad=_select_topk_bad,
))
_register(OpSpec(
    name="select_threshold", schema="(Tensor scores, Tensor eligible, float threshold) -> Tensor",
    check=_scored_rule("select_threshold", "threshold"), fake=_fake_selection, reference="select_threshold_reference",
    samples=_select_threshold_samples, bad=lambda: _scored_bad("threshold"),
))
_register(OpSpec(
    name="select_factor", schema="(Tensor scores, Tensor eligible, float factor) -> Tensor",
    check=_scored_rule("select_factor", "factor"), fake=_fake_selection, reference="select_factor_reference",
    samples=_select_factor_samples, bad=lambda: _scored_bad("factor"),
))
_register(OpSpec(
    name="select_entropy_bounded",
    schema="(Tensor error, Tensor entropy, Tensor eligible, float gamma) -> Tensor",
    check=_check_select_entropy_bounded, fake=_fake_selection, reference="select_entropy_bounded_reference",
    samples=_select_entropy_bounded_samples, bad=_select_entropy_bounded_bad,
))
_register(OpSpec(
    name="select_group", schema="(Tensor eligible, Tensor groups, Tensor step) -> Tensor",
    check=_check_select_group, fake=_fake_selection, reference="select_group_reference",
    samples=_select_group_samples, bad=_select_group_bad,
))
_register(OpSpec(
    name="commit_", schema="(Tensor(a!) x, Tensor token, Tensor select, int mask_id) -> (Tensor, Tensor)",
    check=_check_commit, fake=_fake_commit, reference="commit_reference",
    samples=_commit_samples, bad=_commit_bad, mutates=("x",),
))
_register(OpSpec(
    name="edit_",
    schema="(Tensor(a!) x, Tensor token, Tensor confidence, Tensor editable, float threshold) -> (Tensor, Tensor)",
    check=_check_edit, fake=_fake_edit, reference="edit_reference",
    samples=_edit_samples, bad=_edit_bad, mutates=("x",),
))
_register(OpSpec(
    name="renoise_",
    schema="(Tensor(a!) canvas, Tensor sample, Tensor accept, Tensor? frozen, int vocab_size, int seed, int offset, "
           "Tensor? rng=None) -> Tensor",
    check=_check_renoise, fake=_fake_renoise, reference="renoise_reference", reference_call=_renoise_reference_call,
    samples=_renoise_samples, bad=_renoise_bad, mutates=("canvas",),
))


_libraries: list[torch.library.Library] = []  # a Library's definitions last as long as the object


def define_ops(namespace: str) -> None:
    """Define ``namespace::<op>`` for every op with the registry's schema and fake.

    Used for the compiled ops: csrc/ registers only kernels (TORCH_LIBRARY_IMPL),
    so the schema written here is the only one. A C++ kernel whose signature does
    not match raises here, when dmkernels is imported."""
    library = torch.library.Library(namespace, "FRAGMENT")
    _libraries.append(library)
    for spec in OPS.values():
        library.define(spec.name + spec.schema)
        torch.library.register_fake(f"{namespace}::{spec.name}", lib=library)(spec.fake)


def triton_op(name: str):
    """Decorator: ``fn`` (the raw arguments, already checked) becomes
    ``torch.ops.dmkernels_triton.<name>`` with the registry's schema and fake; the
    op checks its arguments with the registry's checks first."""
    spec = OPS[name]

    def define(fn):
        def run(*args):
            return fn(*spec.check(*args))

        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        op = torch.library.custom_op(f"dmkernels_triton::{name}", run, mutates_args=spec.mutates,
                                     schema=spec.schema)
        op.register_fake(spec.fake)
        return op

    return define
