"""DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``): its denoising
step on dmkernels' ops.

``patch(model)`` once, then call ``model.generate(...)`` as before: same arguments
(``generation_config``, temperature schedule, ``sampler_config`` with its
``entropy_bound``, adaptive stopping, ``streamer``, ``decoder_input_ids``,
``attention_mask``, ``cache``, batches), same return type. Only the step inside the
denoising loop changes (``_denoising_step`` is replaced on the instance), so
transformers' own ``generate`` keeps its argument handling, streamer calls,
finalisation with EOS and padding, ``tokens_per_forward`` and compile path.
``unpatch(model)`` restores it. ``denoising_step(model, ...)`` is the step itself,
with transformers' keyword arguments.

Per step, upstream materialises several full-vocabulary copies (the processed
logits, a float32 softmax, multinomial's noise, a Categorical's log-probabilities
and entropy terms twice: once for acceptance, once for stopping) and syncs the host
four to five times. This step makes one pass (:func:`dmkernels.denoise_stats`:
sample, argmax, entropy and the processed logits written straight into the
self-conditioning buffer), then works on ``[B, C]`` tensors only: acceptance by
:func:`dmkernels.select_entropy_bounded`, re-noising by :func:`dmkernels.renoise_`
in place, the stopping rule from the same entropies. No host sync inside the step.

What is identical to transformers (given the same logits and the same sampled
tokens): the argmax canvas (first index of the maximum of ``logits / T``, IEEE
division, as torch computes it), the self-conditioning logits handed to the next
model call (``(logits / T).to(embedding dtype)`` bit for bit, finished rows keep
theirs), the canvas of finished rows, the stability history and the ``|=`` update of
``finished_denoising``; the temperature ``T`` is computed by upstream's own
expression on the same device. The accept mask is the same rule (see below) and
equal away from the two boundary cases listed there.

Where it differs, and why:

- **Random numbers.** The sample is a Gumbel-max draw of ``softmax(x * float32(1/T))``
  with dmkernels' counter-based noise (the same tokens as ``dmkernels.token_stats``),
  the re-noise tokens come from renoise_'s own stream; upstream uses
  ``torch.multinomial`` and ``torch.randint`` on the device's generator. Same
  distributions, other draws. The seed is drawn once per ``generate`` (per sampler
  object) from torch's default CPU generator, so ``torch.manual_seed`` governs it;
  the offset advances by one per step (on the device for GPU tensors). The initial
  canvas is still upstream's ``torch.randint``.
- **Acceptance.** DiffusionGemma sorts the entropies ascending and accepts entry k
  when ``cumsum_k - h_k <= entropy_bound``. ``select_entropy_bounded(H, H, all, bound)``
  accepts the longest prefix with ``sum - max <= bound``: with the positions sorted
  by entropy the running max is the current entry, so it is the same rule in exact
  arithmetic. Differences: ties are ordered by position (upstream's
  ``torch.sort(stable=False)`` leaves them unspecified); the result is always a prefix
  (upstream compares elementwise, and a float32 ``cumsum - h`` that drops by one ulp
  at the bound can accept a non-prefix set); sums are float64 in order (upstream:
  cumsum in the logits' dtype); the entropies are float32 from the one pass (upstream:
  ``Categorical`` in the logits' dtype, bf16 for bf16 logits). So masks can differ
  only where a prefix sum lies within rounding of the bound or tied entropies
  straddle the cut.
- **Stopping.** ``StableAndConfidentStoppingCriteria`` is reproduced on its own
  ``argmax_canvas_history`` (compare, roll, write: upstream's order, so ``reset()``
  still works); the mean entropy is the float32 mean of the same entropies
  (upstream recomputes a Categorical entropy in the logits' dtype; the model's
  logits are float32).
- **Finished rows** are not read at all (they cost nothing); their
  ``sampler.accepted_token_mask`` row is whatever the rule gives for entropies of
  +inf (upstream computes it from the new logits; neither uses it). A NaN in a
  finished row's logits is therefore not reported (upstream's multinomial reads
  every row).
- **Invalid logits.** A row with a NaN or +inf logit, only -inf, or no finite
  ``x / T`` raises ``ValueError`` naming ``logits`` (upstream: a ``RuntimeError``
  from multinomial). For CPU tensors at once; on a GPU a device flag records it and
  the error is raised at the end of the canvas, in the sync upstream's
  ``_finalize_canvas`` already makes (such rows write token 0 meanwhile).
- **Self-conditioning buffer.** The tensor the step returns is a buffer owned by the
  step, overwritten in place by the next step of the same ``generate`` (after the
  model has consumed it), so the steady state allocates nothing the size of the
  logits. A tensor the caller passed (``self_conditioning_logits=`` to ``generate``)
  is never written.
- **Logits processors.** User processors run first, in torch, as upstream. The
  temperature processor that ``generate`` appends last is fused into the pass;
  if a ``LinearTemperatureScheduleLogitsProcessor`` is not the last processor, the
  whole list runs in torch and the pass uses T = 1.
- **Bad settings fail before any model call**: an ``entropy_bound`` that is not a
  finite number > 0 (the config's constructor checks it, a later assignment is not
  checked upstream) and a schedule giving T < 2**-100 or not finite raise
  ``ValueError``; ``patch`` refuses other models (``TypeError``) and a transformers
  whose DiffusionGemma internals differ from the ones this was written against
  (``RuntimeError``; tested with transformers 5.24.0).
"""
from __future__ import annotations

