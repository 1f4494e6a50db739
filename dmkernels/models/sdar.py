"""SDAR's architecture (JetAstra/SDAR, ``SDARForCausalLM``): a Qwen3-style dense
decoder run with block-causal attention, in our own words, for random-weight
tests and benchmarks of block-diffusion samplers (and able to load SDAR
checkpoints: parameter names follow the hub's).

Architecture: token embedding; ``num_hidden_layers`` blocks of pre-RMSNorm
attention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, biases when
``attention_bias``; a per-head RMSNorm ``q_norm`` / ``k_norm`` over ``head_dim``
applied to queries and keys *before* rotary embeddings; rotary embeddings on the
whole head, transformers' default frequencies ``theta ** (-2i / head_dim)``;
grouped-query attention with ``num_key_value_heads`` key/value heads) and a
pre-RMSNorm SwiGLU MLP; a final RMSNorm; an LM head (``lm_head``, untied unless
``tie_word_embeddings``). Logits stay in the model's dtype (SDAR does not
upcast them).

Numerics that follow the public model:

- RMSNorm is computed in float32 (float64 for a float64 model) *including* the
  weight multiply, then cast back: SDAR runs flash-attn's Triton ``rms_norm_fn``,
  which does this (it differs from transformers' Qwen3 RMSNorm, which casts
  before the weight multiply, by one rounding in bf16).
- Rotary cos/sin are computed in float32 from the positions and cast to the
  model's dtype. They are computed on the fly rather than kept in a buffer, so
  ``model.to(dtype)`` cannot round the frequencies.
- Attention is ``scaled_dot_product_attention`` with scale ``head_dim ** -0.5``
  everywhere (SDAR uses flash-attn when the mask is all True: the same function,
  and testing "all True" would need a host sync).

``forward(input_ids, attention_mask=None, position_ids=None,
past_key_values=None, use_cache=None, store_kv=False, logits_to_keep=0, ...)``:

``past_key_values`` is a ``transformers`` ``Cache`` (a ``DynamicCache``, or any
subclass: keys and values go through ``cache.update(k, v, layer_idx)``). With
SDAR's ``store_kv`` semantics:

- ``store_kv=True``: this call's keys and values (after RoPE) are appended to the
  cache; the inputs attend to the cache and to themselves.
- ``store_kv=False`` (SDAR's default): the inputs attend to the cached keys
  followed by their own, and nothing is stored (SDAR's denoising steps).

The ``W`` inputs are at positions ``n .. n + W - 1`` by default, ``n`` the
cache's length. ``use_cache`` (default ``config.use_cache``) only decides whether
the output carries the cache; a cache is created when ``use_cache`` or
``store_kv`` is true and none is given.

``attention_mask`` (over the ``n + W`` keys; ``None`` = every key visible):

- bool: True = may attend;
- integer: nonzero = may attend;
- float: SDAR passes 0/1 "keep" masks and the model calls ``.bool()`` on them,
  while transformers callers pass additive masks (0 / -inf or 0 / finfo.min).
  A float mask whose entries are all 0 or 1, with at least one 1, is read as a
  keep mask; any other float mask is additive. The choice is made on the device
  (no host sync): an additive mask of zeros (nothing masked) is read as
  additive, a keep mask of zeros (nothing visible) makes no sense.
- shapes ``[B or 1, n + W]`` (key padding), ``[B or 1, W or 1, n + W]`` (SDAR's
  3-D mask) or ``[B or 1, 1 or H, W or 1, n + W]``.

Masked keys get exactly zero weight. A query that sees no key (a padding row)
attends uniformly instead of producing NaN: its output is finite and meaningless.

``logits_to_keep``: 0 = logits for every input; ``k > 0`` = the last ``k``; a 1-D
index tensor = those positions. With ``config.suppress_mask_logit`` the logit of
``mask_token_id`` is -inf (a trained model never predicts ``[MASK]``; a random
one does, and SDAR's sampler then loops or fails).

Nothing in ``forward`` reads a device value on the host.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache

from ..constants import SDAR_EOS_ID, SDAR_MASK_ID, SDAR_VOCAB_SIZE
from .transformer import DiffusionLMOutput

try:  # transformers >= 5: init functions that skip weights already loaded
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init

__all__ = ["SDARConfig", "SDARModel", "SDARForBlockDiffusion", "sdar_tiny_config", "sdar_like_config"]


class SDARConfig(PretrainedConfig):
    """SDAR's configuration: the public ``SDARConfig`` field names and defaults,
    so a hub ``config.json`` dict can be passed in, plus:

    - ``block_size`` (SDAR's config.json carries it; informational here: the
      model attends as its mask says) and ``mask_token_id`` (None = unknown).
    - ``logit_std``: None = the public initialisation (every Linear and the
      embedding ``normal(0, initializer_range)``, biases zero), which gives a
      random model near-uniform logits. A number = our test initialisation:
      unit embeddings, fan-in scaled projections (and biases), and an LM head
      whose logits have about this standard deviation over the vocabulary, so
      confidences spread around samplers' thresholds.
    - ``suppress_mask_logit``: the logit of ``mask_token_id`` is -inf.

    A hub config's ``model_type``, ``auto_map`` and ``attn_implementation`` are
    dropped (this is our model type; attention is always SDPA); its other extra
    keys (``fuse_cross_entropy``, ``debug``, ...) are kept as attributes.

    Accepted and unused at inference, as in the public model's SDPA path:
    ``use_sliding_window``, ``sliding_window``, ``max_window_layers``,
    ``max_position_embeddings`` (positions are never checked: that would need a
    host sync). ``rope_scaling`` must be None (or the default rope type).
    """

    model_type = "dmkernels_sdar"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = SDAR_VOCAB_SIZE,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        head_dim: int | None = 128,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        attention_bias: bool = False,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        block_size: int = 4,
        mask_token_id: int | None = None,
        logit_std: float | None = None,
        suppress_mask_logit: bool = False,
        bos_token_id: int | None = None,
        eos_token_id=None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if head_dim is None:
            head_dim = hidden_size // num_attention_heads
        if num_key_value_heads <= 0 or num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"SDARConfig: num_attention_heads {num_attention_heads} is not a multiple of "
                f"num_key_value_heads {num_key_value_heads}"
            )
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"SDARConfig: head_dim must be even and positive for RoPE, got {head_dim}")
        if hidden_act not in ACT2FN:
            raise ValueError(f"SDARConfig: unknown hidden_act {hidden_act!r}")
        if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
            raise ValueError(
                f"SDARConfig: only the default rotary embedding is implemented, got rope_scaling={rope_scaling}"
            )
        if mask_token_id is not None and not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"SDARConfig: mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
        if suppress_mask_logit and mask_token_id is None:
            raise ValueError("SDARConfig: suppress_mask_logit needs mask_token_id")
        if logit_std is not None and not logit_std > 0:
            raise ValueError(f"SDARConfig: logit_std must be positive or None, got {logit_std}")
        kwargs.pop("rope_parameters", None)  # the default rope is implied; anything else was refused above
        # Keys of a hub config.json that would point transformers at the public
        # remote code or at flex/flash attention: this model is ours and uses SDPA.
        for key in ("model_type", "auto_map", "attn_implementation"):
            kwargs.pop(key, None)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        # Set after the base __init__, which (in some transformers versions)
        # assigns its own defaults to some of these names.
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = float(rms_norm_eps)
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_theta = float(rope_theta)
        self.attention_bias = attention_bias
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        self.logit_std = None if logit_std is None else float(logit_std)
        self.suppress_mask_logit = bool(suppress_mask_logit)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id


def sdar_tiny_config(vocab_size: int = 512, **overrides) -> SDARConfig:
    """A very small SDAR for tests: hidden 32, 2 layers, 4 query heads and 2
    key/value heads (GQA) of dim 8, SwiGLU 64, rope theta 1e6, block size 4,
    ``use_cache=False`` (as SDAR-4B-Chat's config.json);
    ``mask_token_id = V - 1``, ``eos_token_id = V - 2``, logits with std ~4, and
    the mask logit suppressed, unless overridden."""
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        attention_bias=False,
        tie_word_embeddings=False,
        block_size=4,
        use_cache=False,  # as SDAR-4B-Chat's config.json
        mask_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 2,
        logit_std=4.0,
        suppress_mask_logit=True,
    )
    kw.update(overrides)
    return SDARConfig(**kw)


def sdar_like_config(**overrides) -> SDARConfig:
    """SDAR-4B-Chat's vocabulary and special tokens (V = 151936, mask 151669,
    EOS 151643; the generation config also stops on 151645) and rope settings
    around a small body (hidden 64, 2 layers, 4 heads and 2 KV heads of dim 16),
    so a CPU forward is cheap and the LM head dominates."""
    kw = dict(
        vocab_size=SDAR_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        block_size=4,
        use_cache=False,  # as SDAR-4B-Chat's config.json
        mask_token_id=SDAR_MASK_ID,
        bos_token_id=SDAR_EOS_ID,
        eos_token_id=SDAR_EOS_ID,
        logit_std=4.0,
        suppress_mask_logit=True,
    )
    kw.update(overrides)
    return SDARConfig(**kw)


# ----------------------------------------------------------------------------- layers


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flash-attn's rms_norm_fn: float32 math, weight applied before the cast
        # back (float64 models keep float64).
        wide = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(wide)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.to(wide)).to(x.dtype)


def _rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin ``[B, 1, W, head_dim]`` (rotate-half layout) for positions ``[B, W]``,
    computed in float32 like transformers' default rotary embedding."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    freqs = position_ids.float()[..., None] * inv_freq  # one product per entry: same as their matmul
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _cached_layer(cache: Cache, layer_idx: int):
    """The keys and values a cache holds for one layer, or None (read only).

    transformers 5's ``DynamicCache`` is not subscriptable (its layers are);
    other caches (older transformers, ours) may be."""
    if layer_idx >= len(cache):
        return None
    layers = getattr(cache, "layers", None)
    if layers is not None and not hasattr(type(cache), "__getitem__"):
        keys, values = getattr(layers[layer_idx], "keys", None), getattr(layers[layer_idx], "values", None)
    else:
        keys, values = cache[layer_idx]
    if keys is None or keys.numel() == 0:  # a lazily created, still empty layer
        return None
    return keys, values


class _Attention(nn.Module):
    def __init__(self, config: SDARConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)
        self.q_norm = _RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = _RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, bias, cache, store_kv: bool):
        b, w, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, w, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, w, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, w, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            if store_kv:
                k, v = cache.update(k, v, self.layer_idx)
            else:
                past = _cached_layer(cache, self.layer_idx)
                if past is not None:
                    k = torch.cat([past[0], k], dim=-2)
                    v = torch.cat([past[1], v], dim=-2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0,
            scale=self.head_dim ** -0.5, enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, w, -1))


class _MLP(nn.Module):
    def __init__(self, config: SDARConfig):
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, m, bias=False)
        self.up_proj = nn.Linear(h, m, bias=False)
        self.down_proj = nn.Linear(m, h, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class _DecoderLayer(nn.Module):
    def __init__(self, config: SDARConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = _RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = _Attention(config, layer_idx)
        self.post_attention_layernorm = _RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = _MLP(config)

    def forward(self, x, cos, sin, bias, cache, store_kv):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias, cache, store_kv)
        return x + self.mlp(self.post_attention_layernorm(x))


def _attention_bias(mask, b: int, w: int, heads: int, total: int, dtype, device):
    """The additive bias for SDPA, broadcastable to ``[B, H, W, total]``, or None.

    Masked entries get the dtype's lowest finite value rather than -inf, so a
    query with no visible key gets uniform weights instead of NaN."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"SDAR forward: attention_mask must be a tensor or None, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None]
    elif mask.dim() != 4:
        raise ValueError(f"SDAR forward: attention_mask must be 2-D, 3-D or 4-D, got {mask.dim()}-D")
    mb, mh, rows, keys = mask.shape
    if keys != total:
        raise ValueError(
            f"SDAR forward: attention_mask covers {keys} keys, expected cached + new = {total}"
        )
    if rows not in (w, 1) or mb not in (b, 1) or mh not in (heads, 1):
        raise ValueError(
            f"SDAR forward: attention_mask shape {list(mask.shape)} does not broadcast to "
            f"[B, H, W, keys] = {[b, heads, w, total]}"
        )
    mask = mask.to(device)
    lowest = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype, device=device)
    if not mask.is_floating_point():
        return zero.masked_fill(mask == 0, lowest)
    keep_style = ((mask == 0) | (mask == 1)).all() & (mask == 1).any()  # a 0-d device tensor, never read here
    as_keep = zero.masked_fill(mask == 0, lowest)
    as_additive = mask.to(dtype).clamp_min(lowest)  # -inf -> lowest: no NaN rows
    return torch.where(keep_style, as_keep, as_additive)


