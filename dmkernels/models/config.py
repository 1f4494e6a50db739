"""Configuration of :class:`~dmkernels.models.DiffusionLM` and two presets.

``tiny_config`` is for unit tests (a few thousand parameters besides the
vocabulary); ``llada_like_config`` has LLaDA's vocabulary and special tokens
around a small body, so a sampler sees logits of the real width
(V = 126464) while a CPU forward stays cheap.
"""
from __future__ import annotations

from transformers import PretrainedConfig

from ..constants import LLADA_EOS_ID as LLADA_EOS_TOKEN_ID
from ..constants import LLADA_MASK_ID as LLADA_MASK_TOKEN_ID
from ..constants import LLADA_VOCAB_SIZE

__all__ = ["DiffusionLMConfig", "tiny_config", "llada_like_config"]


class DiffusionLMConfig(PretrainedConfig):
    """Hyper-parameters of a small bidirectional (LLaDA-like) transformer.

    Besides the usual transformer sizes:

    - ``mask_token_id``: the ``[MASK]`` token; ``None`` means ``vocab_size - 1``.
    - ``eos_token_id``, ``pad_token_id``: carried for samplers; the model
      itself gives them no special treatment.
    - ``logit_std``: the LM head is initialised so that the logits of a
      position have about this standard deviation over the vocabulary (the
      final RMSNorm makes every hidden state have unit RMS). 4.0 gives, at
      V = 126464, a top probability that is sometimes above 0.5 and often
      below 0.1, like a real model's mix of easy and hard positions.
    - ``max_position_embeddings``: informational only with RoPE alone. RoPE
      is computed from the positions on the fly and positions are never
      checked (that would need a host sync).
    - ``position_embedding``: ``"rope"`` (the default: rotary embeddings
      only, so attention sees relative positions only) or ``"rope+learned"``
      (also a learned absolute embedding per position, added to the token
      embeddings; positions must then be below ``max_position_embeddings``).
      Absolute positions matter for grid tasks such as Sudoku, where "same
      row" or "same box" is not a function of the offset between two cells.
    """

    model_type = "dmkernels_diffusion_lm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 512,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 128,
        max_position_embeddings: int = 4096,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        mask_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        logit_std: float = 4.0,
        position_embedding: str = "rope",
        **kwargs,
    ):
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        if (hidden_size // num_attention_heads) % 2:
            raise ValueError("head_dim must be even for RoPE")
        if position_embedding not in ("rope", "rope+learned"):
            raise ValueError(f"position_embedding must be 'rope' or 'rope+learned', got {position_embedding!r}")
        kwargs["tie_word_embeddings"] = False  # the LM head is separate (LLaDA's is too)
        super().__init__(**kwargs)
        # Set after the base __init__, which (in some transformers versions)
        # assigns its own defaults to the token ids.
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.logit_std = float(logit_std)
        self.position_embedding = position_embedding

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def tiny_config(vocab_size: int = 512, **overrides) -> DiffusionLMConfig:
    """A very small model for tests: hidden 32, 2 layers, 2 heads, SwiGLU 64.

    ``mask_token_id = vocab_size - 1``, ``eos_token_id = pad_token_id =
    vocab_size - 2`` unless overridden.
    """
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        mask_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 2,
    )
    kw.update(overrides)
    return DiffusionLMConfig(**kw)


def llada_like_config(**overrides) -> DiffusionLMConfig:
    """LLaDA's vocabulary and special tokens (V = 126464, mask 126336, EOS and
    pad 126081) around a small body (hidden 64, 2 layers, 4 heads), so that a
    CPU forward at L ~ 300 takes a fraction of a second; the LM head
    (126464 x 64) dominates the cost."""
    kw = dict(
        vocab_size=LLADA_VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        mask_token_id=LLADA_MASK_TOKEN_ID,
        eos_token_id=LLADA_EOS_TOKEN_ID,
        pad_token_id=LLADA_EOS_TOKEN_ID,
    )
    kw.update(overrides)
    return DiffusionLMConfig(**kw)
