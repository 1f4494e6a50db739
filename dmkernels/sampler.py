"""The sampler: semi-autoregressive denoising driven by a policy, on the core ops.

A generation is a :class:`Sampler` built from the model, the prompts, a
:class:`~dmkernels.policies.Policy` and a :class:`SamplerConfig` (every setting,
with defaults); :func:`generate` and :func:`infill` build one and run it, and the
drop-ins of :mod:`dmkernels.compat` are small subclasses. A new model family
plugs in by overriding the hooks below, not by copying the loop.

The step protocol (:meth:`Sampler.run`):

1. **Blocks.** :meth:`Sampler.blocks` yields ``(block, start, end)``: the canvas
   positions ``[start, end)`` the next block denoises. Default: after the
   prompt, ``gen_length`` positions in blocks of ``block_length``, left to
   right. Dream's adapter yields one block over the whole canvas.
2. **Block start.** :meth:`Sampler.begin_block` tells the cache mode a block
   starts (``cache.begin_block(x)``: its first call refreshes the cache) and
   asks the policy's schedule for the block's plan
   (``policy.schedule.begin_block(masked per row, steps_per_block)``), which the
   sampler keeps (``self.plan``): neither the policy nor its schedule changes.
3. **Steps.** A scheduled policy runs ``steps_per_block`` steps; an adaptive one
   (or any with ``stop_when_block_done``) runs until the block has no mask,
   read through one device flag between steps. One :meth:`Sampler.step`:

   a. ``eligible``: the block's positions that still hold ``mask_id``.
   b. :meth:`Sampler.step_stats` returns ``(stats, rows)``:
      :meth:`Sampler.model_logits` calls the model through the cache mode
      (``cache.logits(runner, x, a, b, step)``: the whole canvas, or only the
      block against cached keys and values) and counts the call in
      ``model_calls``; the :class:`ModelRunner` adds CFG, Hugging Face keyword
      arguments and shape checks. ``rows`` are the logits rows that predict
      ``[start, end)`` (shifted by one with ``shift_logits``), then
      ``logits_processor(step, rows)``, then :meth:`Sampler.token_stats` (the
      fused token choice and scores, through the parallel strategy, with this
      step's Philox noise), then ``score_processor(stats)``.
   c. The noise offset advances by one (each step draws fresh noise).
   d. ``quota = plan.quota(step, masked per row)`` when the policy reads one.
   e. ``policy.select(StepContext(...))`` returns the bool mask to commit.
   f. :func:`dmkernels.commit_` writes the chosen tokens into the canvas and
      returns ``(changed, remaining)``.
   g. ``cache.update(changed, start, end)`` tells the cache what changed (see
      ``CacheMode.stale``), then :meth:`Sampler.after_step`.
4. **Block end.** With ``eos_token_id``, rows whose block holds EOS are done and
   their tail is filled with it; generation stops when every row is done.

Hooks a subclass overrides: ``blocks()``, ``begin_block(start, end)``,
``step_stats(step, start, end, eligible)``, ``model_logits(step, a, b)``,
``token_stats(rows, eligible, offset_shift=0)``, ``after_step(step, rows)``;
``step`` itself for a different step altogether. Parallel modes are
:class:`dmkernels.distributed.Parallel` strategies (``config.parallel``):
the sampler asks them for the token statistics of its rows, its rows' place in
the global batch and agreed done-flags, whatever the mode.

Nothing in a step reads device data on the host (tests run every policy under
:func:`dmkernels.testing.forbid_host_sync`). Between steps, adaptive policies
read one flag (is the block done?), and EOS handling reads one flag per block;
scheduled policies with no EOS read nothing at all.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Mapping, NamedTuple

import torch

from . import _checks as check
from . import distributed, ops
from .cache import NoCache, make_cache
from .constants import LLADA_MASK_ID
from .policies.base import Policy, StepContext
from .testing import step_scope

__all__ = ["Generation", "generate", "infill", "ModelRunner", "Sampler", "SamplerConfig", "capture_step"]

DEFAULT_MASK_ID = LLADA_MASK_ID  # when neither mask_id nor model.config.mask_token_id is given


class Generation(NamedTuple):
    sequences: torch.Tensor  # [B, prompt + gen_length]
    model_calls: int


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Every setting of one generation, with defaults (those of :func:`generate`,
    and LLaDA's lengths). Build one with only what differs, e.g.
    ``SamplerConfig(gen_length=256, block_length=32, steps=64, seed=0)``;
    ``dataclasses.replace(config, ...)`` derives another.

    The meaning of each field is as in :func:`generate`, plus:

    logits_processor : ``(step, rows [B, W, V]) -> rows``, run on the block's logits
        rows before the statistics (may modify them in place).
    score_processor : ``(stats) -> stats``, run on the statistics before selection.
    stop_when_block_done : stop a block as soon as it has no mask (default: for
        adaptive policies only; Fast-dLLM stops scheduled blocks early too).
    caller, arg_names : the public function named in error messages and its names
        for the arguments (e.g. ``{"input_ids": "prompt"}``), for adapters that
        keep another library's signature.
    """

    gen_length: int = 128
    block_length: int = 128
    steps: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    eos_token_id: int | None = None
    cache: object = None
    seed: int | None = None
    progress: bool = False
    mask_id: int | None = None
    shift_logits: bool = False
    backend: str | None = None
    parallel: distributed.Parallel | None = None
    logits_processor: Callable | None = None
    score_processor: Callable | None = None
    stop_when_block_done: bool | None = None
    caller: str = "generate"
    arg_names: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _fail(msg: str, caller: str = "generate", kind: type[Exception] = ValueError):
    """``caller`` is the public function the user called (e.g. "infill", "compat.llada.generate")."""
    check.fail(caller, msg, kind)


