"""Learned scheduling policies: a small network scores the masked positions.

:class:`LearnedPolicy` turns a step's statistics into per-position features on
the device, scores them with a scorer, and selects from the scores, like any
other :class:`~dmkernels.policies.Policy`:

  features  [B, W, F]: confidence, margin, entropy, log-probability of the
            proposed token, relative position in the block, step fraction,
            mask bit. Positions that are not masked get zeros but their mask
            bit. Then the columns of the policy's *feature providers*, in the
            order given (``LearnedPolicy(scorer, features=("sudoku.constraints",))``):
            task features computed on the device from the step context, each
            provider registered by name with :func:`register_feature`. A scorer
            built with ``hidden_size`` also reads the model's last hidden state
            through a linear projection (the sampler then calls the model with
            ``output_hidden_states=True``).
  scorer    [B, W, F] -> [B, W]: :class:`MLPScorer` (per position, about 150
            parameters) or :class:`TransformerScorer` (one transformer block
            over the block's feature sequence with step conditioning, about
            0.3M parameters; it sees which positions are still masked, so it
            can learn which ones interact), or :class:`BlockScorer` (a copy of
            the denoiser's own last transformer block, reading the hidden state
            that enters that block: ``BlockScorer.from_model(model)``; the
            policy then asks the sampler for ``hidden_states[-2]`` through
            ``policy.hidden_layer``; with ``proposal_embedding=True`` it also
            reads the embedding of each position's step token, the proposal
            where eligible and the canvas elsewhere: :meth:`LearnedPolicy.step_tokens`).
  selection "topk": the schedule's count (fixed-step decoding, like
            LowConfidence); "threshold": every position with
            sigmoid(score) > 0.5, at least the best (adaptive decoding, the
            policy's own count, like Fast-dLLM's threshold).

For training (:mod:`dmkernels.train`), exploring makes the choice stochastic:
Plackett-Luce sampling of the top-k set (Gumbel-top-k on score / explore) or
independent Bernoulli(sigmoid(score)) draws in threshold mode. A training
rollout passes a :class:`Trajectory` to the sampler as its recorder (it reaches
the policy as ``ctx.recorder``): the rollout explores at the trajectory's
``explore`` and the trajectory records what each step saw and chose, so that the
exact log-probability of the chosen sets can be recomputed under new parameters
(:func:`set_log_prob`). The policy object itself is never changed by a rollout.

Save and load with safetensors: :meth:`LearnedPolicy.save` / :meth:`LearnedPolicy.load`.
A saved policy names its feature providers; loading looks them up in the
registry (code is never stored in the file), so the module that registers them
must be imported first (``dmkernels.tasks.sudoku`` registers ``"sudoku.constraints"``).
"""
from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .. import _checkpoint
from .. import _checks as check
from .. import ops
from .base import Policy, StepContext

__all__ = ["FEATURES", "BlockScorer", "FeatureProvider", "LearnedPolicy", "MLPScorer", "TransformerScorer",
           "Trajectory", "feature_provider", "feature_providers", "register_feature", "run_scorer", "set_log_prob",
           "step_features"]

FEATURES = ("confidence", "margin", "entropy", "log_prob", "position", "step_fraction", "mask")
NUM_FEATURES = len(FEATURES)
_LOG_FLOOR = -30.0


def step_features(ctx: StepContext) -> torch.Tensor:
    """float32 features [B, W, 7] of a step (order: FEATURES), computed on the device."""
    s = ctx.stats
    eligible = ctx.eligible
    B, W = eligible.shape

    def clean(v):  # -inf / +inf / NaN (positions not masked, rows without a distribution) -> 0
        v = v.float()
        return torch.where(eligible & torch.isfinite(v), v, 0.0)

    confidence = clean(s.confidence)
    log_prob = torch.where(confidence > 0, torch.log(confidence.clamp_min(1e-30)), 0.0).clamp_min(_LOG_FLOOR)
    position = torch.arange(W, device=eligible.device, dtype=torch.float32) / max(W - 1, 1)
    steps = max(int(ctx.steps), 1)
    step = torch.as_tensor(ctx.step, device=eligible.device, dtype=torch.float32)
    return torch.stack([
        confidence,
        clean(s.margin),
        clean(s.entropy),
        torch.where(eligible, log_prob, 0.0),
        position.expand(B, W),
        (step / steps).expand(B, W),
        eligible.float(),
    ], dim=-1)


# Feature providers ------------------------------------------------------------

@dataclass(frozen=True)
class FeatureProvider:
    """A registered source of extra per-position features (see :func:`register_feature`)."""

    name: str
    fn: Callable[[StepContext], torch.Tensor]
    columns: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.columns)


_PROVIDERS: dict[str, FeatureProvider] = {}
_PROVIDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}")
_MAX_PROVIDER_WIDTH = 256
# Where the library's own providers are registered, for the error of a name not
# (yet) registered: loading never imports anything a file names.
_KNOWN_PROVIDERS = {"sudoku.constraints": "dmkernels.tasks.sudoku"}


