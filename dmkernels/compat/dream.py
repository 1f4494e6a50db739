"""Drop-in for Dream's ``diffusion_generate``.

``from dmkernels.compat.dream import diffusion_generate`` and call
``diffusion_generate(model, inputs, ...)`` with Dream's keyword arguments, or
``patch(model)`` once so that ``model.diffusion_generate(...)`` runs this one.
"""
from __future__ import annotations

import dataclasses
import types
import warnings
from typing import Optional

import torch

from .. import _checks, ops
from . import build_policy
from ..policies import DreamOrigin, Entropy, LowConfidence, Margin
from ..sampler import ModelRunner, Sampler, SamplerConfig
from ..schedules import DreamTimesteps

__all__ = ["diffusion_generate", "patch", "DreamGenerationConfig", "DreamModelOutput"]

_DEFAULT_MAX_LENGTH = 20
_CALLER = "compat.dream.diffusion_generate"  # named in error messages


class DreamGenerationConfig:
    """Dream's generation settings with Dream's defaults (the attributes Dream reads)."""

    def __init__(self, **kwargs):
        self.temperature = kwargs.pop("temperature", 0.0)
        self.top_p = kwargs.pop("top_p", None)
        self.top_k = kwargs.pop("top_k", None)
        self.max_length = kwargs.pop("max_length", _DEFAULT_MAX_LENGTH)
        self.max_new_tokens = kwargs.pop("max_new_tokens", None)
        self.eps = kwargs.pop("eps", 1e-3)
        self.steps = kwargs.pop("steps", 512)
        self.alg = kwargs.pop("alg", "origin")
        self.alg_temp = kwargs.pop("alg_temp", None)
        self.num_return_sequences = kwargs.pop("num_return_sequences", 1)
        self.return_dict_in_generate = kwargs.pop("return_dict_in_generate", False)
        self.output_history = kwargs.pop("output_history", False)
        self.mask_token_id = kwargs.pop("mask_token_id", None)
        self.pad_token_id = kwargs.pop("pad_token_id", None)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        self.eos_token_id = kwargs.pop("eos_token_id", None)
        for key, value in kwargs.items():
            setattr(self, key, value)

    @classmethod
    def from_object(cls, config) -> "DreamGenerationConfig":
        if isinstance(config, cls):
            return cls(**vars(config))
        if hasattr(config, "to_dict"):
            return cls(**config.to_dict())
        return cls(**{k: v for k, v in vars(config).items() if not k.startswith("_")})


@dataclasses.dataclass
class DreamModelOutput:
    sequences: torch.Tensor = None
    history: Optional[tuple] = None

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else dataclasses.astuple(self)[key]


_ALGS = {"maskgit_plus": LowConfidence, "topk_margin": Margin, "entropy": Entropy}


def _filter_top_p_top_k_(rows: torch.Tensor, temperature: float, top_p, top_k, chunk: int = 16) -> None:
    """Dream's top-p then top-k filter, in place on ``rows`` [B, W, V] (filtered logits
    become -inf), a few rows at a time so the temporaries stay small. The kept set is
    decided on ``logits / T``, as Dream decides it."""
    for b in range(rows.shape[0]):
        for lo in range(0, rows.shape[1], chunk):
            part = rows[b, lo:lo + chunk]
            tempered = part.float() / temperature if temperature > 0 else part.float()
            remove = torch.zeros(tempered.shape, dtype=torch.bool, device=tempered.device)
            if top_p is not None and top_p < 1:
                ordered, order = torch.sort(tempered, descending=True)
                drop = ordered.softmax(-1).cumsum(-1) > top_p
                drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
                drop[..., 0] = False
                remove.scatter_(-1, order, drop)
                tempered = tempered.masked_fill(remove, -torch.inf)
            if top_k is not None:
                k = min(int(top_k), tempered.shape[-1])
                remove |= tempered < torch.topk(tempered, k, dim=-1).values[..., -1:]
            part.masked_fill_(remove, -torch.inf)