def _logits_of(out, caller: str = "generate") -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        _fail(f"the model must return logits [B, L, V] or an object with .logits, got {type(out).__name__}",
              caller, TypeError)
    return logits


def _model_device(model, fallback: torch.device) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, (torch.device, str)):
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return fallback


class ModelRunner:
    """Calls the model on a window of the canvas and returns ``(logits, output)``.

    Handles Hugging Face style keyword arguments, outputs with ``.logits`` and
    classifier-free guidance: with ``cfg_scale > 0`` the batch is doubled with an
    unconditional copy whose prompt positions are masked, and the guided logits
    ``u + (s + 1) (c - u)`` are formed in place in the conditional half of the
    model's output (no new tensor of the logits' size).
    """

    def __init__(self, model, *, attention_mask=None, cfg_scale=0.0, prompt_index=None, mask_id=None,
                 call: Callable | None = None):
        self.model = model
        self.cfg_scale = float(cfg_scale)
        self.batch_factor = 2 if self.cfg_scale > 0 else 1
        self.prompt_index = prompt_index
        self.mask_id = mask_id
        if attention_mask is not None and self.batch_factor == 2:
            attention_mask = torch.cat([attention_mask, attention_mask], dim=0)
        self.attention_mask = attention_mask
        self.call = call
        self.output_hidden_states = False  # set when the policy reads ctx.hidden
        self.last_output = None
        # Set by the Sampler: the public function named in errors, and ((what, id), ...)
        # that the logits' vocabulary must cover when the model's config does not give
        # its size (checked on the first call's logits, before anything is committed;
        # emptied then, since every call has the same vocabulary).
        self.caller = "generate"
        self.needed_ids = ()

    def __call__(self, x_window: torch.Tensor, start: int, **kwargs):
        B = x_window.shape[0]
        if self.batch_factor == 2:
            width = x_window.shape[1]
            prompt = self.prompt_index[:, start:start + width]
            unconditional = torch.where(prompt, torch.full_like(x_window, self.mask_id), x_window)
            x_window = torch.cat([x_window, unconditional], dim=0)
        if self.output_hidden_states:
            kwargs["output_hidden_states"] = True
        try:
            if self.call is not None:
                out = self.call(x_window, self.attention_mask, **kwargs)
            elif self.attention_mask is not None:
                out = self.model(x_window, attention_mask=self.attention_mask, **kwargs)
            else:
                out = self.model(x_window, **kwargs)
        except IndexError as e:
            # Vocabulary size unknown up front: an embedding lookup failing on the first
            # call is most likely an id outside the vocabulary; say which ids were given.
            if not self.needed_ids:  # a later call, or a vocabulary known up front
                raise
            given = ", ".join(f"{what} {value}" for what, value in self.needed_ids)
            raise ValueError(f"dmkernels.{self.caller}: the model's first call raised IndexError ({e}); every id "
                             f"must lie inside the model's vocabulary, and the largest given are: {given}") from e
        logits = self.check_logits(_logits_of(out, self.caller), tuple(x_window.shape))
        if self.batch_factor == 2:
            conditional, unconditional = logits[:B], logits[B:]
            logits = conditional.sub_(unconditional).mul_(self.cfg_scale + 1).add_(unconditional)
        self.last_output = out if self.output_hidden_states else None
        return logits, out

    def check_logits(self, logits: torch.Tensor, window: tuple) -> torch.Tensor:
        """The model's output must be [B, W, V] for its input [B, W] (host-side shape checks)."""
        if logits.dim() != 3 or tuple(logits.shape[:2]) != window:
            _fail(f"the model's output logits have shape {list(logits.shape)}; expected [B, L, V] = "
                  f"[{window[0]}, {window[1]}, V] for its input of shape {list(window)}", self.caller)
        if logits.dtype not in check.LOGITS_DTYPES:
            _fail(f"the model's output logits must be float32, bfloat16 or float16, got "
                  f"{str(logits.dtype).replace('torch.', '')}", self.caller, TypeError)
        V = logits.shape[-1]
        for what, value in self.needed_ids:
            if value >= V:
                _fail(f"{what} {value} is outside the model's vocabulary [0, {V}) (the width of its logits)",
                      self.caller)
        self.needed_ids = ()
        return logits

    def last_hidden(self, layer: int = -1) -> torch.Tensor:
        """Hidden states [B, W, H] of the latest call (conditional half): entry ``layer``
        of the model's ``hidden_states`` (-1: the last layer's output; -2: the input of
        the last block, in Hugging Face's convention)."""
        hidden = getattr(self.last_output, "hidden_states", None)
        if hidden is None:
            raise TypeError(f"dmkernels.{self.caller}: the policy reads the model's hidden states, but the model's "
                            "output has no .hidden_states (it must accept output_hidden_states=True)")
        if not -len(hidden) <= layer < len(hidden):
            raise ValueError(f"dmkernels.{self.caller}: the policy reads hidden_states[{layer}] (policy.hidden_layer), "
                             f"but the model returned {len(hidden)} hidden states")
        return hidden[layer][:hidden[layer].shape[0] // self.batch_factor]


def _rows(logits: torch.Tensor, w0: int, start: int, end: int, shift: bool) -> torch.Tensor:
    """Logits rows that predict canvas positions [start, end): row p, or row p - 1 for
    models whose logits are shifted (Dream: position 0 repeats row 0)."""
    if not shift:
        return logits[:, start - w0:end - w0]
    if start >= 1:
        return logits[:, start - 1 - w0:end - 1 - w0]
    # Only the very first position needs a copy of row 0 (small: [B, 1, V]).
    return torch.cat([logits[:, :1], logits[:, :max(end - 1, 0)]], dim=1)


class _HostFlag:
    """A device bool read by the host between steps without stalling the stream when
    it is not needed: the copy is queued non-blocking and awaited only on read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending = None

    def post(self, value: torch.Tensor) -> None:
        if self.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending = (host, event)
        else:
            self.pending = (value, None)

    def read(self) -> bool:
        host, event = self.pending
        if event is not None:
            event.synchronize()
        return bool(host)


def _with_settings(config, settings: dict) -> SamplerConfig:
    """``config`` (default: SamplerConfig()) with the keyword ``settings`` of Sampler(...) applied."""
    if config is None:
        config = SamplerConfig()
    elif not isinstance(config, SamplerConfig):
        raise TypeError(f"dmkernels.Sampler: config must be a dmkernels.sampler.SamplerConfig, "
                        f"got {type(config).__name__}")
    if settings:
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(SamplerConfig)})
        if unknown:
            raise TypeError(f"dmkernels.Sampler: unknown setting(s) {', '.join(unknown)} "
                            "(the fields of dmkernels.sampler.SamplerConfig)")
        config = dataclasses.replace(config, **settings)
    return config


class Sampler:
    """One generation: ``Sampler(model, input_ids, policy, config).run()``.

    ``config`` is a :class:`SamplerConfig`; keyword ``settings`` override its
    fields (``Sampler(model, ids, policy, gen_length=64, steps=16)``).
    ``attention_mask`` [B, P] as in :func:`generate`; ``canvas`` [B, L] makes it
    an infill (``input_ids`` is then ``canvas[:, :0]``); ``runner`` replaces the
    :class:`ModelRunner` (a model with another calling convention);
    ``recorder`` reaches the policy as ``ctx.recorder`` (the trainers pass a
    :class:`~dmkernels.policies.learned.Trajectory`). Subclasses override the
    hooks of the step protocol (see the module's documentation).
    """

    def __init__(self, model, input_ids, policy=None, config: SamplerConfig | None = None, *, attention_mask=None,
                 canvas=None, runner=None, recorder=None, **settings):
        config = _with_settings(config, settings)
        self.config = config
        # Every argument is checked here, on the host, before the first model call.
        # Messages name the public function the user called and its own names for
        # the arguments (config.caller, config.arg_names).
        caller = config.caller
        names = dict(config.arg_names or {})
        ids_name = "canvas" if canvas is not None else names.get("input_ids", "input_ids")
        mask_name = names.get("mask_id", "mask_id")

        def fail(msg, kind=ValueError):
            _fail(msg, caller, kind)

        if not isinstance(policy, Policy):
            fail(f"policy must be a dmkernels.policies.Policy, got {type(policy).__name__}")
        self._check_ids(input_ids, ids_name, fail)
        gen_length, block_length, steps = config.gen_length, config.block_length, config.steps
        for name, value in (("gen_length", gen_length), ("block_length", block_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"{names.get(name, name)} must be a positive int, got {value!r}")
        if gen_length % block_length:
            fail(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
        num_blocks = gen_length // block_length
        if not policy.adaptive:
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                fail(f"steps must be a positive int, got {steps!r}")
            if steps % num_blocks:
                fail(f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks})")
        # NaN or inf would not fail later: inf guidance leaves every position masked,
        # NaN turns guidance off.
        temperature = check.real(caller, "temperature", config.temperature, minimum=0.0)
        temperature = check.temperature(caller, temperature)  # 0 or >= 2**-100, as token_stats takes
        cfg_scale = check.real(caller, "cfg_scale", config.cfg_scale, minimum=0.0)
        seed = config.seed
        if seed is not None:
            seed = check.integer(caller, "seed", seed, minimum=0)
        backend = config.backend
        if backend is not None:
            ops.check_backend_name(caller, backend)
        mask_id, vocab_size, eos_token_id = self._check_vocabulary(model, config, mask_name, fail)
        needed_ids = self._check_id_range(canvas if canvas is not None else input_ids, ids_name, mask_name,
                                          mask_id, eos_token_id, vocab_size, fail)
        B, P = input_ids.shape
        device = _model_device(model, input_ids.device)
        attention_mask = self._place_attention_mask(attention_mask, canvas, ids_name, B, P, gen_length, device, fail)
        parallel = config.parallel if config.parallel is not None else distributed.SingleProcess()
        if not isinstance(parallel, distributed.Parallel):
            fail(f"parallel must be a dmkernels.distributed.VocabParallel or DataParallel, got {parallel!r}")
        refusal = parallel.refuse(seed=seed, logits_processor=config.logits_processor, temperature=temperature)
        if refusal:
            fail(refusal)
        try:
            self.cache = make_cache(config.cache)
        except ValueError as e:
            fail(str(e))

        self.B, self.P = B, P
        self.device = device
        self.gen_length, self.block_length = gen_length, block_length
        self.num_blocks = num_blocks
        self.steps_per_block = steps // num_blocks if not policy.adaptive else block_length
        self.policy = policy
        self.recorder = recorder
        self.plan = None  # the block's schedule plan (begin_block)
        self.temperature = float(temperature)
        self.eos_token_id = eos_token_id
        self.progress = config.progress
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.shift = bool(config.shift_logits)
        self.backend = backend
        self.logits_processor = config.logits_processor
        self.score_processor = config.score_processor
        self.parallel = parallel
        # This worker's first row in the global batch, and the shift of the policy
        # generator's seed (data parallel: collectives, once, before the first step).
        self.row_offset, generator_seed_shift = parallel.begin(B)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = int(seed)
        self.generator = None
        if policy.needs_generator:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed((self.seed + generator_seed_shift) % 2**63)
        if canvas is not None:  # infill: the canvas is the whole sequence, masks where to write
            self.x = canvas.to(device=device, dtype=torch.int64, copy=True)
        else:
            self.x = torch.full((B, P + gen_length), mask_id, dtype=torch.int64, device=device)
            self.x[:, :P] = input_ids.to(device)
        self.attention_mask = attention_mask
        self.runner = runner or ModelRunner(model, attention_mask=attention_mask, cfg_scale=cfg_scale,
                                            prompt_index=self.x != mask_id, mask_id=mask_id)
        if isinstance(self.runner, ModelRunner):
            self.runner.caller = caller
            # A vocabulary slice's width is not V: nothing to check the ids against.
            if vocab_size is None and not parallel.slices_vocabulary:
                self.runner.needed_ids = tuple(needed_ids)
        self.needs_hidden = bool(getattr(policy, "needs_hidden", False))
        self.runner.output_hidden_states = self.needs_hidden
        # Which of the model's hidden_states the policy reads (policy.hidden_layer, -1 the
        # last layer's output by default; -2 the input of the last block): a host int.
        self.hidden_layer = getattr(policy, "hidden_layer", -1)
        if isinstance(self.hidden_layer, bool) or not isinstance(self.hidden_layer, int):
            _fail(f"policy.hidden_layer must be an int (an index into the model's hidden_states), got "
                  f"{self.hidden_layer!r}", caller, TypeError)
        self.hidden = None
        self.model_calls = 0
        self.noise_offset = 0
        self.rng = None  # (seed, offset) on the device instead of host ints: see capture_step
        # Adaptive policies run until the block is done; scheduled ones run their steps
        # (Fast-dLLM's loops also stop a scheduled block early once it is done).
        stop = config.stop_when_block_done
        self.stop_when_block_done = policy.adaptive if stop is None else stop

    # Argument checks (host side, before the first model call) ----------------

    @staticmethod
    def _check_ids(input_ids, ids_name, fail) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            fail(f"{ids_name} must be a 2-D tensor [B, prompt_length]")
        if input_ids.dtype not in (torch.int64, torch.int32):
            fail(f"{ids_name} must be int64 or int32, got {input_ids.dtype}")
        if input_ids.shape[0] == 0:  # refused rather than returned empty: nothing to generate
            fail(f"{ids_name} has no rows (a batch of 0): give at least one sequence")

    @staticmethod
    def _check_vocabulary(model, config, mask_name, fail):
        """(mask_id, vocab_size or None when the model does not say, eos_token_id)."""
        model_config = getattr(model, "config", None)
        mask_id = config.mask_id
        if mask_id is None:
            mask_id = getattr(model_config, "mask_token_id", None)
            mask_id = DEFAULT_MASK_ID if mask_id is None else mask_id
        vocab_size = getattr(model_config, "vocab_size", None)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            vocab_size = None  # unknown: checked against the first logits instead
        if isinstance(mask_id, bool) or not isinstance(mask_id, int):
            fail(f"{mask_name} must be an int, got {type(mask_id).__name__} {mask_id!r}", TypeError)
        if mask_id < 0 or (vocab_size is not None and mask_id >= vocab_size):
            fail(f"{mask_name} = {mask_id} is outside the vocabulary [0, {vocab_size})")
        eos_token_id = config.eos_token_id
        if eos_token_id is not None:
            eos_token_id = check.integer(config.caller, "eos_token_id", eos_token_id, minimum=0)
            if vocab_size is not None and eos_token_id >= vocab_size:
                fail(f"eos_token_id = {eos_token_id} is outside the vocabulary [0, {vocab_size})")
            if eos_token_id == mask_id:
                fail(f"eos_token_id must differ from {mask_name} ({mask_id}): a finished row would be masks")
        return mask_id, vocab_size, eos_token_id

    @staticmethod
    def _check_id_range(ids, ids_name, mask_name, mask_id, eos_token_id, vocab_size, fail) -> list:
        """The ids' range, read once on the host before generation (not inside a step):
        an id outside the vocabulary fails in the model's embedding with an unhelpful
        IndexError on CPU, and a device-side assert on CUDA. Returns the largest ids
        given, to check against the first logits' width when the vocabulary is unknown."""
        needed_ids = []
        if ids.numel():
            low, high = (int(v) for v in torch.aminmax(ids))
            if low < 0 or (vocab_size is not None and high >= vocab_size):
                bad = low if low < 0 else high
                fail(f"{ids_name} holds id {bad}, outside the vocabulary [0, {vocab_size if vocab_size else 'V'})")
            needed_ids.append((f"{ids_name} holds id", high))
        needed_ids.append((f"{mask_name} =", mask_id))
        if eos_token_id is not None:
            needed_ids.append(("eos_token_id =", eos_token_id))
        return needed_ids

    @staticmethod
    def _place_attention_mask(attention_mask, canvas, ids_name, B, P, gen_length, device, fail):
        if attention_mask is None:
            return None
        if canvas is not None:  # infill: passed to the model as is
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(canvas.shape):
                fail(f"attention_mask must have the shape of the canvas {list(canvas.shape)}")
            return attention_mask.to(device)
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, P):
            fail(f"attention_mask must have the shape of {ids_name} {[B, P]}")
        return torch.cat(
            [attention_mask.to(device), torch.ones(B, gen_length, dtype=attention_mask.dtype, device=device)], 1)

    # Hooks of the step protocol ---------------------------------------------

    def blocks(self):
        """Yields ``(block, start, end)``: the canvas positions of each block, in order."""
        for b in range(self.num_blocks):
            start = self.P + b * self.block_length
            yield b, start, start + self.block_length

    def begin_block(self, start: int, end: int) -> None:
        """A block starts: the cache mode refreshes at its next call, and the policy's
        schedule plans the block (the plan is kept here, not on the schedule)."""
        self.cache.begin_block(self.x)
        schedule = self.policy.schedule
        self.plan = None
        if schedule is not None:
            plan = schedule.begin_block((self.x[:, start:end] == self.mask_id).sum(-1), self.steps_per_block)
            # A schedule of the older protocol keeps its state on itself and returns None.
            self.plan = schedule if plan is None else plan

    def after_step(self, step: int, logits_rows: torch.Tensor) -> None:
        """After the commit of each step (Dream's hooks and history use it)."""

    def model_logits(self, step, a: int, b: int) -> tuple[torch.Tensor, int]:
        """One model call through the cache mode, counted: ``(logits, w0)``, logits
        whose row 0 is canvas position ``w0`` and that cover positions ``[a, b)``."""
        self.model_calls += 1
        return self.cache.logits(self.runner, self.x, a, b, step)

    def token_stats(self, rows: torch.Tensor, eligible: torch.Tensor, offset_shift: int = 0) -> ops.TokenStats:
        """token_stats of this step's noise: host (seed, offset), or the device ``rng`` tensor."""
        if self.rng is not None:
            noise = dict(rng=self.rng)
        else:
            noise = dict(seed=self.seed, offset=self.noise_offset + offset_shift)
        return self.parallel.token_stats(rows, row_offset=self.row_offset, temperature=self.temperature,
                                         positions=eligible, tempered_scores=self.policy.tempered_scores,
                                         backend=self.backend, **noise)

    def agree(self, done: torch.Tensor) -> torch.Tensor:
        """A done-flag every worker agrees on (see Parallel.agree)."""
        return self.parallel.agree(done)

    def step_stats(self, step: int, start: int, end: int, eligible: torch.Tensor):
        """Model call and statistics of positions [start, end); returns (stats, logits rows)."""
        a, b = (max(start - 1, 0), end - 1) if self.shift else (start, end)
        logits, w0 = self.model_logits(step, a, b)
        rows = _rows(logits, w0, start, end, self.shift)
        if self.needs_hidden:
            self.hidden = _rows(self.runner.last_hidden(self.hidden_layer), w0, start, end, self.shift)
        if self.logits_processor is not None:
            rows = self.logits_processor(step, rows)
        stats = self.token_stats(rows, eligible)
        if self.score_processor is not None:
            stats = self.score_processor(stats)
        return stats, rows

    def step(self, block: int, start: int, end: int, i: int):
        """One denoising step of the block [start, end); returns the masks left per row."""
        x_block = self.x[:, start:end]
        eligible = x_block == self.mask_id
        stats, rows = self.step_stats(i, start, end, eligible)
        self.noise_offset += 1
        if self.rng is not None:
            self.rng[1:].add_(1)
        plan = self.plan
        quota = None
        if plan is not None and self.policy.uses_quota:
            quota = plan.quota(i, eligible.sum(-1))
        ctx = StepContext(stats=stats, eligible=eligible, step=i, steps=self.steps_per_block, block=block,
                          quota=quota, logits=rows, x=x_block, generator=self.generator, schedule=plan,
                          hidden=self.hidden, backend=self.backend, recorder=self.recorder)
        select = self.policy.select(ctx)
        changed, remaining = ops.commit_(x_block, stats.token, select, self.mask_id, backend=self.backend)
        self.cache.update(changed, start, end)
        self.after_step(i, rows)
        return remaining

    @torch.no_grad()
    def run(self) -> Generation:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.num_blocks * self.steps_per_block, desc="dmkernels", unit="step")
        finished = torch.zeros(self.B, dtype=torch.bool, device=self.device) if self.eos_token_id is not None else None
        all_finished = _HostFlag(self.device)
        block_done = _HostFlag(self.device)
        for block, start, end in self.blocks():
            if finished is not None and all_finished.pending is not None and all_finished.read():
                break
            x_block = self.x[:, start:end]
            self.begin_block(start, end)
            for i in range(self.steps_per_block):
                if self.stop_when_block_done and i > 0 and block_done.read():
                    break
                with step_scope():
                    remaining = self.step(block, start, end, i)
                if self.stop_when_block_done:
                    block_done.post(self.agree(remaining.max() == 0))
                if bar is not None:
                    bar.update(1)
            if finished is not None:
                finished |= (x_block == self.eos_token_id).any(-1)
                tail = self.x[:, end:]
                tail.copy_(torch.where(finished[:, None] & (tail == self.mask_id),
                                       torch.full_like(tail, self.eos_token_id), tail))
                all_finished.post(self.agree(finished.all()))
        if bar is not None:
            bar.close()
        return Generation(self.x, self.model_calls)