def register_feature(name: str, columns: Sequence[str] | int, *, replace: bool = False):
    """Register a feature provider under ``name``; use as a decorator::

        @register_feature("mytask.parity", ["proposal_even"])
        def parity(ctx):                        # ctx: the step's StepContext
            even = (ctx.stats.token % 2 == 0) & ctx.eligible
            return even.float()[..., None]      # float32 [B, W, 1], on ctx.eligible's device

    The function maps a :class:`StepContext` to float32 features ``[B, W,
    len(columns)]`` on the device of the step (``ctx.eligible``), without host
    sync (no ``.item()``, ``.tolist()``, ``bool(tensor)``, boolean-mask
    indexing). ``columns``: the features' names (or their number). A
    :class:`LearnedPolicy` built with ``features=[name, ...]`` appends the
    columns after :data:`FEATURES`, in order, and saves only the name: the
    module that registers a provider must be imported before a policy naming it
    is built or loaded. Registering a taken name raises unless ``replace=True``
    (registering the same function again is allowed: a module imported twice).
    """
    op = "policies.register_feature"
    if not isinstance(name, str) or not _PROVIDER_NAME.fullmatch(name):
        check.fail(op, f"name must be a string of letters, digits, '_', '.', '-' (at most 100, starting with a "
                       f"letter or '_'), got {name!r}", TypeError if not isinstance(name, str) else ValueError)
    if isinstance(columns, bool) or not isinstance(columns, (int, list, tuple)):
        check.fail(op, f"{name!r}: columns must be a list of feature names or their number, got "
                       f"{type(columns).__name__}", TypeError)
    if isinstance(columns, int):
        columns = tuple(f"{name}[{i}]" for i in range(columns))
    columns = tuple(columns)
    if not 1 <= len(columns) <= _MAX_PROVIDER_WIDTH or not all(isinstance(c, str) and c for c in columns):
        check.fail(op, f"{name!r}: columns must name 1 to {_MAX_PROVIDER_WIDTH} features (non-empty strings), "
                       f"got {columns!r}")

    def add(fn):
        if not callable(fn):
            check.fail(op, f"{name!r}: the provider must be callable, got {type(fn).__name__}", TypeError)
        old = _PROVIDERS.get(name)
        if old is not None and not replace and (old.fn is not fn or old.columns != columns):
            check.fail(op, f"a feature provider named {name!r} is already registered ({old.fn!r}); "
                           "pass replace=True to replace it")
        _PROVIDERS[name] = FeatureProvider(name, fn, columns)
        return fn

    return add


def feature_providers() -> tuple[str, ...]:
    """The names of the registered feature providers."""
    return tuple(sorted(_PROVIDERS))


def _unknown_provider(name) -> str:
    hint = _KNOWN_PROVIDERS.get(name) if isinstance(name, str) else None
    how = (f"import {hint} first, which registers it" if hint else
           "register it with dmkernels.policies.register_feature (import the module that does) first")
    return f"unknown feature provider {name!r}: {how} (registered: {list(feature_providers())})"


def feature_provider(name: str) -> FeatureProvider:
    """The registered provider ``name`` (ValueError naming it when there is none)."""
    if not isinstance(name, str) or name not in _PROVIDERS:
        check.fail("policies.feature_provider", _unknown_provider(name))
    return _PROVIDERS[name]


def _provided(op: str, provider: FeatureProvider, ctx: StepContext) -> torch.Tensor:
    """One provider's features for the step, their type, dtype, device and shape checked
    (metadata only: no host sync)."""
    out = provider.fn(ctx)
    who = f"feature provider {provider.name!r}"
    want = f"float32 [B, W, {provider.width}] = {[*ctx.eligible.shape, provider.width]} on {ctx.eligible.device}"
    if not isinstance(out, torch.Tensor):
        check.fail(op, f"{who} returned {type(out).__name__}, expected a tensor {want}", TypeError)
    if out.dtype != torch.float32:
        check.fail(op, f"{who} returned dtype {out.dtype}, expected {want}", TypeError)
    if out.device != ctx.eligible.device:
        check.fail(op, f"{who} returned a tensor on {out.device}, expected {want}")
    if tuple(out.shape) != (*ctx.eligible.shape, provider.width):
        check.fail(op, f"{who} returned shape {list(out.shape)}, expected {want}")
    return out


class _HiddenInput(nn.Module):
    """Optional input from the model: its last hidden state [B, W, hidden_size]
    through a linear projection to ``hidden_features`` extra features."""

    def _init_hidden(self, hidden_size, hidden_features):
        self.hidden_proj = nn.Linear(hidden_size, hidden_features) if hidden_size else None
        return hidden_features if hidden_size else 0

    def _inputs(self, features, hidden):
        if self.hidden_proj is None:
            return features
        if hidden is None:
            raise ValueError(f"{type(self).__name__}: built with hidden_size, but no hidden states were given")
        return torch.cat([features, self.hidden_proj(hidden.to(features.dtype))], dim=-1)


class MLPScorer(_HiddenInput):
    """One score per position from its features alone: F -> hidden -> 1."""

    def __init__(self, num_features: int = NUM_FEATURES, hidden: int = 16, hidden_size: int | None = None,
                 hidden_features: int = 8):
        super().__init__()
        self.config = dict(kind="mlp", num_features=num_features, hidden=hidden, hidden_size=hidden_size,
                           hidden_features=hidden_features)
        width = num_features + self._init_hidden(hidden_size, hidden_features)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self._inputs(features, hidden)).squeeze(-1)


class TransformerScorer(_HiddenInput):
    """One pre-norm transformer block over the block's feature sequence.

    Inputs: features projected to ``d_model``, plus a learned position embedding
    (up to ``max_positions`` positions per block) and a step embedding (a
    projection of the step fraction), so the scores of a position depend on
    which other positions are still masked and how sure the model is there.
    """

    def __init__(self, num_features: int = NUM_FEATURES, d_model: int = 128, heads: int = 4, ff: int = 512,
                 max_positions: int = 512, hidden_size: int | None = None, hidden_features: int = 8):
        super().__init__()
        self.config = dict(kind="transformer", num_features=num_features, d_model=d_model, heads=heads, ff=ff,
                           max_positions=max_positions, hidden_size=hidden_size, hidden_features=hidden_features)
        self.inp = nn.Linear(num_features + self._init_hidden(hidden_size, hidden_features), d_model)
        self.pos = nn.Embedding(max_positions, d_model)
        self.step = nn.Linear(1, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 1))
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        B, W, _ = features.shape
        if W > self.pos.num_embeddings:
            raise ValueError(f"TransformerScorer: blocks of {W} positions exceed max_positions = "
                             f"{self.pos.num_embeddings}")
        step_fraction = features[..., FEATURES.index("step_fraction"):FEATURES.index("step_fraction") + 1]
        h = self.inp(self._inputs(features, hidden)) + self.pos.weight[:W] + self.step(step_fraction)
        a = self.norm1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.norm2(h))
        return self.out(h).squeeze(-1)