# ----------------------------------------------------------------------------- models


class _SDARPreTrained(PreTrainedModel):
    config_class = SDARConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["_DecoderLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        std = self.config.logit_std
        if std is None:  # the public initialisation
            if isinstance(module, nn.Linear):
                _init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
                if module.bias is not None:
                    _init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                _init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            elif isinstance(module, _RMSNorm):
                _init.ones_(module.weight)
            return
        # Test initialisation: unit-variance embeddings and fan-in scaled
        # projections keep the residual stream O(1) and attention far from
        # uniform (so a wrong mask or position shows in the logits); biases are
        # random so that a test can see them; the LM head input has unit RMS
        # (final norm), so std / sqrt(hidden) gives logits of std ~ logit_std.
        if isinstance(module, nn.Linear):
            scale = 1.0 / math.sqrt(module.in_features)
            if getattr(module, "_is_lm_head", False):
                scale = std / math.sqrt(module.in_features)
            _init.normal_(module.weight, mean=0.0, std=scale)
            if module.bias is not None:
                _init.normal_(module.bias, mean=0.0, std=scale)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, _RMSNorm):
            _init.ones_(module.weight)


class SDARModel(_SDARPreTrained):
    """The body (embedding, layers, final norm). ``forward`` returns the final
    hidden states as ``(hidden [B, W, hidden], cache)``; see the module
    docstring for the arguments."""

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(_DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = _RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask=None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        store_kv: bool | None = False,
        cache_position: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ):
        if input_ids.dim() != 2:
            raise ValueError(f"SDAR forward: input_ids must be [B, W], got {list(input_ids.shape)}")
        if past_key_values is not None and not isinstance(past_key_values, Cache):
            raise TypeError(
                "SDAR forward: past_key_values must be a transformers Cache (e.g. DynamicCache) or None, "
                f"got {type(past_key_values).__name__}"
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        store_kv = bool(store_kv)
        if past_key_values is None and (use_cache or store_kv):
            past_key_values = DynamicCache()
        b, w = input_ids.shape
        device = input_ids.device
        cached = 0 if past_key_values is None else past_key_values.get_seq_length()
        total = cached + w

        if position_ids is None:
            if cache_position is not None:
                position_ids = cache_position.to(device)[None].expand(b, w)
            else:
                position_ids = torch.arange(cached, total, device=device)[None].expand(b, w)
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.shape[-1] != w or position_ids.shape[0] not in (1, b):
            raise ValueError(f"SDAR forward: position_ids must be [B or 1, {w}], got {list(position_ids.shape)}")

        x = self.embed_tokens(input_ids)
        cos, sin = _rope_cos_sin(position_ids.to(device), self.config.head_dim, self.config.rope_theta, x.dtype)
        bias = _attention_bias(attention_mask, b, w, self.config.num_attention_heads, total, x.dtype, device)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, bias, past_key_values, store_kv)
            if output_hidden_states:
                hidden.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden[-1] = x
        return x, (past_key_values if use_cache else None), (tuple(hidden) if output_hidden_states else None)