@torch.no_grad()
def capture_step(sampler: Sampler, block: int = 0):
    """Capture one denoising step of ``block`` as a CUDA graph.

    For scheduled policies without a KV cache (static shapes). The step index lives
    in a device scalar and the noise state in a device tensor, so one graph serves
    every step of the block: ``step.fill_(i); graph.replay()`` for i in
    ``range(sampler.steps_per_block)`` commits exactly what the eager loop commits.
    Returns ``(graph, step)``.
    """
    if sampler.device.type != "cuda":
        raise ValueError("capture_step: the sampler's model must be on a CUDA device")
    if sampler.policy.adaptive or not isinstance(sampler.cache, NoCache):
        raise ValueError("capture_step: needs a scheduled policy and cache=None (static shapes)")
    _, start, end = list(sampler.blocks())[block]
    sampler.rng = torch.tensor([sampler.seed, sampler.noise_offset], dtype=torch.int64, device=sampler.device)
    sampler.begin_block(start, end)
    step = torch.zeros((), dtype=torch.int64, device=sampler.device)
    canvas, rng = sampler.x.clone(), sampler.rng.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocations, autotuning) outside the capture
        for _ in range(2):
            sampler.step(block, start, end, step)
    torch.cuda.current_stream().wait_stream(side)
    sampler.x.copy_(canvas)
    sampler.rng.copy_(rng)
    graph = torch.cuda.CUDAGraph()
    if sampler.generator is not None:
        graph.register_generator_state(sampler.generator)
    with torch.cuda.graph(graph):
        sampler.step(block, start, end, step)
    return graph, step