import inspect
import math
import operator
import types

import torch

from .. import ops
from ..testing import step_scope

__all__ = ["patch", "unpatch", "denoising_step"]

_NAME = "compat.diffusion_gemma"
TESTED_TRANSFORMERS = "5.24.0"
_MIN_T = 2.0 ** -100  # the ops' smallest temperature (the scaled noise leaves float32 below it)

# What this step relies on in transformers' generation_diffusion_gemma.py.
_STEP_PARAMS = ("self", "decoder_forward", "current_canvas", "argmax_canvas", "input_ids", "decoder_position_ids",
                "self_conditioning_logits", "mask_mapping", "cache", "finished_denoising", "cur_step", "sampler",
                "logits_processor", "diffusion_stopping_criteria", "model_kwargs")
_FINALIZE_PARAMS = ("input_ids", "finished_sequences", "generation_config", "stopping_criteria", "canvas_length",
                    "eos_tensor")
_PREPARE_SAMPLER_PARAMS = ("self", "generation_config")
_PATCHED = ("_denoising_step", "_prepare_sampler", "_finalize_canvas")
_RECORD = "_dmkernels_diffusion_gemma"


def _fail(where: str, message: str, kind: type[Exception] = ValueError):
    raise kind(f"dmkernels.{_NAME}{where}: {message}")


def _modules():
    """transformers' DiffusionGemma generation module and model class (imported
    lazily: dmkernels does not need transformers otherwise)."""
    try:
        from transformers.models.diffusion_gemma import generation_diffusion_gemma as gen
        from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaForBlockDiffusion
    except ImportError as e:
        _fail("", f"needs transformers with DiffusionGemma (tested with {TESTED_TRANSFORMERS}): {e}", RuntimeError)
    return gen, DiffusionGemmaForBlockDiffusion


def _upstream():
    """:func:`_modules`, checked against what this module relies on (RuntimeError
    otherwise)."""
    gen, model_class = _modules()
    import transformers  # importable: _modules imported from it

    version = getattr(transformers, "__version__", "?")
    problems = []
    mixin = getattr(gen, "DiffusionGemmaGenerationMixin", None)
    for name, want in (("_denoising_step", _STEP_PARAMS), ("_finalize_canvas", _FINALIZE_PARAMS),
                       ("_prepare_sampler", _PREPARE_SAMPLER_PARAMS)):
        fn = getattr(mixin, name, None)
        try:
            got = tuple(inspect.signature(fn).parameters) if fn is not None else None
        except (TypeError, ValueError):
            got = None
        if got != want:
            problems.append(f"DiffusionGemmaGenerationMixin.{name}{'' if got is None else str(got)}")
    for name in ("LinearTemperatureScheduleLogitsProcessor", "StableAndConfidentStoppingCriteria",
                 "EntropyBoundSampler"):
        if not isinstance(getattr(gen, name, None), type):
            problems.append(name)
    if problems:
        _fail("", f"transformers {version} differs from the DiffusionGemma code this step was written against "
                  f"(transformers {TESTED_TRANSFORMERS}): {', '.join(problems)}", RuntimeError)
    return gen, model_class