class SDARForBlockDiffusion(_SDARPreTrained):
    """SDAR with its LM head: ``model(input_ids, attention_mask=None,
    position_ids=None, past_key_values=None, use_cache=None, store_kv=False,
    logits_to_keep=0)`` returns :class:`~dmkernels.models.DiffusionLMOutput`
    (``logits`` ``[B, kept, V]`` in the model's dtype, ``past_key_values`` the
    cache when ``use_cache``, ``hidden_states`` on request)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.model = SDARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head._is_lm_head = True  # scaled by logit_std at init
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask=None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        store_kv: bool | None = False,
        logits_to_keep: int | torch.Tensor = 0,
        cache_position: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
    ):
        if isinstance(logits_to_keep, int) and logits_to_keep < 0:
            raise ValueError(f"SDAR forward: logits_to_keep must be >= 0 or an index tensor, got {logits_to_keep}")
        hidden, cache, all_hidden = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            use_cache=use_cache, store_kv=store_kv, cache_position=cache_position,
            output_hidden_states=output_hidden_states,
        )
        if isinstance(logits_to_keep, int):
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
        else:
            hidden = hidden.index_select(1, logits_to_keep.to(hidden.device))
        logits = self.lm_head(hidden)
        if self.config.suppress_mask_logit:
            logits[..., self.config.mask_token_id] = float("-inf")
        out = DiffusionLMOutput(logits=logits, past_key_values=cache, hidden_states=all_hidden)
        return out.to_tuple() if return_dict is False else out