def _generate_sampler(model, input_ids, *, policy=None, attention_mask=None, recorder=None, **settings) -> Sampler:
    """The :class:`Sampler` that :func:`generate` runs with these arguments (and a
    ``recorder``); for the trainers' rollouts."""
    return Sampler(model, input_ids, policy, SamplerConfig(**settings), attention_mask=attention_mask,
                   recorder=recorder)


def _infill_sampler(model, canvas, *, steps, policy=None, block_length=None, attention_mask=None, recorder=None,
                    **settings) -> Sampler:
    """The :class:`Sampler` that :func:`infill` runs with these arguments (and a ``recorder``)."""
    if not isinstance(canvas, torch.Tensor) or canvas.dim() != 2 or canvas.shape[1] < 1:
        _fail("canvas must be a 2-D tensor [B, L] with L >= 1", "infill")
    if canvas.dtype not in (torch.int64, torch.int32):
        _fail(f"canvas must be int64 or int32, got {canvas.dtype}", "infill")
    L = canvas.shape[1]
    config = SamplerConfig(gen_length=L, block_length=L if block_length is None else block_length, steps=steps,
                           caller="infill", **settings)
    return Sampler(model, canvas[:, :0], policy, config, attention_mask=attention_mask, canvas=canvas,
                   recorder=recorder)