class _DreamSampler(Sampler):
    """Dream's loop: one block over the whole canvas (prompt masks included), logits
    shifted right by one, Dream's timestep schedule, its hooks and history."""

    def __init__(self, *args, top_p=None, top_k=None, tokens_hook=None, logits_hook=None, history=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.top_p, self.top_k = top_p, top_k
        self.tokens_hook, self.logits_hook = tokens_hook, logits_hook
        self.history = history

    def blocks(self):
        if self.tokens_hook is not None:
            self._apply_tokens_hook(None, None)
        yield 0, 0, self.x.shape[1]

    def _apply_tokens_hook(self, step, logits):
        new = self.tokens_hook(step, self.x, logits)
        if new is not self.x:
            self.x.copy_(new)

    def _filtered_stats(self, rows, eligible, first_row=None):
        if self.top_p is not None or self.top_k is not None:
            _filter_top_p_top_k_(rows, self.temperature, self.top_p, self.top_k)
            if first_row is not None:
                _filter_top_p_top_k_(first_row, self.temperature, self.top_p, self.top_k)
        if first_row is None:
            return self.token_stats(rows, eligible)
        # Position 0 repeats row 0: two calls over views instead of a shifted copy of the logits.
        head = self.token_stats(first_row, eligible[:, :1])
        tail = self.token_stats(rows, eligible[:, 1:], offset_shift=2**40)
        return ops.TokenStats(*(torch.cat([h, t], dim=1) for h, t in zip(head, tail)))

    def step_stats(self, step, start, end, eligible):
        logits, _ = self.model_logits(step, 0, self.x.shape[1])
        self.hook_logits = None
        if self.logits_hook is not None:
            shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # the hook's contract needs it
            shifted = self.logits_hook(step, self.x, shifted)
            self.hook_logits = shifted
            return self._filtered_stats(shifted, eligible), logits
        if self.tokens_hook is not None:
            # The tokens hook's contract is Dream's shifted logits: copied only when one is set.
            self.hook_logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return self._filtered_stats(logits[:, :-1], eligible, first_row=logits[:, :1]), logits

    def after_step(self, step, logits_rows):
        if self.tokens_hook is not None:
            self._apply_tokens_hook(step, self.hook_logits)
        if self.history is not None:
            self.history.append(self.x.clone())


def _check_sampling_settings(config: DreamGenerationConfig) -> None:
    """top_k, top_p and eps, before any model call. Dream itself fails inside
    torch.topk on top_k = 0 and silently skips top-p on NaN; top_p <= 0 keeps the
    single most likely token there, and here too."""
    if config.top_k is not None:
        config.top_k = _checks.integer(_CALLER, "top_k", config.top_k, minimum=1)
    if config.top_p is not None:
        config.top_p = _checks.real(_CALLER, "top_p", config.top_p)
    config.eps = _checks.real(_CALLER, "eps", config.eps, minimum=0.0, maximum=1.0)


def _resolve_config(model, generation_config, kwargs) -> DreamGenerationConfig:
    if generation_config is None:
        base = getattr(model, "generation_config", None)
        config = DreamGenerationConfig.from_object(base) if base is not None else DreamGenerationConfig()
        if config.mask_token_id is None:
            config.mask_token_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    else:
        config = DreamGenerationConfig.from_object(generation_config)
        model_config = getattr(model, "generation_config", None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"):
            if getattr(config, name) is None:
                setattr(config, name, getattr(model_config, name, None))
    for key, value in kwargs.items():
        setattr(config, key, value)
    return config


@torch.no_grad()
def diffusion_generate(model, inputs=None, generation_config=None, **kwargs):
    """Dream's ``diffusion_generate`` on dmkernels' ops: same keyword arguments
    (steps, eps, alg in origin / maskgit_plus / topk_margin / entropy, alg_temp,
    temperature, top_p, top_k, max_new_tokens or max_length, num_return_sequences,
    return_dict_in_generate, output_history, attention_mask,
    generation_tokens_hook_func, generation_logits_hook_func), same result: the
    sequences, or a :class:`DreamModelOutput` with ``sequences`` and ``history``.

    Tokens at temperature 0 with a ranking alg are identical to Dream's. Sampling
    (temperature > 0, alg 'origin', ``alg_temp``) follows the same distributions
    with dmkernels' seeded noise (seeded from torch's default generator).
    Differences on purpose: the shifted logits are never copied (unless a logits
    hook asks for them); top-p / top-k are applied to every position's row in
    chunks, not gathered to the masked ones (gathering needs a host sync).
    """
    tokens_hook = kwargs.pop("generation_tokens_hook_func", None)
    logits_hook = kwargs.pop("generation_logits_hook_func", None)
    attention_mask = kwargs.pop("attention_mask", None)
    explicit_max_length = kwargs.get("max_length") is not None
    config = _resolve_config(model, generation_config, kwargs)
    if inputs is None:
        raise ValueError("diffusion_generate: inputs (the prompt ids) are required")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
        raise TypeError(f"dmkernels.{_CALLER}: inputs must be a 2-D tensor of prompt ids [B, prompt_length], "
                        f"got {type(inputs).__name__}")
    input_ids = inputs
    prompt_length = input_ids.shape[-1]
    has_default_max_length = not explicit_max_length and config.max_length is not None
    if config.max_new_tokens is not None:
        config.max_length = config.max_new_tokens + prompt_length
    elif has_default_max_length and config.max_length == _DEFAULT_MAX_LENGTH:
        config.max_length = config.max_length + prompt_length
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if limit is not None:
            config.max_length = min(config.max_length, limit)
    if has_default_max_length and config.max_new_tokens is None and config.max_length == _DEFAULT_MAX_LENGTH:
        warnings.warn("Using the default max_length (20); set max_new_tokens to control the generation length.")
    if prompt_length >= config.max_length:
        raise ValueError(f"Input length of input_ids is {prompt_length}, but `max_length` is set to "
                         f"{config.max_length}; increase `max_length` or set `max_new_tokens`.")
    if config.mask_token_id is None:
        raise ValueError("diffusion_generate: mask_token_id is not set (pass it or set it in the generation config)")
    _check_sampling_settings(config)
    if config.num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
    if config.alg == "origin":
        policy = DreamOrigin(DreamTimesteps(config.eps))
    elif config.alg in _ALGS:
        alg_temp = config.alg_temp if config.alg_temp else None
        policy = build_policy(_CALLER, _ALGS[config.alg], DreamTimesteps(config.eps), alg_temp=alg_temp,
                              tempered_scores=True)
    else:
        raise RuntimeError(f"Unknown alg: {config.alg}")

    gen_length = config.max_length - prompt_length
    B = input_ids.shape[0]
    device = input_ids.device
    tok_idx = None
    full_mask = "full"
    if attention_mask is not None and bool((attention_mask == 0).any()):
        padded = torch.cat([attention_mask.to(device),
                            torch.ones(B, gen_length, dtype=attention_mask.dtype, device=device)], dim=1)
        tok_idx = padded.long().cumsum(-1) - 1
        tok_idx.masked_fill_(padded == 0, 1)
        keep = padded.bool()
        full_mask = keep[:, None, None, :] & keep[:, None, :, None]

    def call(x, attention_mask, **kw):
        return model(x, attention_mask, tok_idx, **kw)

    runner = ModelRunner(model, attention_mask=full_mask, call=call)
    history = [] if (config.return_dict_in_generate and config.output_history) else None
    settings = SamplerConfig(gen_length=gen_length, block_length=gen_length, steps=config.steps,
                             temperature=config.temperature or 0.0, mask_id=config.mask_token_id, shift_logits=True,
                             caller=_CALLER, arg_names={"input_ids": "inputs", "mask_id": "mask_token_id"})
    sampler = _DreamSampler(model, input_ids, policy, settings, runner=runner, top_p=config.top_p, top_k=config.top_k,
                            tokens_hook=tokens_hook, logits_hook=logits_hook, history=history)
    x = sampler.run().sequences
    if config.return_dict_in_generate:
        return DreamModelOutput(sequences=x, history=history)
    return x


def patch(model):
    """Make ``model.diffusion_generate`` this implementation (returns the model)."""
    def bound(self, inputs=None, generation_config=None, **kwargs):
        return diffusion_generate(self, inputs, generation_config, **kwargs)

    model.diffusion_generate = types.MethodType(bound, model)
    return model