class BlockScorer(nn.Module):
    """A copy of the denoiser's last transformer block (or last few), scoring each position.

    The generic policy of published work on learned unmasking: no task
    features, the denoiser's own representation. Input: the hidden state that
    enters the model's last block (``hidden_states[-2]`` in Hugging Face
    convention: the policy's ``hidden_layer`` is -2, which the sampler honours)
    plus the step features (confidence, margin, entropy, ...: :data:`FEATURES`,
    and any provider columns). Computation::

        x = hidden + feature_in(features)          # feature_in starts at zero
          (+ token_in(token_embed(tokens)))        # proposal_embedding=True; token_in starts at zero
        y = norm(block(lower_blocks(x)))           # the model's last block(s) and final norm, copied
        score = head(y) + skip(features)           # head starts at zero

    so a scorer made by :meth:`from_model` reproduces the model's last block
    and final norm exactly at the start (``body``), and its scores start as a
    linear function of the step features (a warm start fits them to
    confidence). Attention runs over the positions of the current block only,
    at positions 0..W-1 (RoPE sees relative offsets, so this matches the model
    when the block is the whole window it ran on, e.g. ``infill`` without a
    cache; otherwise the scorer sees the block alone). No attention mask: the
    block's rows are all generated positions.

    With ``proposal_embedding=True`` (``from_model(model, proposal_embedding=True)``)
    the block's input also carries the embedding of each position's *step
    token*: the token the step would commit there (the proposal) at eligible
    positions, the canvas token elsewhere (see :meth:`LearnedPolicy.step_tokens`).
    ``token_embed`` is a frozen copy of the model's input embedding table (the
    scorer reads tokens in the model's own embedding space; only the projection
    ``token_in`` learns), so attention can compare a cell's proposal with the
    proposals and committed tokens of the others. Nothing in it is task-specific.

    ``blocks`` (``from_model(model, blocks=n)``): copy the model's last ``n``
    blocks instead of one and read the hidden state entering the first of them
    (``hidden_states[-1 - n]``): ``lower_blocks`` holds the earlier ones,
    ``block`` stays the last. More of the model's depth to retrain, at the cost
    of running n blocks per step.

    Built for :class:`dmkernels.models.DiffusionLM`'s block (pre-RMSNorm
    attention with RoPE, SwiGLU MLP); ``from_model`` refuses other models with
    an error naming the argument.
    """

    def __init__(self, num_features: int = NUM_FEATURES, hidden_size: int = 64, heads: int = 4,
                 intermediate_size: int = 128, rms_norm_eps: float = 1e-5, rope_theta: float = 500000.0,
                 proposal_embedding: bool = False, vocab_size: int | None = None, blocks: int = 1):
        super().__init__()
        from ..models.config import DiffusionLMConfig
        from ..models.transformer import DiffusionLMBlock, RMSNorm

        op = "learned.BlockScorer"
        if not isinstance(proposal_embedding, bool):
            check.fail(op, f"proposal_embedding must be a bool, got {proposal_embedding!r}", TypeError)
        if proposal_embedding and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
            check.fail(op, f"proposal_embedding=True needs vocab_size, the model's vocabulary (an int >= 1), got "
                           f"{vocab_size!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= _MAX_BLOCKS:
            check.fail(op, f"blocks must be an int in [1, {_MAX_BLOCKS}] (how many of the model's last blocks to "
                           f"copy), got {blocks!r}")
        self.config = dict(kind="block", num_features=num_features, hidden_size=hidden_size, heads=heads,
                           intermediate_size=intermediate_size, rms_norm_eps=float(rms_norm_eps),
                           rope_theta=float(rope_theta))
        if proposal_embedding:  # only then: older configurations stay as they were written
            self.config.update(proposal_embedding=True, vocab_size=vocab_size)
        if blocks != 1:  # likewise
            self.config.update(blocks=blocks)
        block_config = DiffusionLMConfig(vocab_size=2, hidden_size=hidden_size, num_hidden_layers=1,
                                         num_attention_heads=heads, intermediate_size=intermediate_size,
                                         rms_norm_eps=rms_norm_eps, rope_theta=rope_theta)
        self._head_dim = block_config.head_dim
        self.feature_in = nn.Linear(num_features, hidden_size)
        self.lower_blocks = nn.ModuleList(DiffusionLMBlock(block_config) for _ in range(blocks - 1))
        self.block = DiffusionLMBlock(block_config)
        self.norm = RMSNorm(hidden_size, rms_norm_eps)
        self.head = nn.Linear(hidden_size, 1)
        self.skip = nn.Linear(num_features, 1)
        zero = [self.feature_in, self.head]
        if proposal_embedding:
            # Frozen: the model's own token space (copied by from_model); token_in learns to read it.
            self.token_embed = nn.Embedding(vocab_size, hidden_size)
            self.token_embed.weight.requires_grad_(False)
            self.token_in = nn.Linear(hidden_size, hidden_size)
            zero.append(self.token_in)
        for layer in zero:  # the copied block decides at the start
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for m in list(self.block.modules()) + list(self.lower_blocks.modules()):  # random init (no model to copy)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))

    @property
    def hidden_layer(self) -> int:
        """Which entry of the model's ``hidden_states`` the scorer reads: the input of
        the first copied block (-2 for the last block alone)."""
        return -1 - self.config.get("blocks", 1)

    @property
    def reads_tokens(self) -> bool:
        """The scorer reads the step tokens (``proposal_embedding=True``)."""
        return bool(self.config.get("proposal_embedding"))

    @classmethod
    def from_model(cls, model, num_features: int = NUM_FEATURES, *, proposal_embedding: bool = False,
                   blocks: int = 1) -> "BlockScorer":
        """A scorer whose blocks and norm are copies of ``model``'s last ``blocks``
        blocks and final norm (a :class:`dmkernels.models.DiffusionLM`); the copy is
        then trained on its own, the model is never changed. ``proposal_embedding``:
        also read the step tokens through a frozen copy of the model's input
        embedding table (``model.embed_tokens``)."""
        from ..models.transformer import DiffusionLMBlock, RMSNorm

        op = "learned.BlockScorer.from_model"
        layers = getattr(model, "layers", None)
        config = getattr(model, "config", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not isinstance(layers[-1], DiffusionLMBlock):
            check.fail(op, f"model must be a dmkernels.models.DiffusionLM (its .layers[-1] a DiffusionLMBlock), got "
                           f"{type(model).__name__}", TypeError)
        if not isinstance(getattr(model, "norm", None), RMSNorm):
            check.fail(op, f"model has no final RMSNorm .norm ({type(model).__name__})", TypeError)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= len(layers):
            check.fail(op, f"blocks must be an int in [1, {len(layers)}] (the model has {len(layers)} blocks), got "
                           f"{blocks!r}")
        embed = getattr(model, "embed_tokens", None)
        if proposal_embedding and (not isinstance(embed, nn.Embedding) or embed.embedding_dim != config.hidden_size):
            check.fail(op, f"proposal_embedding=True: model has no input embedding table .embed_tokens of width "
                           f"{config.hidden_size} ({type(model).__name__})", TypeError)
        scorer = cls(num_features=num_features, hidden_size=config.hidden_size, heads=config.num_attention_heads,
                     intermediate_size=config.intermediate_size, rms_norm_eps=config.rms_norm_eps,
                     rope_theta=config.rope_theta, proposal_embedding=bool(proposal_embedding),
                     vocab_size=embed.num_embeddings if proposal_embedding else None, blocks=blocks)
        first = len(layers) - blocks
        for i, (replica, source) in enumerate(zip(list(scorer.lower_blocks) + [scorer.block], layers[first:]), first):
            which = "last block" if i == len(layers) - 1 else f"block layers[{i}]"
            if not isinstance(source, DiffusionLMBlock):
                check.fail(op, f"the model's {which} is a {type(source).__name__}, not a DiffusionLMBlock", TypeError)
            mine, theirs = replica.state_dict(), source.state_dict()
            bad = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
            if bad or set(theirs) != set(mine):
                check.fail(op, f"the model's {which} does not match a DiffusionLMBlock of its config (parameters "
                               f"{bad or sorted(set(theirs) ^ set(mine))})")
            with torch.no_grad():
                replica.load_state_dict({k: v.detach().float() for k, v in theirs.items()})
            replica.attn_norm.eps = source.attn_norm.eps
            replica.mlp_norm.eps = source.mlp_norm.eps
        with torch.no_grad():
            scorer.norm.weight.copy_(model.norm.weight.detach().float())
            if proposal_embedding:
                scorer.token_embed.weight.copy_(embed.weight.detach().float())
        scorer.norm.eps = model.norm.eps
        return scorer

    def _check_tokens(self, tokens, shape) -> None:
        """Metadata only (no host sync): an integer tensor [B, W] on the hidden states' device."""
        op = "learned.BlockScorer"
        if not self.reads_tokens:
            if tokens is not None:
                check.fail(op, "tokens were given, but the scorer was built without proposal_embedding")
            return
        if tokens is None:
            check.fail(op, "built with proposal_embedding=True: needs the step tokens [B, W] (run it through a "
                           "LearnedPolicy, which passes them)")
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype.is_complex \
                or tokens.dtype == torch.bool:
            check.fail(op, f"tokens must be an integer tensor [B, W], got "
                           f"{tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__}", TypeError)
        if tuple(tokens.shape) != tuple(shape):
            check.fail(op, f"tokens have shape {list(tokens.shape)}, expected {list(shape)} "
                           "(the hidden states' [B, W])")
        if tokens.device != self.token_embed.weight.device:
            check.fail(op, f"tokens are on {tokens.device}, the scorer on {self.token_embed.weight.device}")

    def body(self, hidden: torch.Tensor, features: torch.Tensor | None = None,
             tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The block and final norm on ``hidden`` [B, W, H] (plus the projected
        features and step tokens when given): [B, W, H], as the model computes them."""
        from ..models.transformer import _rope_cos_sin

        B, W, H = hidden.shape
        if H != self.config["hidden_size"]:
            raise ValueError(f"BlockScorer: the hidden states have width {H}, but the scorer's block was built "
                             f"for hidden_size = {self.config['hidden_size']} (copy it from the same model with "
                             "BlockScorer.from_model)")
        x = hidden.to(self.head.weight.dtype)
        if features is not None:
            x = x + self.feature_in(features.to(x.dtype))
        if tokens is not None or self.reads_tokens:
            self._check_tokens(tokens, (B, W))
            x = x + self.token_in(self.token_embed(tokens).to(x.dtype))
        positions = torch.arange(W, device=x.device).expand(B, W)
        cos, sin = _rope_cos_sin(positions, self._head_dim, self.config["rope_theta"], x.dtype)
        for block in self.lower_blocks:
            x, _ = block(x, cos, sin, None, None, None)
        y, _ = self.block(x, cos, sin, None, None, None)
        return self.norm(y)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        if hidden is None:
            which = "last block" if self.hidden_layer == -2 else f"last {-1 - self.hidden_layer} blocks"
            raise ValueError(f"BlockScorer: needs the hidden state entering the model's {which} "
                             f"(hidden_states[{self.hidden_layer}]); run it through a LearnedPolicy, which asks the "
                             "sampler for it")
        y = self.body(hidden, features, tokens)
        return (self.head(y) + self.skip(features.to(y.dtype))).squeeze(-1)


SCORERS = {"mlp": MLPScorer, "transformer": TransformerScorer, "block": BlockScorer}

# What LearnedPolicy.load accepts: scorers are small networks, so these caps are far
# above any sensible one and far below what would exhaust a machine's memory.
_MAX_WIDTH = 4096        # hidden, d_model, hidden_features
_MAX_FF = 16384
_MAX_HEADS = 256
_MAX_POSITIONS = 65536
_MAX_MODEL_HIDDEN = 65536  # hidden_size: the language model's hidden state
_MAX_VOCAB = 1 << 20       # BlockScorer's vocab_size (its frozen embedding table)
_MAX_BLOCKS = 256          # BlockScorer's blocks (copied transformer blocks)
_MAX_PARAMETERS = 1 << 26


# The constructor arguments of each scorer kind and their defaults: what a saved
# configuration may set, and what it leaves out.
_SCORER_DEFAULTS = {kind: {name: p.default for name, p in inspect.signature(cls).parameters.items()}
                    for kind, cls in SCORERS.items()}
_SCORER_KEYS = {kind: tuple(defaults) for kind, defaults in _SCORER_DEFAULTS.items()}


def _scorer_config(op: str, where: str, config, num_features: int = NUM_FEATURES) -> dict:
    """A scorer's saved configuration, every field's type and range checked
    (``num_features``: what the policy's features add up to)."""
    if not isinstance(config, dict):
        check.fail(op, f"{where}: scorer must be a JSON object, got {type(config).__name__}")
    kind = _checkpoint.choice(op, where, "scorer.kind", config.get("kind"), tuple(SCORERS))
    _checkpoint.keys(op, where + " scorer", config, ("kind",) + _SCORER_KEYS[kind], required=("kind",))
    out = dict(config)
    if "num_features" not in config and num_features != NUM_FEATURES:
        check.fail(op, f"{where}: scorer.num_features is missing; the features add up to {num_features}")
    limits = dict(hidden=_MAX_WIDTH, d_model=_MAX_WIDTH, hidden_features=_MAX_WIDTH, ff=_MAX_FF,
                  heads=_MAX_HEADS, max_positions=_MAX_POSITIONS, hidden_size=_MAX_MODEL_HIDDEN,
                  intermediate_size=_MAX_FF, blocks=_MAX_BLOCKS)
    reals = dict(rms_norm_eps=1.0, rope_theta=1e12)  # BlockScorer's floats: (0, cap]
    for name, value in config.items():
        if name == "kind" or (name == "hidden_size" and value is None and kind != "block"):
            continue
        if name == "proposal_embedding":
            if not isinstance(value, bool):
                check.fail(op, f"{where}: scorer.proposal_embedding must be true or false, got {value!r}")
            continue
        if name == "vocab_size":
            if value is not None or config.get("proposal_embedding"):
                _checkpoint.integer(op, where, "scorer.vocab_size", value, 1, _MAX_VOCAB)
            continue
        if name in reals:
            _checkpoint.real(op, where, f"scorer.{name}", value, 0.0, reals[name])
        elif name == "num_features":  # step_features and the providers' columns are what the scorer reads
            _checkpoint.integer(op, where, "scorer.num_features", value, num_features, num_features)
        else:
            _checkpoint.integer(op, where, f"scorer.{name}", value, 1, limits[name])
    if kind == "transformer":
        d_model = out.get("d_model", _SCORER_DEFAULTS[kind]["d_model"])
        heads = out.get("heads", _SCORER_DEFAULTS[kind]["heads"])
        if d_model % heads:
            check.fail(op, f"{where}: scorer.d_model ({d_model}) must be a multiple of scorer.heads ({heads})")
    if kind == "block":
        h = out.get("hidden_size", _SCORER_DEFAULTS[kind]["hidden_size"])
        heads = out.get("heads", _SCORER_DEFAULTS[kind]["heads"])
        if h % heads or (h // heads) % 2:
            check.fail(op, f"{where}: scorer.hidden_size ({h}) must be a multiple of scorer.heads ({heads}) with an "
                           "even head size (RoPE)")
        if out.get("proposal_embedding") and out.get("vocab_size") is None:
            check.fail(op, f"{where}: scorer.proposal_embedding is true but scorer.vocab_size is missing")
    return out


def _scorer_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter shapes (state_dict names) of the scorer ``config`` describes, computed
    without building it."""
    kind = config["kind"]
    c = {**_SCORER_DEFAULTS[kind], **config}
    shapes = {}
    width = c["num_features"]
    if kind == "block":
        h, m = c["hidden_size"], c["intermediate_size"]
        block = {"attn_norm.weight": (h,), "mlp_norm.weight": (h,),
                 **{f"attn.{p}_proj.weight": (h, h) for p in "qkvo"},
                 "mlp.gate_proj.weight": (m, h), "mlp.up_proj.weight": (m, h), "mlp.down_proj.weight": (h, m)}
        return {
            "feature_in.weight": (h, width), "feature_in.bias": (h,),
            **{f"block.{k}": v for k, v in block.items()},
            **{f"lower_blocks.{i}.{k}": v for i in range(c["blocks"] - 1) for k, v in block.items()},
            "norm.weight": (h,), "head.weight": (1, h), "head.bias": (1,),
            "skip.weight": (1, width), "skip.bias": (1,),
            **({"token_embed.weight": (c["vocab_size"], h), "token_in.weight": (h, h), "token_in.bias": (h,)}
               if c["proposal_embedding"] else {}),
        }
    if c["hidden_size"]:
        shapes["hidden_proj.weight"] = (c["hidden_features"], c["hidden_size"])
        shapes["hidden_proj.bias"] = (c["hidden_features"],)
        width += c["hidden_features"]
    if kind == "mlp":
        h = c["hidden"]
        shapes.update({"net.0.weight": (h, width), "net.0.bias": (h,), "net.2.weight": (1, h), "net.2.bias": (1,)})
        return shapes
    d, ff = c["d_model"], c["ff"]
    shapes.update({
        "inp.weight": (d, width), "inp.bias": (d,),
        "pos.weight": (c["max_positions"], d),
        "step.weight": (d, 1), "step.bias": (d,),
        "norm1.weight": (d,), "norm1.bias": (d,),
        "attn.in_proj_weight": (3 * d, d), "attn.in_proj_bias": (3 * d,),
        "attn.out_proj.weight": (d, d), "attn.out_proj.bias": (d,),
        "norm2.weight": (d,), "norm2.bias": (d,),
        "ff.0.weight": (ff, d), "ff.0.bias": (ff,), "ff.2.weight": (d, ff), "ff.2.bias": (d,),
        "out.0.weight": (d,), "out.0.bias": (d,), "out.1.weight": (1, d), "out.1.bias": (1,),
    })
    return shapes


@dataclass
class Trajectory:
    """The recorder of a rollout: what a learned policy saw and chose at each step
    (for the trainers).

    Pass it to the sampler (``Sampler(..., recorder=trajectory)``; the trainers'
    :func:`dmkernels.train.rollout` does); the policy finds it as ``ctx.recorder``.
    ``explore`` is the temperature the recorded rollout explores at (None:
    deterministic), whatever the policy's own ``explore``; the log-probabilities
    are taken at it (1 when None).

    Per step: features [B, W, F], hidden states (or None), step tokens [B, W]
    (the proposals at eligible positions, the canvas elsewhere), eligible
    [B, W], quota [B] (top-k mode) or None, chosen [B, W], and the
    log-probability of the chosen set under the policy that chose it [B].
    """

    explore: float | None = None

    features: list = field(default_factory=list)
    hidden: list = field(default_factory=list)  # [B, W, H] per step when the scorer reads hidden states
    tokens: list = field(default_factory=list)  # [B, W] the step tokens (LearnedPolicy.step_tokens)
    eligible: list = field(default_factory=list)
    quota: list = field(default_factory=list)
    chosen: list = field(default_factory=list)
    log_prob: list = field(default_factory=list)

    def __post_init__(self):
        if self.explore is not None:
            self.explore = check.real("learned.Trajectory", "explore", self.explore, minimum=0.0, above=True)

    def __len__(self):
        return len(self.features)

    @property
    def temperature(self) -> float:
        """The temperature of the recorded sets' log-probabilities."""
        return self.explore or 1.0

    def record(self, features, hidden, tokens, eligible, quota, chosen, log_prob) -> None:
        """Append one step (the tensors are kept: pass copies of anything the sampler reuses)."""
        self.features.append(features)
        self.hidden.append(hidden)
        self.tokens.append(tokens)
        self.eligible.append(eligible)
        self.quota.append(quota)
        self.chosen.append(chosen)
        self.log_prob.append(log_prob)


class LearnedPolicy(Policy):
    """A scorer network choosing which masked positions to commit.

    Parameters
    ----------
    scorer : an ``nn.Module`` mapping features [B, W, F] to scores [B, W]
        (:class:`MLPScorer`, :class:`TransformerScorer` or your own), with F =
        ``len(FEATURES)`` plus the providers' columns (``policy.num_features``).
    features : names of registered feature providers (:func:`register_feature`)
        whose columns follow :data:`FEATURES`, in this order; () for none.
    selection : "topk" (the schedule's count per step; scheduled) or
        "threshold" (sigmoid(score) > 0.5, at least one; adaptive).
    schedule : for "topk"; default LinearCounts.
    explore : None (deterministic) or a temperature > 0: sample the chosen set
        (Plackett-Luce on score / explore for "topk", Bernoulli(sigmoid(score /
        explore)) for "threshold"), drawing from ``ctx.generator``. A step with
        a :class:`Trajectory` recorder explores at the recorder's ``explore``.

    The policy holds settings and the scorer only: generating with it, or a
    training rollout, leaves it as it was (the trainers change the scorer's
    parameters, nothing else).
    """

    def __init__(self, scorer: nn.Module, *, features: Sequence[str] = (), selection: str = "topk", schedule=None,
                 explore: float | None = None):
        if selection not in ("topk", "threshold"):
            raise ValueError(f"LearnedPolicy: selection must be 'topk' or 'threshold', got {selection!r}")
        self.adaptive = selection == "threshold"
        super().__init__(schedule)
        op = "learned.LearnedPolicy"
        if isinstance(features, str):
            features = (features,)
        if not isinstance(features, (list, tuple)):
            check.fail(op, f"features must be a list of feature provider names, got {type(features).__name__}",
                       TypeError)
        if len(set(features)) != len(features):
            check.fail(op, f"features names a provider twice: {list(features)}")
        # Resolved now, so that an unknown name or a scorer of the wrong width fails
        # before any model call.
        for name in features:
            if not isinstance(name, str) or name not in _PROVIDERS:
                check.fail(op, _unknown_provider(name))
        self._providers = tuple(_PROVIDERS[name] for name in features)
        self.features = tuple(features)
        config = getattr(scorer, "config", None)
        width = config.get("num_features") if isinstance(config, dict) else None
        if width is not None and width != self.num_features:
            parts = " + ".join([f"{NUM_FEATURES} (FEATURES)"] + [f"{p.width} ({p.name})" for p in self._providers])
            check.fail(op, f"the scorer reads num_features = {width}, but the features add up to "
                           f"{parts} = {self.num_features}; build it with num_features={self.num_features}")
        self.scorer = scorer
        self.selection = selection
        self.explore = explore
        self.needs_generator = True  # only draws when exploring; harmless otherwise

    @property
    def explore(self) -> float | None:
        return self._explore

    @explore.setter
    def explore(self, value) -> None:
        # Checked on every assignment, not only in __init__.
        if value is not None:
            value = check.real("learned.LearnedPolicy", "explore", value, minimum=0.0, above=True)
        self._explore = value

    @property
    def uses_quota(self):
        return self.selection == "topk"

    @property
    def num_features(self) -> int:
        """Features per position the scorer reads: :data:`FEATURES` plus the providers' columns."""
        return NUM_FEATURES + sum(p.width for p in self._providers)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The name of every feature column, in order."""
        return FEATURES + tuple(f"{p.name}:{c}" for p in self._providers for c in p.columns)

    def step_features(self, ctx: StepContext) -> torch.Tensor:
        """float32 features [B, W, num_features] of a step: :func:`step_features`, then
        each provider's columns (each checked: tensor, float32, the step's device, shape)."""
        base = step_features(ctx)
        if not self._providers:
            return base
        return torch.cat([base] + [_provided("learned.LearnedPolicy", p, ctx) for p in self._providers], dim=-1)

    @property
    def needs_hidden(self) -> bool:
        """The scorer reads the model's hidden states (the sampler then asks the
        model for ``output_hidden_states``)."""
        return bool(getattr(self.scorer, "config", {}).get("hidden_size"))

    @property
    def hidden_layer(self) -> int:
        """Which entry of the model's ``hidden_states`` reaches the scorer as
        ``ctx.hidden`` (Hugging Face convention: -1 the last layer's output, -2 the
        input of the last block): the scorer's ``hidden_layer``, default -1."""
        return getattr(self.scorer, "hidden_layer", -1)

    @property
    def needs_tokens(self) -> bool:
        """The scorer reads the step tokens (a :class:`BlockScorer` with ``proposal_embedding``)."""
        return bool(getattr(self.scorer, "reads_tokens", False))

    @staticmethod
    def step_tokens(ctx: StepContext) -> torch.Tensor:
        """[B, W] the token each position would hold after the step: the proposal
        (``stats.token``) where eligible, the canvas elsewhere. On the device."""
        return torch.where(ctx.eligible, ctx.stats.token.to(ctx.x.dtype), ctx.x)

    def scores(self, features: torch.Tensor, eligible: torch.Tensor, hidden: torch.Tensor | None = None,
               tokens: torch.Tensor | None = None):
        """float32 scores [B, W]; -inf where not eligible."""
        s = run_scorer(self.scorer, features, hidden, tokens).float()
        return torch.where(eligible, s, float("-inf"))

    @torch.no_grad()
    def select(self, ctx: StepContext) -> torch.Tensor:
        features = self.step_features(ctx)
        hidden = ctx.hidden if self.needs_hidden else None
        if self.needs_hidden and hidden is None:
            raise ValueError("LearnedPolicy: the scorer reads hidden states but the step has none")
        tokens = self.step_tokens(ctx)
        vocab = self.scorer.config["vocab_size"] if self.needs_tokens else None
        if vocab is not None and ctx.logits.shape[-1] > vocab:  # shapes only: no host sync
            check.fail("learned.LearnedPolicy", f"the model proposes from {ctx.logits.shape[-1]} tokens, but the "
                       f"scorer's embedding table holds {vocab} (copy it from the same model with "
                       "BlockScorer.from_model)")
        scores = self.scores(features, ctx.eligible, hidden, tokens if self.needs_tokens else None)
        recorder = ctx.recorder
        explore = self.explore if recorder is None else recorder.explore
        if explore:
            chosen = self._sample(scores, ctx, explore)
        elif self.selection == "topk":
            chosen = ops.select_topk(scores, ctx.quota, ctx.eligible, backend=ctx.backend)
        else:
            chosen = ops.select_threshold(torch.sigmoid(scores), ctx.eligible, 0.5, backend=ctx.backend)
        if recorder is not None:
            recorder.record(features, None if hidden is None else hidden.detach().clone(), tokens,
                            ctx.eligible.clone(), None if ctx.quota is None else ctx.quota.clone(), chosen,
                            set_log_prob(scores, chosen, ctx.eligible, self.selection, explore or 1.0))
        return chosen

    def _sample(self, scores: torch.Tensor, ctx: StepContext, explore: float) -> torch.Tensor:
        u = torch.rand(scores.shape, device=scores.device, generator=ctx.generator).clamp_min(1e-12)
        if self.selection == "topk":
            gumbel = -torch.log(-torch.log(u))
            return ops.select_topk(scores / explore + gumbel, ctx.quota, ctx.eligible, backend=ctx.backend)
        p = torch.sigmoid(scores / explore)
        drawn = ctx.eligible & (u < p)
        # None drawn in a row that has eligible positions: take the most likely one.
        best = ops.select_topk(scores, torch.ones_like(ctx.eligible[:, 0], dtype=torch.int64), ctx.eligible,
                               backend=ctx.backend)
        return torch.where(drawn.any(-1, keepdim=True), drawn, best)

    # Persistence -------------------------------------------------------------

    def save(self, path: str) -> None:
        """Weights and configuration in one safetensors file."""
        from safetensors.torch import save_file

        config = getattr(self.scorer, "config", None)
        if config is None:
            raise ValueError("LearnedPolicy.save: the scorer needs a .config dict (MLPScorer, TransformerScorer, "
                             "BlockScorer)")
        meta = {"dmkernels": json.dumps(dict(scorer=config, selection=self.selection, features=list(self.features)))}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.scorer.state_dict().items()}
        save_file(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: str, *, device=None, schedule=None, explore=None) -> "LearnedPolicy":
        from safetensors.torch import load_file

        # Everything is checked against the file's header before the scorer is built:
        # a crafted configuration must not decide how much memory is allocated.
        op = "learned.LearnedPolicy.load"
        meta, tensors = _checkpoint.header(op, path)
        if "dmkernels" not in meta:
            check.fail(op, f"{path} was not written by LearnedPolicy.save (no 'dmkernels' metadata)")
        where = f"{path} (metadata 'dmkernels')"
        saved = _checkpoint.json_object(op, where, meta["dmkernels"])
        _checkpoint.keys(op, where, saved, ("scorer", "selection", "features"), required=("scorer", "selection"))
        selection = _checkpoint.choice(op, where, "selection", saved["selection"], ("topk", "threshold"))
        # Providers by name only (the file holds no code): each must be registered now.
        features = saved.get("features", [])
        if not isinstance(features, list) or not all(isinstance(n, str) for n in features):
            check.fail(op, f"{where}: features must be a list of provider names, got {features!r}")
        if len(set(features)) != len(features):
            check.fail(op, f"{where}: features names a provider twice: {features}")
        for name in features:
            if name not in _PROVIDERS:
                check.fail(op, f"{where}: {_unknown_provider(name)}")
        width = NUM_FEATURES + sum(_PROVIDERS[n].width for n in features)
        config = _scorer_config(op, where, saved["scorer"], width)
        _checkpoint.match(op, path, _scorer_shapes(config), tensors, _MAX_PARAMETERS)
        kind = config.pop("kind")
        scorer = SCORERS[kind](**config)
        scorer.load_state_dict(load_file(path))
        scorer.eval()
        if device is not None:
            scorer.to(device)
        return cls(scorer, features=features, selection=selection, schedule=schedule, explore=explore)

    def __repr__(self):
        kind = getattr(self.scorer, "config", {}).get("kind", type(self.scorer).__name__)
        extra = f", features={list(self.features)!r}" if self.features else ""
        return f"LearnedPolicy({kind}{extra}, selection={self.selection!r}, explore={self.explore!r})"


def run_scorer(scorer: nn.Module, features: torch.Tensor, hidden: torch.Tensor | None = None,
               tokens: torch.Tensor | None = None) -> torch.Tensor:
    """A scorer's raw scores [B, W], given what it reads: the hidden states when
    not None, the step tokens when it ``reads_tokens`` (the trainers score
    recorded steps through this)."""
    if getattr(scorer, "reads_tokens", False):
        return scorer(features, hidden, tokens)
    return scorer(features) if hidden is None else scorer(features, hidden)


# Log-probability of a chosen set ----------------------------------------------

MAX_EXACT_SET = 12


def set_log_prob(scores: torch.Tensor, chosen: torch.Tensor, eligible: torch.Tensor, selection: str,
                 temperature: float = 1.0) -> torch.Tensor:
    """log P(chosen set) [B] under the exploring policy with these scores.

    "threshold": independent Bernoulli(sigmoid(score / T)) over eligible positions,
    and a row that drew nothing takes its best position, so a chosen singleton
    {best} also has the probability of drawing nothing.

    "topk": k positions drawn without replacement with probabilities
    proportional to w = exp(score / T) (Plackett-Luce). The set's probability
    is that the k chosen all come before every other position in a race of
    exponential clocks with rates w:
      P(S) = integral_0^inf w_R e^{-w_R t} prod_{i in S} (1 - e^{-w_i t}) dt
           = sum_{A subset of S} (-1)^|A| w_R / (w_R + w_A)
    with w_R the total weight of the unchosen eligible positions: exact, in
    2^k terms, for k <= MAX_EXACT_SET. Differentiable in ``scores``.
    """
    z = scores.double() / temperature
    if selection == "threshold":
        logp = torch.nn.functional.logsigmoid(z)
        log1mp = torch.nn.functional.logsigmoid(-z)
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        drawn = torch.where(chosen, logp, torch.where(eligible, log1mp, zero)).sum(-1)
        none = torch.where(eligible, log1mp, zero).sum(-1)
        single = chosen.sum(-1) == 1
        best = torch.where(eligible, z, -math.inf).argmax(-1, keepdim=True)
        is_best = chosen.gather(-1, best).squeeze(-1) & single
        return torch.where(is_best, torch.logaddexp(drawn, none), drawn)

    k = chosen.sum(-1)
    K = int(k.max()) if k.numel() else 0
    if K > MAX_EXACT_SET:
        raise ValueError(f"set_log_prob: sets of {K} positions exceed the exact limit {MAX_EXACT_SET}; "
                         "use more steps (fewer positions per step)")
    B = z.shape[0]
    if K == 0:
        return z.new_zeros(B)
    zmax = torch.where(eligible, z, -math.inf).max(-1, keepdim=True).values
    w = torch.where(eligible, torch.exp(z - zmax), 0.0)
    w_rest = torch.where(chosen, 0.0, w).sum(-1)  # [B]
    # Chosen weights padded to K; padding acts as an infinite weight (always first).
    order = torch.argsort(chosen.to(torch.int8), dim=-1, descending=True, stable=True)[:, :K]
    w_chosen = w.gather(-1, order)
    real = torch.arange(K, device=z.device)[None, :] < k[:, None]
    subsets = torch.arange(1 << K, device=z.device)
    bits = ((subsets[:, None] >> torch.arange(K, device=z.device)[None, :]) & 1).bool()  # [2^K, K]
    size = bits.sum(-1)
    sign = torch.where(size % 2 == 0, 1.0, -1.0).to(z.dtype)
    w_subset = (bits[None].to(z.dtype) * w_chosen[:, None, :]).sum(-1)  # [B, 2^K]
    uses_pad = (bits[None] & ~real[:, None, :]).any(-1)
    w_rest_safe = torch.where(w_rest > 0, w_rest, 1.0)[:, None]  # no 0/0, even in the gradient
    terms = torch.where(uses_pad, 0.0, sign * w_rest_safe / (w_rest_safe + w_subset))
    p = terms.sum(-1)
    # Every eligible position chosen (w_rest = 0): the set is certain.
    p = torch.where(w_rest > 0, p, 1.0)
    return torch.log(p.clamp_min(1e-300))