@torch.no_grad()
def generate(model, input_ids, *, attention_mask=None, gen_length, block_length, steps, policy,
             temperature=0.0, cfg_scale=0.0, eos_token_id=None, cache=None, seed=None, progress=False,
             mask_id=None, shift_logits=False, backend=None, parallel=None) -> Generation:
    """Generate with a masked diffusion LM, semi-autoregressively in blocks.

    Parameters
    ----------
    model : callable returning logits [B, L, V] (or an object with ``.logits``); a
        Hugging Face model works as is. For cache modes, see :mod:`dmkernels.cache`.
    input_ids : int Tensor [B, P], left-padded prompts (B >= 1; ids inside the
        vocabulary, checked against ``model.config.vocab_size`` when the model has
        one, else against the width of the first call's logits).
    attention_mask : Tensor [B, P], optional (1 = real token); passed to the model
        extended with ones over the generated part.
    gen_length, block_length : tokens to generate, in blocks of ``block_length``.
    steps : total steps over all blocks for scheduled policies (a multiple of the
        number of blocks); adaptive policies ignore it and run each block until no
        mask is left.
    policy : a :class:`dmkernels.policies.Policy`.
    temperature : 0 takes the argmax; T > 0 samples (Gumbel-max, seeded Philox noise).
    cfg_scale : classifier-free guidance; the unconditional pass masks the prompt.
    eos_token_id : when given (an id other than ``mask_id``), a row whose finished
        block contains it is done, its remaining positions are filled with it, and
        generation stops when every row is done.
    cache : None, "prefix", "dual" or a :class:`dmkernels.cache.CacheMode`.
    seed : seeds the token noise and the policy's random numbers; None draws one
        from torch's default generator.
    progress : show a tqdm bar.
    mask_id : defaults to ``model.config.mask_token_id``, else LLaDA's 126336.
    shift_logits : the model's logits are shifted right by one (Dream).
    backend : forwarded to the ops (see :func:`dmkernels.token_stats`).
    parallel : None, :class:`dmkernels.distributed.VocabParallel` (the model returns
        this rank's vocabulary slice of the logits; statistics are merged over the
        group, every rank gets the same tokens; ``seed`` required) or
        :class:`dmkernels.distributed.DataParallel` (each worker generates its own
        rows with the noise of its rows in the global batch).

    Every argument is checked on the host before the first model call; a bad one
    raises ValueError or TypeError naming it. The same as
    ``Sampler(model, input_ids, policy, SamplerConfig(gen_length=..., ...),
    attention_mask=attention_mask).run()`` (see :class:`Sampler` for the hooks).

    Returns
    -------
    Generation(sequences [B, P + gen_length], model_calls)
    """
    return _generate_sampler(model, input_ids, policy=policy, attention_mask=attention_mask, gen_length=gen_length,
                             block_length=block_length, steps=steps, temperature=temperature, cfg_scale=cfg_scale,
                             eos_token_id=eos_token_id, cache=cache, seed=seed, progress=progress, mask_id=mask_id,
                             shift_logits=shift_logits, backend=backend, parallel=parallel).run()


