"""A small bidirectional transformer with a Fast-dLLM-style KV cache.

Architecture (LLaDA-like): token embedding (plus a learned absolute position
embedding when ``config.position_embedding == "rope+learned"``); N blocks of pre-RMSNorm
multi-head attention with rotary position embeddings (no causal mask) and a
pre-RMSNorm SwiGLU MLP; a final RMSNorm; an untied LM head. Attention is
``torch.nn.functional.scaled_dot_product_attention``.

Forward modes (``model(input_ids, ...)``, ``input_ids`` ``[B, W]``):

full
    ``past_key_values=None``. The W inputs are the whole sequence, at
    positions ``0..W-1``. With ``use_cache=True`` the output carries the
    (post-RoPE) keys and values of all W positions.
prefix cache
    ``past_key_values`` of length P, no ``replace_*`` argument. The inputs
    are the sequence's positions ``P..P+W-1``; they attend to the P cached
    keys and to their own fresh keys. The returned cache (``use_cache=True``)
    is the concatenation, length P + W. The caller's tensors are not changed.
dual cache
    ``past_key_values`` of length L and ``replace_range=(s, e)`` (ints) and/or
    ``replace_position`` (bool ``[B, L]``, True exactly on ``[s, e)`` in
    every row). The inputs are positions ``s..e-1`` (so ``W == e - s``);
    their fresh keys and values are written **in place** into the cache
    tensors at ``[s, e)`` and they attend to all L keys. Entries outside
    ``[s, e)`` are neither read differently nor rewritten. The returned
    cache (``use_cache=True``) is the same tensors. When only
    ``replace_position`` is given, s is found on the device (first True of
    row 0, an argmax) and nothing is checked, so the forward never syncs.

Everything in ``forward`` is free of host syncs: shapes come from ``.shape``
and device values are never read on the host.

``attention_mask`` (over the L_total keys, L_total = cached + fresh in prefix
mode, the cache length in dual mode, W in full mode):

- ``None`` or ``"full"``: every key is visible;
- 2-D ``[B, L_total]`` 0/1 or bool: 1 / True = the key may be attended to;
- 4-D ``[B, 1 or H, W, L_total]`` bool (True = attend) or float (additive);
  a 4-D mask whose query dimension is L_total (a full square mask) is cut
  to the rows of the W inputs.

Masked keys get exactly zero weight. A query whose keys are all masked (a
padding row) attends uniformly to every key instead of producing NaN: its
output is finite and meaningless.

``position_ids`` ``[B, W]`` (or ``[1, W]``) overrides the default positions
(the inputs' absolute indices), e.g. ``mask.cumsum(-1) - 1`` for left-padded
batches. Cached keys keep the positions they were computed with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .config import DiffusionLMConfig

try:  # transformers >= 5: init functions that skip weights already loaded
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init

__all__ = ["DiffusionLM", "DiffusionLMOutput"]

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class DiffusionLMOutput:
    """``logits`` ``[B, W, V]`` in the model's dtype (float32 by default);
    ``past_key_values``: with ``use_cache=True`` a tuple over layers of
    ``(k, v)``, each ``[B, num_heads, L_total, head_dim]``, else None;
    ``hidden_states``: with ``output_hidden_states=True`` the input embeddings
    and every layer's output (the last after the final norm), each ``[B, W, hidden]``.

    A plain dataclass, not a ``transformers`` ``ModelOutput``: how that class
    treats its keyword arguments changes between releases (5.24 renames
    ``past_key_values`` to ``cache``). It keeps the parts of ``ModelOutput``'s
    interface callers use: attributes, ``out["logits"]``, ``out[0]`` and
    ``to_tuple()`` over the fields that are not None.
    """

    logits: torch.Tensor | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None

    def to_tuple(self) -> tuple:
        return tuple(v for v in (self.logits, self.past_key_values, self.hidden_states) if v is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def _rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin ``[B, 1, W, head_dim]`` for positions ``[B, W]`` (rotate-half layout)."""
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [B, W, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _apply_rope(x, cos, sin):
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: DiffusionLMConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x, cos, sin, bias, past, replace_start):
        """``past``: None or this layer's cached ``(k, v)``. ``replace_start``:
        None (full or prefix mode) or the dual-cache window start (int or a
        0-d device tensor). Returns the output and this layer's ``(k, v)``."""
        b, w, _ = x.shape
        shape = (b, w, self.num_heads, self.head_dim)
        q = _apply_rope(self.q_proj(x).view(shape).transpose(1, 2), cos, sin)
        k = _apply_rope(self.k_proj(x).view(shape).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if past is None:
            keys, values = k, v
        elif replace_start is None:
            keys = torch.cat([past[0], k], dim=2)
            values = torch.cat([past[1], v], dim=2)
        else:
            keys, values = past
            if isinstance(replace_start, int):
                keys[:, :, replace_start : replace_start + w].copy_(k)
                values[:, :, replace_start : replace_start + w].copy_(v)
            else:
                index = replace_start + torch.arange(w, device=k.device)
                keys.index_copy_(2, index, k.to(keys.dtype))
                values.index_copy_(2, index, v.to(values.dtype))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
        out = self.o_proj(out.transpose(1, 2).reshape(b, w, -1))
        return out, (keys, values)


class MLP(nn.Module):
    def __init__(self, config: DiffusionLMConfig):
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, m, bias=False)
        self.up_proj = nn.Linear(h, m, bias=False)
        self.down_proj = nn.Linear(m, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DiffusionLMBlock(nn.Module):
    def __init__(self, config: DiffusionLMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, bias, past, replace_start):
        a, kv = self.attn(self.attn_norm(x), cos, sin, bias, past, replace_start)
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return x, kv


def _attention_bias(mask, b: int, w: int, total: int, query_start, dtype, device):
    """The additive bias for SDPA, broadcastable to ``[B, H, W, total]``, or None.

    Masked entries get the dtype's lowest finite value rather than -inf: a
    row with some visible key still gives masked keys exactly zero weight,
    and a row with none gets uniform weights instead of NaN."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask != "full":
            raise ValueError(f"attention_mask string must be 'full', got {mask!r}")
        return None
    lowest = torch.finfo(dtype).min
    if mask.dim() == 2:
        if tuple(mask.shape) != (b, total):
            raise ValueError(f"2-D attention_mask must be [B, L_total] = {[b, total]}, got {list(mask.shape)}")
        keep = mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~keep, lowest)
    if mask.dim() != 4:
        raise ValueError(f"attention_mask must be None, 'full', 2-D or 4-D, got {mask.dim()}-D")
    if mask.shape[-1] != total:
        raise ValueError(f"attention_mask covers {mask.shape[-1]} keys, expected L_total = {total}")
    rows = mask.shape[-2]
    if rows != w and rows != 1:
        if rows != total:
            raise ValueError(f"4-D attention_mask has {rows} query rows, expected {w} (or {total}, or 1)")
        if isinstance(query_start, int):
            mask = mask[..., query_start : query_start + w, :]
        else:
            mask = mask.index_select(-2, query_start + torch.arange(w, device=mask.device))
    mask = mask.to(device)
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~mask, lowest)
    return mask.to(dtype).clamp_min(lowest)  # -inf -> lowest: no NaN rows


class DiffusionLM(PreTrainedModel):
    """A bidirectional masked-diffusion LM with random weights (see the module
    docstring for the cache protocol and masks).

    ``model(input_ids, attention_mask=None, position_ids=None,
    past_key_values=None, use_cache=False, replace_position=None,
    replace_range=None)`` returns :class:`DiffusionLMOutput`.
    """

    config_class = DiffusionLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DiffusionLMBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    def __init__(self, config: DiffusionLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if getattr(config, "position_embedding", "rope") == "rope+learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.embed_positions = None
        self.layers = nn.ModuleList(DiffusionLMBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        # Unit-variance embeddings and fan-in scaled projections keep the
        # residual stream O(1) and make attention far from uniform (so a wrong
        # position or mask shows in the logits). The LM head is scaled so the
        # logits of a position have std ~ logit_std (its input has unit RMS).
        if module is self.lm_head:
            _init.normal_(module.weight, mean=0.0, std=self.config.logit_std / math.sqrt(module.in_features))
        elif isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.in_features))
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, RMSNorm):
            _init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask=None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        replace_position: torch.Tensor | None = None,
        replace_range: tuple[int, int] | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool = False,
    ):
        b, w = input_ids.shape
        device = input_ids.device
        dual = replace_range is not None or replace_position is not None
        if past_key_values is None:
            if dual:
                raise ValueError("replace_position / replace_range need past_key_values (dual cache)")
            start, total = 0, w
        else:
            if len(past_key_values) != len(self.layers):
                raise ValueError(f"past_key_values has {len(past_key_values)} layers, model has {len(self.layers)}")
            cached = past_key_values[0][0].shape[2]
            if not dual:
                start, total = cached, cached + w
            else:
                total = cached
                if replace_range is not None:
                    start, end = replace_range
                    if isinstance(start, int) and isinstance(end, int):
                        if not (0 <= start and end - start == w and end <= total):
                            raise ValueError(
                                f"replace_range {(start, end)} does not match {w} inputs in a cache of length {total}"
                            )
                else:
                    if tuple(replace_position.shape) != (b, total):
                        raise ValueError(f"replace_position must be [B, L] = {[b, total]}")
                    # First True of row 0, found on the device (argmax returns the first maximum).
                    start = replace_position[0].to(torch.int32).argmax()
                if w > total:
                    raise ValueError(f"{w} inputs do not fit a cache of length {total}")

        if position_ids is None:
            position_ids = (start + torch.arange(w, device=device)).expand(b, w)
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.shape[-1] != w:
            raise ValueError(f"position_ids must be [B, W] with W = {w}, got {list(position_ids.shape)}")

        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            x = x + self.embed_positions(position_ids.to(device))
        cos, sin = _rope_cos_sin(position_ids.to(device), self.config.head_dim, self.config.rope_theta, x.dtype)
        bias = _attention_bias(attention_mask, b, w, total, start, x.dtype, device)
        replace_start = start if dual else None

        presents = []
        hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[i]
            x, kv = layer(x, cos, sin, bias, past, replace_start)
            presents.append(kv)
            if output_hidden_states:
                hidden.append(x)
        final = self.norm(x)
        logits = self.lm_head(final)
        if output_hidden_states:
            hidden[-1] = final

        pkv = tuple(presents) if use_cache else None
        hs = tuple(hidden) if output_hidden_states else None
        out = DiffusionLMOutput(logits=logits, past_key_values=pkv, hidden_states=hs)
        return out.to_tuple() if return_dict is False else out
