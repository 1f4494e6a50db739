"""LLaDA2 (LLaDA2.0 / LLaDA2.1, inclusionAI) mixture-of-experts block-diffusion
transformer, written from the public architecture description, with random
weights for tests and benchmarks.

    from dmkernels.models import LLaDA2ForBlockDiffusion, llada2_tiny_config
    model = LLaDA2ForBlockDiffusion(llada2_tiny_config()).eval()
    out = model(x, attention_mask=bias_4d, position_ids=pos)   # out.logits [B, W, V] float32

Architecture (what a hub ``config.json`` of ``LLaDA2MoeModelLM`` describes):

- ``model.word_embeddings`` (``padding_idx = pad_token_id``), N decoder layers,
  a final RMSNorm ``model.norm``, an untied ``lm_head`` without bias; the logits
  are returned in float32 whatever the model dtype (as the public model does).
- Each layer: ``h + attention(input_layernorm(h))``, then
  ``h + mlp(post_attention_layernorm(h))``. RMSNorm normalises in float32,
  casts back, then scales by its weight.
- Attention: one fused ``query_key_value`` projection (bias if
  ``use_qkv_bias``) split into H query heads and KV key / value heads (GQA);
  with ``use_qk_norm`` a per-head RMSNorm over ``head_dim`` on queries and keys
  (``query_layernorm``, ``key_layernorm``) **before** the rotary embedding;
  rotary embedding on the first ``int(head_dim * partial_rotary_factor)``
  channels of each head (rotate-half layout, transformers' default frequencies,
  cos / sin computed in float32 and cast to the model dtype), the other channels
  unrotated; scaled dot-product attention with scale ``head_dim ** -0.5``, no
  causal structure of its own; output projection ``dense`` (bias if
  ``use_bias``).
- MLP: layers ``< first_k_dense_replace`` (all layers when ``num_experts`` is
  None) use a SwiGLU MLP of ``intermediate_size``; the others a sparse MoE:
  router ``gate`` (``weight [E, hidden]``, buffer ``expert_bias [E]``) computed in
  float32: ``scores = sigmoid(x @ W^T)``; experts are *chosen* on
  ``scores + expert_bias`` with group-limited top-k (experts in ``n_group``
  equal groups, a group's score is the sum of its two best experts, only the
  ``topk_group`` best groups compete, then the ``num_experts_per_tok`` best
  experts), but *weighted* by the unbiased ``scores`` of the chosen experts,
  normalised to sum to one when more than one is chosen (plus 1e-20) and
  multiplied by ``routed_scaling_factor``. The output is the weighted sum of the
  chosen SwiGLU experts (``moe_intermediate_size``), accumulated in float32 in
  slot order and cast back, plus ``shared_experts`` (one SwiGLU of
  ``moe_intermediate_size * num_shared_experts``) unless
  ``num_shared_experts`` is None.

Parameter names follow the hub checkpoints (``model.layers.N.attention.query_key_value``,
``...mlp.gate.expert_bias``, ``...mlp.experts.E.down_proj``, ``...mlp.shared_experts.*``)
so a real state dict loads.

**MoE cost.** The public eval path sorts tokens by expert and reads per-expert
counts on the host (a device sync per MoE layer). Here every expert runs on all
tokens and each (token, slot) picks its expert's row with a gather: no host
sync and fixed shapes (CUDA-graph friendly), but ``num_experts / num_experts_per_tok``
times the expert FLOPs and a ``[E, tokens, hidden]`` intermediate. That is fine
for the tiny test bodies here (8 experts) and not meant for a 256-expert
checkpoint.

Forward: ``model(input_ids, attention_mask=None, position_ids=None,
past_key_values=None, use_cache=None, logits_to_keep=0, output_hidden_states=False)``.

- ``attention_mask`` over the ``K`` keys a query sees (cached + fresh):
  ``None`` = every key visible (full bidirectional attention, also when a cache
  is used; the public code would make it causal when queries and keys differ in
  number); 4-D ``[B or 1, 1 or H, W, K]`` additive float (any float dtype; cast
  to the model dtype: the public LLaDA2.0 ``generate`` passes a bf16 mask) or
  bool (True = attend); extra key columns beyond K are ignored (as the public
  eager attention does); 2-D ``[B, K]`` 0/1 or bool = key padding over full
  bidirectional attention (the public code would switch to causal attention for
  a 2-D mask with zeros; no sampler here relies on that). Masked entries get the
  dtype's lowest finite value, so a query that sees no key gets finite
  (meaningless) output instead of NaN.
- ``position_ids`` ``[B or 1, W]``; default ``past_len + arange(W)``.
- ``past_key_values``: a transformers ``Cache`` (e.g. ``DynamicCache``, or any
  subclass implementing ``update``): every attention layer calls
  ``past_key_values.update(k, v, layer_idx, {"sin": sin, "cos": cos})`` with its
  post-rotary keys and attends to what it returns, like the public model. With
  ``use_cache`` true (the default follows ``config.use_cache``, True like the
  public config) and no cache given, a fresh ``DynamicCache`` is made. The output
  carries the cache when ``use_cache`` is true.
- ``logits_to_keep``: int ``n > 0`` = the LM head on the last n positions only,
  0 = all, or a 1-D index tensor of positions.

Nothing in ``forward`` reads device values on the host.

Cross-check (one-off, not part of the test suite, which never imports public
code): the public LLaDA2.0 / 2.1 modeling files (ZHZisZZ/dllm copies), imported
under transformers 5.24 with small import shims and SDPA attention, given this
model's state dict, return bit-identical logits in float32, float64 and bf16 on
the tiny config (block-causal mask), up to float32 ULPs (~2e-6) where their
per-expert row subsets make the BLAS kernel differ. In bf16 that holds for
public models loaded with ``from_pretrained(torch_dtype=bf16)``, whose rotary
frequencies stay float32; ``public_model.to(torch.bfloat16)`` also rounds them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from ..constants import LLADA2_EOS_ID, LLADA2_MASK_ID, LLADA2_VOCAB_SIZE, LLADA_EOS_ID
from .transformer import DiffusionLMOutput

try:  # transformers >= 5: init functions that skip weights already loaded
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init

__all__ = [
    "LLaDA2Config",
    "LLaDA2ForBlockDiffusion",
    "LLaDA2Output",
    "llada2_tiny_config",
    "llada2_like_config",
    "block_causal_mask",
]


class LLaDA2Config(PretrainedConfig):
    """The public ``LLaDA2MoeConfig`` fields with their public defaults, so a hub
    ``config.json`` dict can be passed in, plus three options of ours.

    Public fields used by the model: ``vocab_size, hidden_size, intermediate_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_act,
    use_qkv_bias, use_qk_norm, use_bias, rms_norm_eps, max_position_embeddings,
    rope_theta, rope_scaling (None only), pad_token_id, num_experts,
    num_shared_experts, num_experts_per_tok, n_group, topk_group,
    routed_scaling_factor, moe_intermediate_size, first_k_dense_replace,
    head_dim, partial_rotary_factor, use_cache``. Accepted and ignored (eval
    only / not used by the public forward either): ``norm_head``, the dropouts,
    ``initializer_range``, ``use_sliding_window``, ``sliding_window``,
    ``max_window_layers``, ``output_router_logits``; other hub keys are kept as
    attributes. ``num_key_value_heads`` of 0 means ``num_attention_heads`` (as
    LLaDA2.1's config; LLaDA2.0's would divide by zero); ``head_dim`` None means
    ``hidden_size // num_attention_heads``.

    Ours:

    - ``logit_std``: the LM head is initialised so that a position's logits have
      about this standard deviation over the vocabulary (the final RMSNorm gives
      unit-RMS inputs), so confidences spread around the samplers' thresholds.
    - ``mask_token_id``, ``pin_mask_logit``: with ``pin_mask_logit`` the logit of
      ``mask_token_id`` is set to ``-inf``. A trained model never predicts the mask
      token; a random one may, and then LLaDA2.1's loop can spin forever. The
      presets turn it on; the default (real checkpoints) is off.
    - ``expert_bias_std``: the router's ``expert_bias`` buffer is initialised
      with this standard deviation (0 = zeros, as the public model), so tests can
      check that the bias routes but does not weight.
    """

    model_type = "dmkernels_llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=30592,
        hidden_size=1024,
        intermediate_size=None,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=0,
        hidden_act="silu",
        use_qkv_bias=False,
        use_qk_norm=True,
        use_bias=True,
        rms_norm_eps=1e-05,
        norm_head=False,
        tie_word_embeddings=False,
        embedding_dropout=0.1,
        attention_dropout=0.1,
        output_dropout=0.1,
        initializer_range=0.02,
        max_position_embeddings=16384,
        rope_theta=10000.0,
        use_cache=True,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
        rope_scaling=None,
        pad_token_id=LLADA_EOS_ID,  # the public default (LLaDA 1's EOS id)
        num_experts=16,
        num_shared_experts=0,
        num_experts_per_tok=2,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        moe_intermediate_size=None,
        first_k_dense_replace=0,
        head_dim=None,
        output_router_logits=False,
        partial_rotary_factor=0.5,
        eos_token_id=None,
        mask_token_id=None,
        pin_mask_logit=False,
        logit_std=4.0,
        expert_bias_std=0.0,
        **kwargs,
    ):
        if tie_word_embeddings:
            raise ValueError("LLaDA2Config: tie_word_embeddings=True is not supported (LLaDA2's LM head is separate)")
        super().__init__(tie_word_embeddings=False, **kwargs)
        # Set after the base __init__, which may assign its own token-id defaults.
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_qk_norm = use_qk_norm
        self.use_bias = use_bias
        self.rms_norm_eps = rms_norm_eps
        self.norm_head = norm_head
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.use_cache = use_cache
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        # transformers 5 keeps rope_scaling as rope_parameters (its setter warns).
        if rope_scaling is not None or getattr(self, "rope_parameters", None) is None:
            self.rope_parameters = rope_scaling
        self.pad_token_id = pad_token_id
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.output_router_logits = output_router_logits
        self.partial_rotary_factor = partial_rotary_factor
        self.eos_token_id = eos_token_id
        self.mask_token_id = mask_token_id
        self.pin_mask_logit = bool(pin_mask_logit)
        self.logit_std = float(logit_std)
        self.expert_bias_std = float(expert_bias_std)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.num_experts is not None and layer_idx >= self.first_k_dense_replace

    def check(self) -> None:
        """Raises ValueError for a configuration the model cannot be built from.
        (Not in ``__init__``: transformers builds default configs internally, and the
        public defaults alone, e.g. ``moe_intermediate_size=None``, describe no model.)"""
        def bad(msg):
            raise ValueError(f"LLaDA2Config: {msg}")

        if self.num_attention_heads % self.num_key_value_heads:
            bad(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")
        d = self.rotary_dim
        if d % 2 or not 0 < d <= self.head_dim:
            bad(f"the rotary dim int(head_dim * partial_rotary_factor) = {d} must be even and in (0, head_dim]")
        rope = getattr(self, "rope_parameters", None)
        if rope is not None and rope.get("rope_type", rope.get("type")) not in (None, "default"):
            bad(f"rope_scaling {rope!r} is not supported (only the default rotary embedding)")
        if self.hidden_act != "silu":
            bad(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        layers = range(self.num_hidden_layers)
        if any(not self.is_moe_layer(i) for i in layers) and not self.intermediate_size:
            bad("intermediate_size must be set when some layer is dense")
        if any(self.is_moe_layer(i) for i in layers):
            e, g = self.num_experts, self.n_group
            if not self.moe_intermediate_size:
                bad("moe_intermediate_size must be set when some layer is a MoE layer")
            if g <= 0 or e % g or e // g < 2:
                bad(f"num_experts {e} must split into n_group {g} groups of at least 2 experts")
            if not 0 < self.topk_group <= g:
                bad(f"topk_group {self.topk_group} must be in [1, n_group = {g}]")
            if not 0 < self.num_experts_per_tok <= self.topk_group * (e // g):
                bad(f"num_experts_per_tok {self.num_experts_per_tok} must be in [1, topk_group * experts per group]")
        if self.pin_mask_logit and not (self.mask_token_id is not None and 0 <= self.mask_token_id < self.vocab_size):
            bad(f"pin_mask_logit needs mask_token_id in [0, vocab_size), got {self.mask_token_id}")


def llada2_tiny_config(vocab_size: int = 512, **overrides) -> LLaDA2Config:
    """The smallest config that exercises every path: hidden 32, 2 layers (layer 0
    dense, layer 1 MoE), 4 query heads over 2 KV heads (GQA), head_dim 16 with a
    rotary dim of 8, q/k norm, qkv and output biases, 8 experts in 4 groups (2
    groups kept), 2 experts per token, 1 shared expert, a random ``expert_bias``.
    ``mask_token_id = V - 1`` (its logit pinned to -inf), ``eos_token_id =
    pad_token_id = V - 2``."""
    kw = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, first_k_dense_replace=1,
        intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        partial_rotary_factor=0.5, use_qk_norm=True, use_qkv_bias=True, use_bias=True,
        num_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, num_shared_experts=1,
        moe_intermediate_size=16, routed_scaling_factor=2.5, rope_theta=600000.0, rms_norm_eps=1e-6,
        mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2,
        pin_mask_logit=True, expert_bias_std=0.5,
    )
    kw.update(overrides)
    return LLaDA2Config(**kw)


def llada2_like_config(**overrides) -> LLaDA2Config:
    """LLaDA2's vocabulary and special tokens (V = 157184, mask 156895, EOS and pad
    156892) around the tiny body of :func:`llada2_tiny_config`, so a sampler sees
    logits of the real width while a CPU forward stays cheap (the 157184 x 32 LM
    head dominates)."""
    kw = dict(mask_token_id=LLADA2_MASK_ID, eos_token_id=LLADA2_EOS_ID, pad_token_id=LLADA2_EOS_ID)
    kw.update(overrides)
    return llada2_tiny_config(vocab_size=LLADA2_VOCAB_SIZE, **kw)


def block_causal_mask(total: int, block_length: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The additive block-causal mask ``[1, 1, total, total]`` of LLaDA2's samplers:
    query ``i`` sees key ``j`` (0) iff ``j // block_length <= i // block_length``,
    else ``-inf``; blocks are aligned at position 0."""
    block = torch.arange(total, device=device) // block_length
    keep = block[None, :] <= block[:, None]
    return torch.zeros((total, total), dtype=dtype, device=device).masked_fill(~keep, float("-inf"))[None, None]