@torch.no_grad()
def infill(model, canvas, *, steps, policy, block_length=None, attention_mask=None, temperature=0.0,
           cfg_scale=0.0, seed=None, progress=False, mask_id=None, backend=None, parallel=None) -> Generation:
    """Fill the masks of ``canvas`` [B, L] wherever they are (Sudoku cells, infilling).

    The same sampler as :func:`generate` over the whole canvas: blocks of
    ``block_length`` (default: the whole canvas, i.e. no semi-autoregression), the
    policy choosing among each block's masked positions; tokens already on the
    canvas are never changed. ``steps`` counts steps over all blocks (scheduled
    policies); ``attention_mask`` [B, L] is passed to the model as is. Other
    arguments as in :func:`generate`. Returns Generation(sequences [B, L], model_calls).
    """
    return _infill_sampler(model, canvas, steps=steps, policy=policy, block_length=block_length,
                           attention_mask=attention_mask, temperature=temperature, cfg_scale=cfg_scale, seed=seed,
                           progress=progress, mask_id=mask_id, backend=backend, parallel=parallel).run()


def _signature_check(fn, *args, **kwargs) -> None:
    """Raise the TypeError that calling ``fn`` (generate or infill) with these
    arguments would raise (an unknown or missing keyword), without calling it."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"dmkernels.{fn.__name__}: {e}") from None
