"""Drop-in for LLaDA2.0's and LLaDA2.1's ``generate`` (methods of
``LLaDA2MoeModelLM`` in the models' remote code)::

    from dmkernels.compat import llada2
    out = llada2.generate(model, input_ids, gen_length=256, block_length=32, steps=32)   # LLaDA2.0
    out = llada2.generate_v21(model, input_ids, gen_length=256)                          # LLaDA2.1
    llada2.patch(model); out = model.generate(input_ids, ...)                            # one line

Same arguments, defaults and return value as the public methods (the answer
after the prompt through its first EOS, int64 ``[1, n]``); the same tokens at
temperature 0; the same distribution when sampling (the public code draws with
``torch.multinomial``; here dmkernels' seeded Gumbel-max noise draws from the
same filtered distribution, its seed taken from torch's default generator, so
``torch.manual_seed`` still governs). The semantics, every public quirk and
the choice made for it are those of the eager reference
:mod:`dmkernels.bench.eager.llada2` (its module docstring), namely: the
intended block-causal mask in the model's dtype (the public bf16 mask breaks
float32/64 models); ``steps = min(steps, gen_length // minimal_topk)`` as the
code does (0 steps: ``gen_length`` mask ids); the answer searched for its EOS in
the generated part only and capped at ``gen_length``; equal confidences go to the
lowest position; 2.0's greedy argmax over probabilities, 2.1's over logits
(token_stats takes the argmax of the logits for both: they differ only when two
logits round to the same probability); a negative temperature, ``num_to_transfer
< 1`` and ``minimal_topk < 1`` are refused; LLaDA2.1's endless loop on a model
that keeps producing ``mask_id`` raises RuntimeError after ``max_block_calls``
steps of one block.

What differs, on purpose:

* **Batches.** ``inputs`` may be ``[B, P]`` with ``attention_mask`` (0 = padding,
  e.g. left padding): every row gets what it would get alone (the canvas is
  re-laid so all rows share one block grid, see :mod:`dmkernels.blockcache`).
  ``B = 1`` returns exactly the public ``[1, n]``; ``B > 1`` returns ``[B, max n]``,
  each row right-padded with ``eos_id`` (its first EOS ends it). Rows stop as
  soon as their answer is settled. Nothing inside a step reads the device: the
  host reads one "block done" flag between steps (one step late on CUDA, so the
  GPU never waits) and two flags per block.
* **Exact block KV cache** (``cache="block"``, the default): every step runs the
  model on the current block only, against the cached keys and values of the
  prompt and the finished blocks (computed once, from their final tokens), and
  the LM head on the block's rows only. The model must be block-causal
  (LLaDA2 / SDAR ``model_type``, ``model.block_causal = True`` or
  ``block_causal=True``) and take ``past_key_values`` (a transformers ``Cache``:
  the public modeling code routes keys through ``Cache.update``, so it works
  unmodified) and a 4-D additive ``attention_mask``. ``cache=None`` recomputes the
  window ``[0, block end)`` every step, as the public code.
* ``eos_early_stop`` is accepted and changes nothing: it never changes the public
  answer, only the public work, and here rows always stop as early as their
  answer allows (LLaDA2.0: once the first generated EOS has no mask before it;
  LLaDA2.1: at the end of a block whose generated part holds an EOS).
* Token editing of LLaDA2.1 goes through ``dmkernels.edit_`` when the op is
  built into this version, else the same rule in torch
  (:func:`dmkernels.block_sampler.edit_`); ``editing_threshold=None`` turns
  editing off (the public code needs a number).
* ``top_k >= V`` filters nothing (public: ``torch.topk`` raises).
* Tokens are placed on the model's device; ``inputs`` may be int32.

One function, two versions: :func:`generate` has LLaDA2.0's signature and
behaves as LLaDA2.0 unless ``version="2.1"`` or one of LLaDA2.1's own arguments
(``editing_threshold``, ``max_post_steps``, ``num_to_transfer``) is given; it
then behaves as LLaDA2.1 with LLaDA2.1's defaults for the ones not given.
:func:`generate_v21` has LLaDA2.1's exact signature and defaults. ``patch``
picks the version from the signature of the model's own ``generate``.
"""
from __future__ import annotations

import inspect
import types

import torch

from .. import _checks as check
from ..block_sampler import BlockDiffusionSampler, unpadded_prompts
from ..blockcache import check_block_causal
from ..constants import LLADA2_EOS_ID, LLADA2_MASK_ID
from ..ops import check_backend_name
from ..sampler import _model_device

__all__ = ["generate", "generate_v21", "patch", "unpatch", "transfer_schedule"]