# ---------------------------------------------------------------------------
# Host checks (free: Python values), before any model call.
# ---------------------------------------------------------------------------


def _check_entropy_bound(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(where, f"entropy_bound must be a finite number > 0, got {value!r}")
    return float(value)


def _schedule_t(proc, cur_step: torch.Tensor) -> torch.Tensor:
    """The temperature of LinearTemperatureScheduleLogitsProcessor at ``cur_step``
    (an int32 0-d tensor), by upstream's expression, so on the same device it has
    the same bits as the T upstream divides by."""
    return proc.t_min + ((proc.t_max - proc.t_min) * (cur_step / proc.max_denoising_steps))


def _host_t(proc, step: int) -> float:
    return float(_schedule_t(proc, torch.tensor(step, dtype=torch.int32)))


def _check_t(where: str, t: float, step: int, t_min, t_max, n) -> None:
    if not (math.isfinite(t) and t >= _MIN_T):
        _fail(where, f"temperature must be finite and >= 2**-100 at every step; the schedule t_min={t_min!r}, "
                     f"t_max={t_max!r}, max_denoising_steps={n!r} gives {t!r} at step {step}")


def _check_schedule(where: str, proc) -> None:
    """T over the whole schedule: it is linear in the step, so its ends bound it."""
    n = proc.max_denoising_steps
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        _fail(where, f"max_denoising_steps must be an int > 0, got {n!r}")
    for step in (1, n):
        _check_t(where, _host_t(proc, step), step, proc.t_min, proc.t_max, n)


class _Schedule:  # the processor's three numbers, for checking a generation config
    def __init__(self, t_min, t_max, n):
        self.t_min, self.t_max, self.max_denoising_steps = t_min, t_max, n


def _check_generation_config(config) -> None:
    where = ".generate"
    sampler_config = getattr(config, "sampler_config", None)
    if sampler_config is not None:
        _check_entropy_bound(where, getattr(sampler_config, "entropy_bound", None))
    if config.t_min is not None and config.t_max is not None:
        _check_schedule(where, _Schedule(config.t_min, config.t_max, config.max_denoising_steps))


def _split_processors(gen, logits_processor):
    """(processors to run in torch, the fused temperature processor or None)."""
    procs = list(logits_processor) if logits_processor is not None else []
    if procs and type(procs[-1]) is gen.LinearTemperatureScheduleLogitsProcessor:
        return procs[:-1], procs[-1]
    return procs, None


# ---------------------------------------------------------------------------
# Per-generate state (on the sampler object generate builds once per call).
# ---------------------------------------------------------------------------


class _State:
    """Noise and buffers of one ``generate`` call."""

    def __init__(self):
        # torch's default CPU generator: torch.manual_seed governs the step's noise.
        self.seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
        self.offset = 0            # host counter (CPU tensors: read for free, no tensor to read)
        self.rng = None            # (seed, offset) int64 [2] on a GPU; the offset advances there
        self.buf = None            # the self-conditioning buffer handed to the model
        self.all_true = None       # eligible: every position, every step (as upstream)
        self.bad = None            # GPU: did a live row have no distribution? (checked per canvas)


def _reads_free(device: torch.device) -> bool:
    """Whether reading a tensor on ``device`` from the host costs no sync (the CPU):
    there the step passes host ints and checks rows at once; elsewhere the noise
    offset and the invalid-row flag stay on the device."""
    return device.type == "cpu"


def _state(sampler) -> _State:
    st = getattr(sampler, "_dmkernels_state", None)
    if st is None:
        st = _State()
        sampler._dmkernels_state = st
    return st


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------


@torch.no_grad()
def denoising_step(model, decoder_forward, current_canvas, argmax_canvas, input_ids, decoder_position_ids,
                   self_conditioning_logits, mask_mapping, cache, finished_denoising, cur_step, sampler,
                   logits_processor, diffusion_stopping_criteria, **model_kwargs):
    """One DiffusionGemma denoising step on dmkernels' ops: transformers'
    ``DiffusionGemmaGenerationMixin._denoising_step`` with ``model`` as ``self``
    (same keyword arguments, same 4-tuple ``(new canvas, argmax canvas,
    self-conditioning logits, finished_denoising)``; ``finished_denoising`` is
    updated in place, as upstream does).

    The returned self-conditioning tensor is the step's buffer: the next step of the
    same ``sampler`` overwrites it (``generate`` only hands it to the next model
    call). Logits rows without a distribution raise ValueError for CPU tensors; on
    a GPU they are flagged on the device, and the patched ``generate`` raises at the
    end of the canvas (a direct call does not read the flag). The module docstring
    lists what is identical to transformers and what differs."""
    gen, _ = _modules()
    where = ".denoising_step"
    # Host checks first: Python values only, before the model runs.
    bound = _check_entropy_bound(where, sampler.entropy_bound)
    step = operator.index(cur_step)
    torch_procs, temp_proc = _split_processors(gen, logits_processor)
    if temp_proc is not None:
        t_host = _host_t(temp_proc, step)
        _check_t(where, t_host, step, temp_proc.t_min, temp_proc.t_max, temp_proc.max_denoising_steps)
    stopping = diffusion_stopping_criteria
    if stopping is not None and not isinstance(stopping, gen.StableAndConfidentStoppingCriteria):
        _fail(where, "diffusion_stopping_criteria must be None or a StableAndConfidentStoppingCriteria, got "
                     f"{type(stopping).__name__}", TypeError)

    device = current_canvas.device
    on_cpu = _reads_free(device)
    st = _state(sampler)
    if on_cpu:
        noise = dict(seed=st.seed, offset=st.offset)
    else:
        if st.rng is None or st.rng.device != device:
            st.rng = torch.zeros(2, dtype=torch.int64, device=device)
            st.rng[0] = st.seed  # a fill with a host scalar: no copy, no sync
            st.rng[1] = st.offset
        noise = dict(rng=st.rng)
    st.offset += 1
    emb_dtype = model.model.decoder.embed_tokens.weight.dtype
    sc_in = self_conditioning_logits
    # Upstream freezes finished rows only when there is a stopping criterion.
    fin = finished_denoising if stopping is not None else None

    with step_scope():
        cur = torch.full((), step, dtype=torch.int32, device=device)  # upstream's cur_step tensor, without a copy
        torch.compiler.cudagraph_mark_step_begin()  # as upstream: the compiled decoder uses CUDA graphs
        outputs = decoder_forward(decoder_input_ids=current_canvas, self_conditioning_logits=sc_in,
                                  decoder_attention_mask=mask_mapping, cache=cache,
                                  decoder_position_ids=decoder_position_ids, **model_kwargs)
        logits = outputs.logits
        if torch_procs:  # upstream's list call (it passes cur_step only to processors that take it)
            logits = gen.LogitsProcessorList(torch_procs)(input_ids, logits, cur_step=cur)
        if temp_proc is None:
            temperature = 1.0
        elif on_cpu:
            temperature = t_host  # the same float32 value, without reading a tensor in the step
        else:
            temperature = _schedule_t(temp_proc, cur).to(torch.float32)

        # The self-conditioning buffer: the one the model just consumed is ours to
        # overwrite; a tensor the caller passed is copied, never written.
        buf = st.buf
        if not (buf is not None and buf.shape == logits.shape and buf.dtype == emb_dtype and buf.device == device):
            buf = torch.empty(logits.shape, dtype=emb_dtype, device=device)
        frozen_rows = None
        if sc_in is not None and sc_in is not buf:
            buf.copy_(sc_in)  # finished rows keep the previous logits, as upstream's where()
        if fin is not None and sc_in is not None:
            frozen_rows = fin[:, None].expand(current_canvas.shape)
        st.buf = buf
        stats = ops.denoise_stats(logits, temperature, processed_out=buf, frozen=frozen_rows, **noise)

    live_bad = stats.token < 0
    if frozen_rows is not None:
        live_bad = live_bad & ~frozen_rows
    if on_cpu:
        # Reading a CPU tensor is free (there is no device to wait for).
        if bool(live_bad.any()):
            rows = live_bad.nonzero().tolist()[:4]
            _fail(where, f"logits row(s) {rows} (batch, canvas position) have no distribution: a NaN or +inf "
                         "logit, only -inf, or no finite logits / T")

    with step_scope():
        token, new_argmax = stats.token, stats.argmax
        if not on_cpu:
            flag = live_bad.any()
            st.bad = flag if st.bad is None else st.bad | flag
            # Keep the canvas valid for the model until the flag is read at the end of the canvas.
            token, new_argmax = token.clamp_min(0), new_argmax.clamp_min(0)
        if st.all_true is None or st.all_true.shape != current_canvas.shape or st.all_true.device != device:
            st.all_true = torch.ones(current_canvas.shape, dtype=torch.bool, device=device)
        accept = ops.select_entropy_bounded(stats.entropy, stats.entropy, st.all_true, bound)
        sampler.accepted_token_mask = accept

        new_canvas = current_canvas.to(torch.int64, copy=True)  # never the caller's tensor
        ops.renoise_(new_canvas, token, accept, sampler.vocab_size, frozen=fin, **noise)
        if not on_cpu:
            st.rng[1].add_(1)

        if stopping is not None:
            new_argmax = torch.where(fin[:, None], argmax_canvas, new_argmax)
            threshold = stopping.stability_threshold
            if threshold == 0:
                stable = torch.ones(fin.shape, dtype=torch.bool, device=device)
            else:
                history = stopping.argmax_canvas_history
                if history is None:
                    history = torch.full((threshold, *new_argmax.shape), -1, dtype=new_argmax.dtype, device=device)
                stable = (history == new_argmax[None]).all(-1).all(0)  # compared before the update, as upstream
                history = torch.roll(history, shifts=-1, dims=0)
                history[-1] = new_argmax
                stopping.argmax_canvas_history = history
            confident = stats.entropy.mean(-1) < stopping.confidence_threshold
            finished_denoising |= stable & confident
    return new_canvas, new_argmax, buf, finished_denoising


# ---------------------------------------------------------------------------
# patch / unpatch
# ---------------------------------------------------------------------------


class _Record:
    def __init__(self, saved):
        self.saved = saved       # instance attributes patch replaced (restored by unpatch)
        self.state = None        # the state of the generate call in flight


def patch(model):
    """Make ``model.generate(...)`` (a transformers ``DiffusionGemmaForBlockDiffusion``)
    run its denoising step on dmkernels' ops. Returns the model; patching twice is a
    no-op. ``TypeError`` for any other model, ``RuntimeError`` if the installed
    transformers' DiffusionGemma internals are not the ones this was written for."""
    gen, model_class = _upstream()
    if not isinstance(model, model_class):
        _fail(".patch", f"model must be a transformers DiffusionGemmaForBlockDiffusion, got {type(model).__name__}",
              TypeError)
    if getattr(model, _RECORD, None) is not None:
        return model
    record = _Record({name: model.__dict__[name] for name in _PATCHED if name in model.__dict__})
    cls = type(model)

    def _denoising_step(self, **kwargs):
        return denoising_step(self, **kwargs)

    def _prepare_sampler(self, generation_config):
        # Once per generate, before the first model call: check the settings upstream
        # does not re-check, and start this call's noise state.
        _check_generation_config(generation_config)
        sampler = cls._prepare_sampler(self, generation_config)
        record.state = _state(sampler)
        return sampler

    def _finalize_canvas(**kwargs):
        # A GPU step only flags rows without a distribution; upstream syncs here anyway.
        st = record.state
        if st is not None and st.bad is not None:
            bad, st.bad = st.bad, None
            if bool(bad):
                _fail(".generate", "logits had a row with no distribution (a NaN or +inf logit, only -inf, or no "
                                   "finite logits / T) in this canvas")
        return cls._finalize_canvas(**kwargs)

    object.__setattr__(model, "_denoising_step", types.MethodType(_denoising_step, model))
    object.__setattr__(model, "_prepare_sampler", types.MethodType(_prepare_sampler, model))
    object.__setattr__(model, "_finalize_canvas", _finalize_canvas)  # a staticmethod upstream
    object.__setattr__(model, _RECORD, record)
    return model


def unpatch(model):
    """Undo :func:`patch`: transformers' own step again (and any instance attributes
    patch replaced). A model that is not patched is returned unchanged."""
    record = getattr(model, _RECORD, None)
    if record is None:
        return model
    for name in _PATCHED:
        model.__dict__.pop(name, None)
        if name in record.saved:
            object.__setattr__(model, name, record.saved[name])
    model.__dict__.pop(_RECORD, None)
    return model
