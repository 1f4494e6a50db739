"""Pairs: a synthetic task where committing two interacting positions in the
same step hurts, for measuring unmasking orders at very few model calls.

A sequence is a prompt of ``NUM_PAIRS`` hints followed by a generation of
``GEN_LENGTH = 2 * NUM_PAIRS`` tokens. Pair ``p`` owns generation positions
``p`` and ``p + NUM_PAIRS`` (partners at a fixed distance of half the block)
and carries one random symbol ``s_p`` in ``0 .. NUM_SYMBOLS - 1``: position
``p`` holds token ``s_p`` (the first alphabet), its partner token
``s_p + NUM_SYMBOLS`` (the second alphabet). The hint ``p`` of the prompt is
``s_p`` (revealed, probability ``REVEAL`` per pair) or ``UNKNOWN``.

A generation is right when every pair agrees (second == first + NUM_SYMBOLS,
first in the first alphabet) and every revealed hint is kept. An unrevealed
pair has no right symbol of its own: any agreeing pair is right. So a denoiser's
marginal at a position is flat over the 8 symbols until its partner is
committed, then certain; committing both partners of an unrevealed pair in the
same step draws them from two independent marginals, which agree with
probability 1 / NUM_SYMBOLS. An order that commits one partner of every
unrevealed pair before the other never fails this way; confidence cannot tell
the partners apart (both are flat), and distance-based orders (DUS's dilated
groups) commit exactly the far-apart partners together.

Tokens are sampled (``TEMPERATURE = 1.0``), not greedy: with flat marginals the
greedy argmax is decided by the denoiser's tiny idiosyncratic biases, which may
happen to agree for both partners (two denoisers trained alike, differing only
in the training batches, gave LowConfidence 54.6% and 100% at 4 calls under
greedy decoding), so greedy would measure the denoiser's tie-breaking rather
than the order.

Fixed seeded sets: :func:`heldout_set` (the test set, never used for training
or selection) and :func:`dev_set` (model selection); training draws from
``TRAIN_SEED``. The shipped denoiser (``pairs_denoiser.*`` in
:func:`checkpoint_dir`) is trained by ``benchmarks/pairs/train_denoiser.py``;
the shipped learned orders (``pairs_order_rloo_<calls>.safetensors``) by
``benchmarks/pairs/train_policy.py``. See ``benchmarks/pairs/README.md``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import _checkpoint
from .. import _checks as check
from ._proposals import BannedProposals

__all__ = ["NUM_PAIRS", "NUM_SYMBOLS", "PROMPT_LENGTH", "GEN_LENGTH", "UNKNOWN", "MASK_TOKEN", "VOCAB_SIZE",
           "REVEAL", "TEMPERATURE", "HELDOUT_SEED", "DEV_SEED", "TRAIN_SEED", "generate", "heldout_set", "dev_set",
           "partners", "correct", "pair_accuracy", "pairs_config", "checkpoint_dir", "load_denoiser", "load_policy", "POLICY_CALLS",
           "AnswerProposals"]

NUM_PAIRS = 8
NUM_SYMBOLS = 8
PROMPT_LENGTH = NUM_PAIRS
GEN_LENGTH = 2 * NUM_PAIRS
UNKNOWN = 2 * NUM_SYMBOLS      # 16: the hint of an unrevealed pair
MASK_TOKEN = UNKNOWN + 1       # 17
VOCAB_SIZE = MASK_TOKEN + 1    # 18
REVEAL = 0.5
TEMPERATURE = 1.0  # sampled tokens: see the module's docstring
HELDOUT_SEED = 880_001  # the test set: never used for training or model selection
DEV_SEED = 880_002      # the development set: model selection only
TRAIN_SEED = 880_003    # training draws from here (the denoiser and the policies)


def generate(n: int, seed: int, reveal: float = REVEAL) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples from the seeded stream ``seed``: (prompts int64 ``[n,
    PROMPT_LENGTH]``, answers int64 ``[n, GEN_LENGTH]``, one right generation).
    The same arguments give the same tensors on every machine (CPU generator)."""
    n = check.integer("tasks.pairs.generate", "n", n, minimum=0)
    reveal = check.real("tasks.pairs.generate", "reveal", reveal, minimum=0.0, maximum=1.0)
    g = torch.Generator().manual_seed(int(seed))
    # One draw of [n, pairs, 2] uniforms, row by row: the first m examples of a
    # stream do not depend on n (heldout_set(200) is the start of heldout_set(1000)).
    u = torch.rand(n, NUM_PAIRS, 2, generator=g, dtype=torch.float64)
    symbols = (u[..., 0] * NUM_SYMBOLS).to(torch.int64).clamp_max(NUM_SYMBOLS - 1)
    shown = u[..., 1] < reveal
    prompts = torch.where(shown, symbols, torch.full_like(symbols, UNKNOWN))
    answers = torch.cat([symbols, symbols + NUM_SYMBOLS], dim=1)
    return prompts, answers