@dataclass
class LLaDA2Output(DiffusionLMOutput):
    """``logits`` ``[B, W or kept, V]`` float32; ``past_key_values``: the
    transformers ``Cache`` when ``use_cache`` is true, else None;
    ``hidden_states``: with ``output_hidden_states=True`` the input embeddings and
    every layer's output (the last after the final norm), in the model dtype."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, cast back, then scale (the public order of operations).
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _rotary_cos_sin(position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin ``[B, 1, W, rotary_dim]``: transformers' default frequencies, float32
    math, cast to ``dtype``. Computed per call (d/2 numbers) so that casting the model
    to another dtype cannot round the frequencies."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=position_ids.device).float() / rotary_dim
    inv_freq = 1.0 / (theta ** exponent)
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_partial(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first ``cos.shape[-1]`` channels, the rest unchanged."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    first, second = rot[..., : d // 2], rot[..., d // 2:]
    turned = torch.cat((-second, first), dim=-1)
    return torch.cat((rot * cos + turned * sin, rest), dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    def __init__(self, config: LLaDA2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.query_layernorm = self.key_layernorm = None
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(self, x, cos, sin, bias, cache):
        b, w, _ = x.shape
        heads = self.query_key_value(x).view(b, w, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = heads.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.query_layernorm is not None:
            q = self.query_layernorm(q)
            k = self.key_layernorm(k)
        q = _rotate_partial(q, cos, sin)
        k = _rotate_partial(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, {"sin": sin, "cos": cos})
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:  # GQA: query head h reads KV head h // groups
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if bias is not None:
            bias = bias[..., : k.shape[-2]]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim ** -0.5)
        return self.dense(out.transpose(1, 2).reshape(b, w, self.num_heads * self.head_dim))


class Router(nn.Module):
    """The MoE gate: returns the chosen experts ``[T, k]`` and their float32 weights."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, x):
        logits = F.linear(x.to(torch.float32), self.weight.to(torch.float32))
        scores = torch.sigmoid(logits)
        routing = scores + self.expert_bias
        t = routing.shape[0]
        per_group = routing.view(t, self.n_group, -1)
        group_score = per_group.topk(2, dim=-1).values.sum(dim=-1)
        kept_groups = group_score.topk(self.topk_group, dim=-1, sorted=False).indices
        group_keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept_groups, True)
        expert_keep = group_keep[:, :, None].expand_as(per_group).reshape(t, -1)
        chosen = routing.masked_fill(~expert_keep, float("-inf")).topk(self.top_k, dim=-1).indices
        weight = scores.gather(1, chosen)
        if self.top_k > 1:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        return chosen, weight * self.routed_scaling_factor