_CALLER = "compat.llada2.generate"
V21_DEFAULTS = dict(editing_threshold=0.9, max_post_steps=16, num_to_transfer=1)


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """LLaDA2.0's commit counts: ``block_length`` split as evenly as possible over
    ``steps`` steps, the first ``block_length % steps`` one more (0 steps: none)."""
    if steps <= 0:
        return []
    base, extra = divmod(block_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _check_args(caller, model, inputs, attention_mask, temperature, block_length, steps, gen_length, top_p, top_k,
                minimal_topk, threshold, eos_id, mask_id, v21, editing_threshold, max_post_steps, num_to_transfer,
                cache, backend):
    """Every argument, on the host, before any model call; returns (prompts, vocab_size)."""
    def fail(msg, kind=ValueError):
        check.fail(caller, msg, kind)

    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.dtype not in (torch.int64, torch.int32):
        fail("inputs must be an int64 or int32 tensor [B, prompt_length]")
    if inputs.shape[0] == 0:
        fail("inputs has no rows (a batch of 0)")
    block_length = check.integer(caller, "block_length", block_length, minimum=1)
    steps = check.integer(caller, "steps", steps, minimum=1)
    gen_length = check.integer(caller, "gen_length", gen_length, minimum=1)
    minimal_topk = check.integer(caller, "minimal_topk", minimal_topk, minimum=1)
    if minimal_topk > block_length:
        fail(f"minimal_topk ({minimal_topk}) must be <= block_length ({block_length})")
    check.real(caller, "temperature", temperature, minimum=0.0)
    check.temperature(caller, temperature)
    check.real(caller, "threshold", threshold, minimum=0.0, maximum=1.0)
    if top_k is not None:
        check.integer(caller, "top_k", top_k, minimum=-(2**62))
    if top_p is not None:
        check.real(caller, "top_p", top_p)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        vocab_size = None
    for name, value in (("mask_id", mask_id), ("eos_id", eos_id)):
        check.integer(caller, name, value, minimum=0)
        if vocab_size is not None and value >= vocab_size:
            fail(f"{name} = {value} is outside the model's vocabulary [0, {vocab_size})")
    if mask_id == eos_id:
        fail(f"eos_id must differ from mask_id ({mask_id})")
    if v21:
        if editing_threshold is not None:
            check.real(caller, "editing_threshold", editing_threshold, minimum=0.0, maximum=1.0)
        check.integer(caller, "max_post_steps", max_post_steps, minimum=0)
        check.integer(caller, "num_to_transfer", num_to_transfer, minimum=1)
    if cache not in (None, "block"):
        fail(f"cache must be 'block' or None, got {cache!r}")
    if backend is not None:
        check_backend_name(caller, backend)
    prompts = unpadded_prompts(caller, inputs, attention_mask, ids_name="inputs", mask_name="attention_mask",
                               mask_id=mask_id, vocab_size=vocab_size)
    return prompts, vocab_size


def _run(caller, model, inputs, *, temperature, block_length, steps, gen_length, top_p, top_k, minimal_topk,
         threshold, eos_id, mask_id, v21, editing_threshold=None, max_post_steps=0, num_to_transfer=1,
         attention_mask=None, cache="block", block_causal=None, seed=None, backend=None, max_block_calls=None):
    prompts, vocab_size = _check_args(caller, model, inputs, attention_mask, temperature, block_length, steps,
                                      gen_length, top_p, top_k, minimal_topk, threshold, eos_id, mask_id, v21,
                                      editing_threshold, max_post_steps, num_to_transfer, cache, backend)
    if cache == "block":
        check_block_causal(model, caller, block_causal)
    if seed is None:  # torch's default generator governs the noise (drawn on the host, before the steps)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if temperature > 0 else 0
    else:
        seed = check.integer(caller, "seed", seed, minimum=0)
    if max_block_calls is None:
        max_block_calls = 8 * (block_length + max_post_steps + 1)
    device = _model_device(model, inputs.device)
    prompts = [p.to(device=device, dtype=torch.int64) for p in prompts]
    schedule = () if v21 else transfer_schedule(block_length, min(steps, gen_length // minimal_topk))
    sampler = BlockDiffusionSampler(
        model, prompts, gen_length=gen_length, block_length=block_length, temperature=temperature, top_k=top_k,
        top_p=top_p, threshold=threshold, mask_id=mask_id, eos_id=eos_id, version="2.1" if v21 else "2.0",
        schedule=schedule, num_to_transfer=num_to_transfer, editing_threshold=editing_threshold,
        max_post_steps=max_post_steps, max_block_calls=max_block_calls, cache=cache == "block", seed=seed,
        backend=backend, caller=caller, vocab_size=vocab_size)
    answers = sampler.run().answers()
    if len(answers) == 1:
        return answers[0][None]
    out = torch.full((len(answers), max(a.shape[0] for a in answers)), eos_id, dtype=torch.int64, device=device)
    for r, a in enumerate(answers):
        out[r, :a.shape[0]] = a
    return out


@torch.no_grad()
def generate(model, inputs=None, temperature=0.0, block_length=32, steps=32, gen_length=2048, top_p=None, top_k=None,
             eos_early_stop=False, minimal_topk=1, threshold=0.95, eos_id=LLADA2_EOS_ID, mask_id=LLADA2_MASK_ID, *,
             attention_mask=None, editing_threshold=None, max_post_steps=None, num_to_transfer=None, version=None,
             cache="block", block_causal=None, seed=None, backend=None, max_block_calls=None):
    """LLaDA2.0's ``generate`` (LLaDA2.1's with ``version="2.1"`` or any of its own
    arguments), batched, with the exact block KV cache. See the module docstring.

    Extensions (keyword-only): ``attention_mask`` ``[B, P]`` (0 = padding);
    ``editing_threshold``, ``max_post_steps``, ``num_to_transfer``, ``version``
    ("2.0" or "2.1"); ``cache`` ("block" or None); ``block_causal`` (declare a
    model block-causal for the cache); ``seed`` (token noise when sampling; None:
    drawn from torch's default generator); ``backend`` (the ops' backend);
    ``max_block_calls`` (LLaDA2.1's guard, default ``8 * (block_length +
    max_post_steps + 1)``). Returns int64 ``[B, n]``."""
    given21 = {k: v for k, v in dict(editing_threshold=editing_threshold, max_post_steps=max_post_steps,
                                     num_to_transfer=num_to_transfer).items() if v is not None}
    if version not in (None, "2.0", "2.1"):
        check.fail(_CALLER, f"version must be None, '2.0' or '2.1', got {version!r}")
    if version == "2.0" and given21:
        check.fail(_CALLER, f"{', '.join(sorted(given21))} belong to LLaDA2.1, but version='2.0'")
    v21 = version == "2.1" or bool(given21)
    extra = dict(V21_DEFAULTS, **given21) if v21 else {}
    return _run(_CALLER, model, inputs, temperature=temperature, block_length=block_length, steps=steps,
                gen_length=gen_length, top_p=top_p, top_k=top_k, minimal_topk=minimal_topk, threshold=threshold,
                eos_id=eos_id, mask_id=mask_id, v21=v21, attention_mask=attention_mask, cache=cache,
                block_causal=block_causal, seed=seed, backend=backend, max_block_calls=max_block_calls, **extra)


@torch.no_grad()
def generate_v21(model, inputs=None, temperature=0.0, block_length=32, steps=32, gen_length=2048, top_p=None,
                 top_k=None, eos_early_stop=False, minimal_topk=1, threshold=0.95, editing_threshold=0.9,
                 max_post_steps=16, eos_id=LLADA2_EOS_ID, mask_id=LLADA2_MASK_ID, num_to_transfer=1, *,
                 attention_mask=None, cache="block", block_causal=None, seed=None, backend=None,
                 max_block_calls=None):
    """LLaDA2.1's ``generate`` (exact signature and defaults; ``steps`` and
    ``minimal_topk`` unused as in public, but validated), batched, with the exact
    block KV cache; keyword-only extensions as :func:`generate`."""
    return _run("compat.llada2.generate_v21", model, inputs, temperature=temperature, block_length=block_length,
                steps=steps, gen_length=gen_length, top_p=top_p, top_k=top_k, minimal_topk=minimal_topk,
                threshold=threshold, eos_id=eos_id, mask_id=mask_id, v21=True, editing_threshold=editing_threshold,
                max_post_steps=max_post_steps, num_to_transfer=num_to_transfer, attention_mask=attention_mask,
                cache=cache, block_causal=block_causal, seed=seed, backend=backend, max_block_calls=max_block_calls)


def _own_generate_is_v21(model) -> bool:
    fn = getattr(type(model), "generate", None)
    try:
        return fn is not None and "editing_threshold" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def patch(model, version=None):
    """Make ``model.generate(...)`` call :func:`generate_v21` (``version="2.1"``) or
    :func:`generate` (``"2.0"``); None picks 2.1 when the model's own ``generate``
    takes ``editing_threshold`` (LLaDA2.1's remote code), else 2.0. Returns the model."""
    if version not in (None, "2.0", "2.1"):
        check.fail("compat.llada2.patch", f"version must be None, '2.0' or '2.1', got {version!r}")
    v21 = version == "2.1" or (version is None and _own_generate_is_v21(model))
    fn = generate_v21 if v21 else generate

    def bound(self, inputs=None, *args, **kwargs):
        return fn(self, inputs, *args, **kwargs)

    model.generate = types.MethodType(bound, model)
    model._dmkernels_llada2_patched = True
    return model


def unpatch(model):
    """Undo :func:`patch` (the class's ``generate`` shows through again). Returns the model."""
    if getattr(model, "_dmkernels_llada2_patched", False):
        del model.generate
        del model._dmkernels_llada2_patched
    return model