def heldout_set(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` held-out examples (the test set)."""
    return generate(n, HELDOUT_SEED)


def dev_set(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` development examples (model selection; disjoint stream from the test set)."""
    return generate(n, DEV_SEED)


def partners(device=None) -> torch.Tensor:
    """int64 ``[GEN_LENGTH]``: the partner of each generation position."""
    i = torch.arange(GEN_LENGTH, device=device)
    return (i + NUM_PAIRS) % GEN_LENGTH


def _split(op: str, generated: torch.Tensor, prompts: torch.Tensor):
    if not isinstance(generated, torch.Tensor) or generated.dim() != 2 or generated.shape[1] not in (
            GEN_LENGTH, PROMPT_LENGTH + GEN_LENGTH):
        check.fail(op, f"generated must be [N, {GEN_LENGTH}] (or [N, {PROMPT_LENGTH + GEN_LENGTH}] with the "
                       f"prompt), got {getattr(generated, 'shape', type(generated).__name__)}")
    if not isinstance(prompts, torch.Tensor) or prompts.shape != (generated.shape[0], PROMPT_LENGTH):
        check.fail(op, f"prompts must be [{generated.shape[0]}, {PROMPT_LENGTH}], got "
                       f"{getattr(prompts, 'shape', type(prompts).__name__)}")
    gen = generated[:, -GEN_LENGTH:]
    return gen[:, :NUM_PAIRS], gen[:, NUM_PAIRS:]


def _pairs_ok(op, generated, prompts) -> torch.Tensor:
    first, second = _split(op, generated, prompts)
    agree = (first >= 0) & (first < NUM_SYMBOLS) & (second == first + NUM_SYMBOLS)
    return agree & ((prompts == UNKNOWN) | (first == prompts))


def correct(generated: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """bool ``[N]``: every pair agrees and every revealed hint is kept.
    ``generated``: the generation ``[N, GEN_LENGTH]`` or the whole sequence."""
    return _pairs_ok("tasks.pairs.correct", generated, prompts).all(-1)


def pair_accuracy(generated: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """float ``[N]``: the fraction of right pairs of each generation."""
    return _pairs_ok("tasks.pairs.pair_accuracy", generated, prompts).float().mean(-1)


class AnswerProposals(BannedProposals):
    """The denoiser with the tokens that are never an answer (UNKNOWN, MASK)
    removed from its proposals. Counts its calls and their time (for the
    benchmark's cost per step)."""

    def __init__(self, model):
        super().__init__(model, slice(UNKNOWN, None))


# --------------------------------------------------------------------------
# The shipped denoiser and policies.


def pairs_config(**overrides):
    """The :class:`~dmkernels.models.DiffusionLMConfig` of the shipped denoiser."""
    from ..models import DiffusionLMConfig

    kw = dict(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=PROMPT_LENGTH + GEN_LENGTH,
              mask_token_id=MASK_TOKEN, logit_std=1.0, position_embedding="rope+learned")
    kw.update(overrides)
    return DiffusionLMConfig(**kw)


def checkpoint_dir() -> Path:
    """Where the shipped checkpoints live (package data, shared with Sudoku's)."""
    return Path(__file__).resolve().parent / "checkpoints"


_MAX_DENOISER_PARAMETERS = 1 << 24
_SIZES = dict(hidden_size=(2, 1024), num_hidden_layers=(1, 32), num_attention_heads=(1, 64),
              intermediate_size=(1, 8192))


def _denoiser_config(op: str, meta_file: Path) -> dict:
    # The encoding is fixed by this module; a denoiser reads the whole sequence.
    return _checkpoint.denoiser_config(op, meta_file, vocab_size=VOCAB_SIZE, mask_token_id=MASK_TOKEN, sizes=_SIZES,
                                       positions=(PROMPT_LENGTH + GEN_LENGTH, 4096), special_tokens=False)


def load_denoiser(*, path: str | Path | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """The trained Pairs denoiser (a :class:`~dmkernels.models.DiffusionLM` in
    eval mode) from ``pairs_denoiser.safetensors`` and its ``.json`` (config and
    training record) in :func:`checkpoint_dir`, or the ``.safetensors`` at ``path``."""
    from safetensors.torch import load_file

    from ..models import DiffusionLM, DiffusionLMConfig

    op = "tasks.pairs.load_denoiser"
    weights = Path(path) if path is not None else checkpoint_dir() / "pairs_denoiser.safetensors"
    meta_file = weights.with_suffix(".json")
    if not weights.exists() or not meta_file.exists():
        raise FileNotFoundError(f"dmkernels.{op}: no checkpoint at {weights} (+ .json); train one with "
                                "benchmarks/pairs/train_denoiser.py")
    config = _denoiser_config(op, meta_file)
    _checkpoint.match(op, weights, _checkpoint.denoiser_shapes(config), _checkpoint.header(op, weights)[1],
                      _MAX_DENOISER_PARAMETERS)
    model = DiffusionLM(DiffusionLMConfig(**config))
    model.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(weights)).items()})
    return model.to(device=device, dtype=dtype).eval()


POLICY_CALLS = (4, 8)  # the budgets the shipped learned orders were trained for


def load_policy(calls: int, *, device=None):
    """The shipped learned order for ``calls`` model calls per block
    (``pairs_order_rloo_<calls>.safetensors``, a :class:`~dmkernels.learned.LearnedPolicy`)."""
    from ..policies.learned import LearnedPolicy

    if calls not in POLICY_CALLS:
        check.fail("tasks.pairs.load_policy", f"calls must be one of {POLICY_CALLS}, got {calls!r}")
    return LearnedPolicy.load(str(checkpoint_dir() / f"pairs_order_rloo_{calls}.safetensors"), device=device)