class SparseMoE(nn.Module):
    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.experts = nn.ModuleList(
            SwiGLU(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        self.gate = Router(config)
        if config.num_shared_experts is not None:
            self.shared_experts = SwiGLU(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
        else:
            self.shared_experts = None

    def forward(self, x):
        b, w, h = x.shape
        flat = x.reshape(b * w, h)
        chosen, weight = self.gate(flat)
        # Every expert on every token (no host sync, fixed shapes); then each
        # (token, slot) reads its expert's row.
        every = torch.stack([expert(flat) for expert in self.experts], dim=1)  # [T, E, h]
        picked = every.gather(1, chosen[:, :, None].expand(-1, -1, h))  # [T, k, h]
        total = picked[:, 0].to(torch.float32) * weight[:, 0, None]
        for slot in range(1, picked.shape[1]):  # float32, slot order (as the public reduction)
            total = total + picked[:, slot].to(torch.float32) * weight[:, slot, None]
        out = total.to(x.dtype).view(b, w, h)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, config: LLaDA2Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_moe_layer(layer_idx):
            self.mlp = SparseMoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, bias, cache):
        x = x + self.attention(self.input_layernorm(x), cos, sin, bias, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Backbone(nn.Module):
    """Embeddings, layers and final norm (the ``model.`` prefix of the checkpoint)."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        pad = config.pad_token_id
        # An id outside the vocabulary (the public default 126081 with a small V) is no padding row.
        pad = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def _attention_bias(mask, b: int, w: int, total: int, dtype, device):
    """The additive bias for SDPA, broadcastable to ``[B, H, W, total]`` (or with more
    key columns, cut by the attention), or None for full attention."""
    if mask is None:
        return None
    lowest = torch.finfo(dtype).min
    if mask.dim() == 2:
        if tuple(mask.shape) != (b, total):
            raise ValueError(f"LLaDA2: a 2-D attention_mask must be [B, keys] = {[b, total]}, got {list(mask.shape)}")
        keep = mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~keep, lowest)
    if mask.dim() != 4:
        raise ValueError(f"LLaDA2: attention_mask must be None, 2-D or 4-D, got {mask.dim()}-D")
    if mask.shape[-2] not in (w, 1) or mask.shape[-1] < total or mask.shape[0] not in (b, 1):
        raise ValueError(f"LLaDA2: a 4-D attention_mask must be [B or 1, 1 or H, {w} queries, >= {total} keys], "
                         f"got {list(mask.shape)}")
    mask = mask.to(device)
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~mask, lowest)
    # -inf -> lowest: identical weights wherever a query sees some key, no NaN where it sees none.
    return mask.to(dtype).clamp_min(lowest)


class LLaDA2ForBlockDiffusion(PreTrainedModel):
    """LLaDA2 MoE with an LM head (the public ``LLaDA2MoeModelLM`` minus its
    ``generate``); see the module docstring for the architecture and the forward."""

    config_class = LLaDA2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    def __init__(self, config: LLaDA2Config):
        config.check()
        super().__init__(config)
        self.model = LLaDA2Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        # Fan-in scaled projections and unit-variance embeddings keep the residual
        # stream O(1) and attention far from uniform (so a wrong mask or position
        # shows in the logits); biases are random too so their paths are exercised.
        cfg = self.config
        if module is self.lm_head:
            _init.normal_(module.weight, mean=0.0, std=cfg.logit_std / math.sqrt(module.in_features))
        elif isinstance(module, nn.Linear):
            if module.in_features > 0:
                _init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.in_features))
            if module.bias is not None:
                _init.normal_(module.bias, mean=0.0, std=0.1)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=1.0)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            _init.ones_(module.weight)
        elif isinstance(module, Router):
            _init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.weight.shape[1]))
            if cfg.expert_bias_std > 0:
                _init.normal_(module.expert_bias, mean=0.0, std=cfg.expert_bias_std)
            else:
                _init.zeros_(module.expert_bias)

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def set_input_embeddings(self, value):
        self.model.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ):
        if input_ids.dim() != 2:
            raise ValueError(f"LLaDA2: input_ids must be [B, W], got {list(input_ids.shape)}")
        b, w = input_ids.shape
        device = input_ids.device
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is None and use_cache:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0

        if position_ids is None:
            position_ids = (past + torch.arange(w, device=device))[None]
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.shape[-1] != w or position_ids.shape[0] not in (b, 1):
            raise ValueError(f"LLaDA2: position_ids must be [B or 1, {w}], got {list(position_ids.shape)}")

        x = self.model.word_embeddings(input_ids)
        cos, sin = _rotary_cos_sin(position_ids.to(device), self.config.rotary_dim, self.config.rope_theta, x.dtype)
        bias = _attention_bias(attention_mask, b, w, past + w, x.dtype, device)

        hidden = [x] if output_hidden_states else None
        for layer in self.model.layers:
            x = layer(x, cos, sin, bias, past_key_values)
            if output_hidden_states:
                hidden.append(x)
        x = self.model.norm(x)
        if output_hidden_states:
            hidden[-1] = x

        if isinstance(logits_to_keep, int):
            kept = x[:, -logits_to_keep:] if logits_to_keep > 0 else x
        else:
            kept = x.index_select(1, logits_to_keep.to(device))
        logits = self.lm_head(kept).float()
        if self.config.pin_mask_logit:
            logits[..., self.config.mask_token_id] = float("-inf")

        out = LLaDA2Output(
            logits=logits,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )
        return out.to_tuple() if return_dict is False else out
