"""9x9 Sudoku as a masked-diffusion task: where the unmasking order matters.

A puzzle is a canvas of 81 tokens, one per cell in row-major order; the
givens hold their digit and the blanks hold ``[MASK]``. A denoiser fills the
masks; whether the whole grid comes out right depends heavily on the order in
which a sampler commits positions (commit a wrong digit early and the rest of
the grid is built around it).

Encoding (``VOCAB_SIZE = 10``)::

    digit 1..9  ->  token 0..8
    blank       ->  MASK_TOKEN = 9   (= vocab_size - 1, DiffusionLM's default mask id)

Two representations appear below: *digits* (Python sequences or tensors of
0..9 with 0 = blank; what the solver and generator use) and *tokens* (long
tensors ``[N, 81]`` with the encoding above; what the model and the scoring
functions use). :func:`digits_to_tokens` and :func:`tokens_to_digits` convert.

Generator
    :func:`random_grid` fills an empty grid by randomised backtracking (most
    constrained cell first, digits tried in a random order), so grids are
    diverse, not relabellings of one grid. :func:`make_puzzle` removes cells of
    a solution in random order and keeps a removal only if the puzzle still has
    exactly one solution (checked by a bitmask solver: "is there a solution
    with this cell different from its digit?"). A removal pass over all 81
    cells ends in a *minimal* puzzle, typically 22-27 givens (median about 25).
    When a pass stalls above the requested number of givens, another random
    removal order is tried on the same grid (``passes`` times), then a new
    grid; so every puzzle returned has exactly the requested givens. At 24
    givens about a third of passes succeed; below about 21 generation becomes
    very slow, and :func:`generate_puzzles` raises after ``max_grids`` grids.

Seeds
    Everything is a pure function of its seed: the i-th grid or puzzle of a
    seed comes from its own ``random.Random`` seeded with a string naming the
    stream, the seed and i (Python hashes string seeds with SHA-512, the same
    in every process). So ``generate_puzzles(100, seed=s)`` is the first 100
    puzzles of ``generate_puzzles(200, seed=s)``. Training grids
    (:func:`generate_grids`) and puzzles (:func:`generate_puzzles`) are
    different streams; the held-out set (:func:`heldout_puzzles`) is the
    puzzle stream at ``HELDOUT_SEED``, which no training script uses.

Scoring (batched over ``[N, 81]`` tokens, or one ``[81]`` canvas)
    :func:`solved`: every row, column and box is a permutation of 1..9 and
    every given is kept (for a puzzle with a unique solution this is the same
    as "equals the solution"). :func:`cell_accuracy`: fraction of the
    originally blank cells that hold the solution's digit.

Constraints (on the device, batched, no host sync)
    :func:`constraints` reads a canvas and the denoiser's proposals: per cell,
    the digits still legal given the committed cells, whether the proposal is
    legal, naked singles (one legal digit) and hidden singles (the only place
    in a row, column or box where a digit is legal), and how many masked peers
    propose the same digit. :func:`constraint_features` is the same as a
    :class:`~dmkernels.policies.LearnedPolicy` feature provider, registered as
    ``"sudoku.constraints"`` (importing this module registers it), and
    :class:`SinglesFirst` is the hand rule "singles first, then confidence":
    a Sudoku-specific reference policy for the learned ones.

The shipped denoiser
    :func:`load_denoiser` returns the :class:`~dmkernels.models.DiffusionLM`
    trained by ``benchmarks/sudoku/train_denoiser.py`` from the checkpoint
    shipped in ``dmkernels/tasks/checkpoints/`` (two training budgets,
    ``"short"`` and ``"long"``; the learned policies sit beside them).
    :func:`greedy_fill` is a minimal reference loop (one position per model
    call: random, most confident, or an oracle that knows the solution) for
    sanity checks; the library's samplers are what benchmarks should use.
"""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from .. import _checkpoint
from .. import _checks as check
from .. import ops
from ..policies.base import Policy
from ..policies.learned import register_feature

__all__ = [
    "NUM_CELLS",
    "VOCAB_SIZE",
    "MASK_TOKEN",
    "HELDOUT_SEED",
    "BUDGETS",
    "count_solutions",
    "solve",
    "random_grid",
    "make_puzzle",
    "generate_grids",
    "generate_puzzles",
    "heldout_puzzles",
    "DEV_SEED",
    "dev_puzzles",
    "CONSTRAINT_FEATURES",
    "constraints",
    "constraint_features",
    "SinglesFirst",
    "digits_to_tokens",
    "tokens_to_digits",
    "augment",
    "valid_grid",
    "solved",
    "cell_accuracy",
    "sudoku_config",
    "checkpoint_dir",
    "load_denoiser",
    "greedy_fill",
]

NUM_CELLS = 81
VOCAB_SIZE = 10
MASK_TOKEN = 9
HELDOUT_SEED = 990_001  # the held-out puzzles; never used for training
DEV_SEED = 7777  # the development puzzles: model selection, never training
BUDGETS = ("short", "long")  # the committed checkpoints

# --------------------------------------------------------------------------
# Bitmask solver. A cell's candidates are a 9-bit mask: bit d-1 set = digit
# d still possible. Search picks the empty cell with the fewest candidates.

_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_ALL = 0x1FF
_POPCOUNT = [bin(m).count("1") for m in range(512)]


def _search(cells: list[int], limit: int, rng: random.Random | None = None,
            forbid_cell: int = -1, forbid_digit: int = 0) -> int:
    """Count the completions of ``cells`` (digits, 0 = blank) up to ``limit``.

    Fills ``cells`` in place with the first completion found when
    ``limit == 1`` (otherwise its contents afterwards are unspecified). ``rng``: try candidate
    digits in a random order (grid generation). ``forbid_cell`` /
    ``forbid_digit``: that cell may not take that digit."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    empties = []
    for i, v in enumerate(cells):
        if v:
            if not 1 <= v <= 9:
                raise ValueError(f"cell {i} holds {v}; digits are 0 (blank) or 1..9")
            b = 1 << (v - 1)
            r, c, x = _ROW[i], _COL[i], _BOX[i]
            if (rows[r] | cols[c] | boxes[x]) & b:
                return 0  # the givens already clash
            rows[r] |= b
            cols[c] |= b
            boxes[x] |= b
        else:
            empties.append(i)
    forbid_bit = (1 << (forbid_digit - 1)) if forbid_digit else 0

    def search(n: int, need: int) -> int:  # counts up to need, never more
        if n == 0:
            return 1
        best, best_count, best_mask = -1, 10, 0
        for k in range(n):
            i = empties[k]
            m = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            if i == forbid_cell:
                m &= ~forbid_bit
            count = _POPCOUNT[m]
            if count < best_count:
                best, best_count, best_mask = k, count, m
                if count <= 1:
                    break
        if best_count == 0:
            return 0
        i = empties[best]
        empties[best] = empties[n - 1]
        empties[n - 1] = i
        r, c, x = _ROW[i], _COL[i], _BOX[i]
        digits = [d for d in range(9) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        total = 0
        for d in digits:
            b = 1 << d
            rows[r] |= b
            cols[c] |= b
            boxes[x] |= b
            cells[i] = d + 1
            total += search(n - 1, need - total)
            if total >= need:
                return total  # early exit: the masks are not restored (not used again), cells keep the completion
            rows[r] ^= b
            cols[c] ^= b
            boxes[x] ^= b
            cells[i] = 0
        empties[n - 1] = empties[best]
        empties[best] = i
        return total

    return search(len(empties), limit)


def _check_cells(puzzle: Sequence[int]) -> list[int]:
    cells = [int(v) for v in puzzle]
    if len(cells) != NUM_CELLS:
        raise ValueError(f"a Sudoku has {NUM_CELLS} cells, got {len(cells)}")
    return cells


def count_solutions(puzzle: Sequence[int], limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` (81 digits, 0 = blank), counted up to
    ``limit`` (``limit=2`` answers "none, one, or several")."""
    return _search(_check_cells(puzzle), max(1, int(limit)))


def solve(puzzle: Sequence[int]) -> list[int] | None:
    """One solution of ``puzzle`` (81 digits, 0 = blank) as 81 digits, or None."""
    cells = _check_cells(puzzle)
    return cells if _search(cells, 1) else None


def _rng(stream: str, seed: int, index: int) -> random.Random:
    # String seeds are hashed with SHA-512 by random.Random: stable across processes.
    return random.Random(f"dmkernels.sudoku.{stream}:{int(seed)}:{int(index)}")


def random_grid(rng: random.Random | int) -> list[int]:
    """A complete valid grid (81 digits 1..9) by randomised backtracking."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    cells = [0] * NUM_CELLS
    if not _search(cells, 1, rng=rng):  # pragma: no cover - an empty grid always has a completion
        raise RuntimeError("no grid found")
    return cells


def _unique_without(puzzle: list[int], i: int, digit: int) -> bool:
    """Whether blanking cell ``i`` (which holds ``digit`` in the one solution
    of ``puzzle``) keeps the solution unique: no solution has another digit there."""
    puzzle[i] = 0
    other = _search(list(puzzle), 1, forbid_cell=i, forbid_digit=digit)
    puzzle[i] = digit
    return other == 0


def make_puzzle(solution: Sequence[int], givens: int, rng: random.Random | int,
                passes: int = 10) -> list[int] | None:
    """A puzzle (81 digits, 0 = blank) with exactly ``givens`` givens whose
    only solution is ``solution``, or None if ``passes`` random removal orders
    all stall above ``givens`` (each pass removes cells in a random order,
    keeping a removal only if the solution stays unique)."""
    if not 17 <= givens <= NUM_CELLS:
        raise ValueError(f"givens must be in 17..81 (no 9x9 Sudoku with fewer than 17 is unique), got {givens}")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    solution = _check_cells(solution)
    for _ in range(passes):
        puzzle = list(solution)
        order = list(range(NUM_CELLS))
        rng.shuffle(order)
        left = NUM_CELLS
        for i in order:
            if left == givens:
                break
            if _unique_without(puzzle, i, puzzle[i]):
                puzzle[i] = 0
                left -= 1
        if left == givens:
            return puzzle
    return None


def generate_grids(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` complete grids as tokens ``[n, 81]`` (long); grid i depends only on (seed, i)."""
    grids = [random_grid(_rng("grid", seed, i)) for i in range(n)]
    return digits_to_tokens(torch.tensor(grids, dtype=torch.long).view(n, NUM_CELLS))


@lru_cache(maxsize=4096)
def _puzzle(givens: int, seed: int, index: int, passes: int, max_grids: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rng = _rng("puzzle", seed, index)
    for _ in range(max_grids):
        solution = random_grid(rng)
        puzzle = make_puzzle(solution, givens, rng, passes=passes)
        if puzzle is not None:
            return tuple(puzzle), tuple(solution)
    raise RuntimeError(
        f"no puzzle with {givens} givens after {max_grids} grids x {passes} removal orders; "
        "ask for more givens (random removal rarely gets below about 21)"
    )


def generate_puzzles(n: int, givens: int = 24, seed: int = 0, *, passes: int = 10,
                     max_grids: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` puzzles with a unique solution and exactly ``givens`` givens.

    Returns ``(puzzles, solutions)``, long tensors ``[n, 81]`` of tokens
    (``MASK_TOKEN`` in the blanks of ``puzzles``). Puzzle i depends only on
    (givens, seed, i, passes, max_grids); results are memoised."""
    pairs = [_puzzle(int(givens), int(seed), i, int(passes), int(max_grids)) for i in range(n)]
    puzzles = torch.tensor([p for p, _ in pairs], dtype=torch.long).view(n, NUM_CELLS)
    solutions = torch.tensor([s for _, s in pairs], dtype=torch.long).view(n, NUM_CELLS)
    return digits_to_tokens(puzzles), digits_to_tokens(solutions)


def heldout_puzzles(n: int = 200, givens: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out evaluation set: ``generate_puzzles(n, givens,
    seed=HELDOUT_SEED)``, ``(puzzles, solutions)`` as tokens ``[n, 81]``.
    Smaller ``n`` gives a prefix of the larger set."""
    return generate_puzzles(n, givens, seed=HELDOUT_SEED)


def dev_puzzles(n: int = 500, givens: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """The development set, for model selection (choosing checkpoints, settings):
    ``generate_puzzles(n, givens, seed=DEV_SEED)``. Disjoint in purpose from the
    held-out set, which reports results and selects nothing."""
    return generate_puzzles(n, givens, seed=DEV_SEED)


# --------------------------------------------------------------------------
# Encoding and scoring.


def digits_to_tokens(digits) -> torch.Tensor:
    """Digits (0 = blank, 1..9) to tokens (MASK_TOKEN, 0..8)."""
    d = torch.as_tensor(digits, dtype=torch.long)
    return torch.where(d == 0, torch.full_like(d, MASK_TOKEN), d - 1)


def tokens_to_digits(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens (0..8, MASK_TOKEN) to digits (1..9, 0 = blank)."""
    t = torch.as_tensor(tokens, dtype=torch.long)
    return torch.where(t == MASK_TOKEN, torch.zeros_like(t), t + 1)


def _units(grid: torch.Tensor) -> torch.Tensor:
    """``[N, 27, 9]``: the 9 rows, 9 columns and 9 boxes of ``[N, 81]`` grids."""
    n = grid.shape[0]
    g = grid.reshape(n, 9, 9)
    boxes = g.reshape(n, 3, 3, 3, 3).permute(0, 1, 3, 2, 4).reshape(n, 9, 9)
    return torch.cat([g, g.transpose(1, 2), boxes], dim=1)


def _batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    x = torch.as_tensor(x)
    if x.shape[-1] != NUM_CELLS or x.dim() not in (1, 2):
        raise ValueError(f"expected tokens [N, 81] or [81], got {list(x.shape)}")
    return (x[None], True) if x.dim() == 1 else (x, False)


def valid_grid(pred: torch.Tensor) -> torch.Tensor:
    """Bool ``[N]`` (or 0-d for one ``[81]`` grid): every row, column and box
    holds each of the digit tokens 0..8 exactly once (so no MASK is left)."""
    g, single = _batch(pred)
    digits = torch.arange(9, device=g.device)
    counts = (_units(g)[..., None] == digits).sum(-2)  # [N, 27, 9]
    ok = (counts == 1).all(-1).all(-1)
    return ok[0] if single else ok


def solved(pred: torch.Tensor, puzzle: torch.Tensor) -> torch.Tensor:
    """Bool ``[N]`` (or 0-d): ``pred`` is a valid complete grid and keeps every
    given of ``puzzle`` (tokens; MASK_TOKEN marks the blanks)."""
    p, single = _batch(pred)
    q, _ = _batch(puzzle)
    given = q != MASK_TOKEN
    kept = ((p == q) | ~given).all(-1)
    ok = valid_grid(p) & kept
    return ok[0] if single else ok


def cell_accuracy(pred: torch.Tensor, solution: torch.Tensor, puzzle: torch.Tensor) -> torch.Tensor:
    """Float ``[N]`` (or 0-d): the fraction of the originally blank cells of
    ``puzzle`` where ``pred`` holds the solution's token. ``.mean()`` over a
    set whose puzzles have the same number of givens is the per-cell accuracy."""
    p, single = _batch(pred)
    s, _ = _batch(solution)
    q, _ = _batch(puzzle)
    blank = q == MASK_TOKEN
    right = ((p == s) & blank).sum(-1).float()
    acc = right / blank.sum(-1).clamp_min(1).float()
    return acc[0] if single else acc


def augment(grids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a random validity-preserving symmetry to each grid (tokens
    ``[N, 81]``, MASK allowed): digit relabelling, row permutations within
    bands, band permutations, the same for columns, and transposition. The
    random draws depend only on N and the generator's state, not on the
    contents, so puzzles and their solutions augmented with identically
    seeded generators get the same symmetry each."""
    n = grids.shape[0]
    dev = grids.device

    def perm(k):
        return torch.rand(n, k, generator=generator).argsort(-1)

    def line_perm():  # [N, 9]: a permutation of 9 lines that keeps bands together
        bands = perm(3)
        inner = torch.rand(n, 3, 3, generator=generator).argsort(-1)
        return (bands[:, :, None] * 3 + inner).reshape(n, 9)

    relabel = torch.cat([perm(9), torch.arange(9, VOCAB_SIZE).expand(n, -1)], dim=1)  # MASK stays MASK
    g = torch.gather(relabel, 1, grids.cpu().long())
    rows, cols = line_perm(), line_perm()
    g = g.view(n, 9, 9)
    g = torch.gather(g, 1, rows[:, :, None].expand(n, 9, 9))
    g = torch.gather(g, 2, cols[:, None, :].expand(n, 9, 9))
    flip = torch.rand(n, generator=generator) < 0.5
    g = torch.where(flip[:, None, None], g.transpose(1, 2), g)
    return g.reshape(n, NUM_CELLS).to(dev)


# --------------------------------------------------------------------------
# Constraints on the device: what the canvas says about each proposal.

CONSTRAINT_FEATURES = ("legal_count", "proposal_legal", "naked_single", "hidden_single", "peers_same")
_GEOMETRY: dict = {}


def _geometry(device) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``units [27, 81]`` (rows, columns, boxes) and ``peers [81, 81]`` (same
    unit, not the cell itself) on ``device``, built once per device."""
    key = str(device)
    if key not in _GEOMETRY:
        cells = torch.arange(NUM_CELLS)
        units = torch.zeros(27, NUM_CELLS)
        units[torch.tensor(_ROW), cells] = 1
        units[9 + torch.tensor(_COL), cells] = 1
        units[18 + torch.tensor(_BOX), cells] = 1
        peers = ((units.T @ units) > 0) & ~torch.eye(NUM_CELLS, dtype=torch.bool)
        _GEOMETRY[key] = (units.to(device), peers.float().to(device))
    return _GEOMETRY[key]


def constraints(canvas: torch.Tensor, proposals: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the committed cells of ``canvas`` (tokens ``[B, 81]``, MASK_TOKEN in the
    blanks) say about ``proposals`` (tokens ``[B, 81]``: a digit 0..8 proposed per
    cell; anything else proposes nothing). On the canvas's device, no host sync;
    every value is about masked cells (zero / False elsewhere):

    - ``legal`` bool ``[B, 81, 9]``: the digits no committed peer holds;
      ``legal_count`` int ``[B, 81]``: how many;
    - ``proposal_legal`` bool ``[B, 81]``: the proposal is a legal digit;
    - ``naked_single``: the cell has one legal digit and the proposal is it;
    - ``hidden_single``: the proposal is legal here and nowhere else among the
      masked cells of one of the cell's row, column or box;
    - ``peers_same`` int ``[B, 81]``: masked peers (same row, column or box)
      proposing the same digit.

    Both singles are forced by the rules: a proposal flagged as one is right in
    every solution of the canvas (if it has one)."""
    if canvas.shape != proposals.shape or canvas.dim() != 2 or canvas.shape[-1] != NUM_CELLS:
        raise ValueError(f"dmkernels.tasks.sudoku.constraints: canvas and proposals must both be [B, 81], got "
                         f"{list(canvas.shape)} and {list(proposals.shape)}")
    units, peers = _geometry(canvas.device)
    digits = torch.arange(9, device=canvas.device)
    masked = canvas == MASK_TOKEN
    committed = (canvas[..., None] == digits).float()              # [B, 81, 9]
    legal = (torch.matmul(peers, committed) == 0) & masked[..., None]
    proposed = (proposals[..., None] == digits) & masked[..., None]  # [B, 81, 9], one-hot or empty
    legal_count = legal.sum(-1)
    proposal_legal = (legal & proposed).any(-1)
    places = torch.matmul(units, legal.float())                     # [B, 27, 9]: cells where d is legal
    forced = (torch.matmul(units.T, (places == 1).float()) > 0) & legal
    peers_same = (torch.matmul(peers, proposed.float()) * proposed).sum(-1)
    return dict(legal=legal, legal_count=legal_count, proposal_legal=proposal_legal,
                naked_single=proposal_legal & (legal_count == 1), hidden_single=(forced & proposed).any(-1),
                peers_same=peers_same.round().to(torch.int64))


def forced(step_tokens: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """bool ``[B, 81]``: the eligible cells whose proposal is a naked or hidden
    single on the canvas, from a step's tokens (the proposal at ``eligible``
    cells, the committed digit elsewhere; :meth:`LearnedPolicy.step_tokens`).
    The ``preferred`` signal of :func:`dmkernels.train.supervised` for Sudoku:
    a training label that teaches a generic policy to commit forced cells
    first; the policy itself reads none of it."""
    check.eligible("tasks.sudoku.forced", eligible, check.tensor("tasks.sudoku.forced", "step_tokens", step_tokens),
                   "step_tokens")
    canvas = torch.where(eligible, torch.full_like(step_tokens, MASK_TOKEN), step_tokens)
    c = constraints(canvas, step_tokens)
    return (c["naked_single"] | c["hidden_single"]) & eligible


def _check_block(op: str, ctx) -> None:
    if ctx.x.shape[-1] != NUM_CELLS:
        raise ValueError(f"dmkernels.tasks.sudoku.{op}: the step's block has {ctx.x.shape[-1]} positions; Sudoku "
                         f"needs the whole {NUM_CELLS}-cell canvas as one block (dmkernels.infill, block_length=None)")


@register_feature("sudoku.constraints", CONSTRAINT_FEATURES)
def constraint_features(ctx) -> torch.Tensor:
    """The ``"sudoku.constraints"`` feature provider: float32 ``[B, 81, 5]``
    (:data:`CONSTRAINT_FEATURES`): legal digits / 9, proposal legal, naked
    single, hidden single (0/1), masked peers proposing the same digit (a
    count); zero at positions not eligible. From :func:`constraints` on the
    step's canvas and proposals."""
    _check_block("constraint_features", ctx)
    c = constraints(ctx.x, ctx.stats.token)
    out = torch.stack([c["legal_count"].float() / 9, c["proposal_legal"].float(), c["naked_single"].float(),
                       c["hidden_single"].float(), c["peers_same"].float()], dim=-1)
    return torch.where(ctx.eligible[..., None], out, 0.0)


class SinglesFirst(Policy):
    """The hand rule "singles first, then confidence": commit the schedule's count,
    taking first the cells whose proposal is a naked or hidden single (forced by
    the rules), most confident first, then the others, most confident first.
    A Sudoku-specific reference for the learned policies (it reads the canvas,
    which the generic heuristics do not)."""

    def select(self, ctx):
        _check_block("SinglesFirst", ctx)
        c = constraints(ctx.x, ctx.stats.token)
        single = (c["naked_single"] | c["hidden_single"]).float()
        # Confidence is at most 1, so +2 puts every single above every other cell.
        score = ctx.stats.confidence.float() + 2.0 * single
        return ops.select_topk(score, ctx.quota, ctx.eligible, backend=ctx.backend)


# --------------------------------------------------------------------------
# The shipped denoiser.


def sudoku_config(**overrides):
    """The :class:`~dmkernels.models.DiffusionLMConfig` of the shipped Sudoku
    denoiser (vocabulary 10, mask 9); ``overrides`` change any field."""
    from ..models import DiffusionLMConfig

    kw = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=NUM_CELLS,
        mask_token_id=MASK_TOKEN,
        logit_std=1.0,
        # Absolute positions: "same row / column / box" is not a function of
        # the offset between two cells, so RoPE alone learns Sudoku badly.
        position_embedding="rope+learned",
    )
    kw.update(overrides)
    return DiffusionLMConfig(**kw)


def checkpoint_dir() -> Path:
    """The shipped checkpoints (denoisers and learned policies): package data, so
    that an installed wheel has them."""
    return Path(__file__).resolve().parent / "checkpoints"


def load_denoiser(budget: str = "long", *, path: str | Path | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The trained Sudoku denoiser (a :class:`~dmkernels.models.DiffusionLM`
    in eval mode) from ``<dir>/sudoku_<budget>.safetensors`` and its
    ``.json`` (config and training record). ``budget``: ``"short"`` or
    ``"long"`` (see ``benchmarks/sudoku/README.md``); ``path``: a directory to
    read instead of :func:`checkpoint_dir`, or a ``.safetensors`` file."""
    from safetensors.torch import load_file

    from ..models import DiffusionLM, DiffusionLMConfig

    if path is not None and str(path).endswith(".safetensors"):
        weights = Path(path)
    else:
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
        weights = Path(path or checkpoint_dir()) / f"sudoku_{budget}.safetensors"
    meta_file = weights.with_suffix(".json")
    if not weights.exists() or not meta_file.exists():
        raise FileNotFoundError(f"no Sudoku checkpoint at {weights} (+ .json); train one with benchmarks/sudoku/train_denoiser.py")
    # Checked against the weights' header before the model is built: a crafted
    # configuration must not decide how much memory is allocated.
    op = "tasks.sudoku.load_denoiser"
    config = _denoiser_config(op, meta_file)
    _checkpoint.match(op, weights, _checkpoint.denoiser_shapes(config), _checkpoint.header(op, weights)[1],
                      _MAX_DENOISER_PARAMETERS)
    model = DiffusionLM(DiffusionLMConfig(**config))
    state = {k: v.to(torch.float32) for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


# What load_denoiser accepts: far above the shipped denoiser (171k parameters)
# and far below what would exhaust a machine's memory.
_MAX_DENOISER_PARAMETERS = 1 << 26
_DENOISER_SIZES = dict(hidden_size=(2, 4096), num_hidden_layers=(1, 256), num_attention_heads=(1, 256),
                       intermediate_size=(1, 16384))
# The shared checkpoint helpers, under the names tests/test_checkpoint_loading.py reads.
_config_fields = _checkpoint.denoiser_fields
_denoiser_shapes = _checkpoint.denoiser_shapes


def _denoiser_config(op: str, meta_file: Path) -> dict:
    """The ``config`` of a denoiser's JSON, every field's type and range checked
    (missing fields take DiffusionLMConfig's defaults). The Sudoku encoding is
    fixed: digits 0..8 and the blank; learned positions cover the grid."""
    return _checkpoint.denoiser_config(op, meta_file, vocab_size=VOCAB_SIZE, mask_token_id=MASK_TOKEN,
                                       sizes=_DENOISER_SIZES, positions=(1, 65536), learned_positions=NUM_CELLS,
                                       mask_optional=True)


@torch.no_grad()
def greedy_fill(model, puzzles: torch.Tensor, order: str = "confidence", *,
                solutions: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Fill the masks of ``puzzles`` (tokens ``[N, 81]``) one position per
    model call, committing the argmax digit (MASK excluded) at the position
    chosen by ``order``:

    - ``"random"``: a uniformly random masked position;
    - ``"confidence"``: the masked position whose argmax has the highest probability;
    - ``"oracle"`` (needs ``solutions``): among masked positions whose argmax
      is the solution's digit, the most confident; if there is none, the
      position that gives the solution's digit the highest probability (its
      argmax, wrong, is committed).

    A minimal reference loop with host syncs, for sanity checks. Returns the
    filled tokens and the number of model calls (the largest blank count)."""
    if order not in ("random", "confidence", "oracle"):
        raise ValueError(f"order must be 'random', 'confidence' or 'oracle', got {order!r}")
    if order == "oracle" and solutions is None:
        raise ValueError("order='oracle' needs solutions")
    x = puzzles.clone()
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(x.shape[0], device=x.device)
    calls = int((x == MASK_TOKEN).sum(-1).max())
    for _ in range(calls):
        masked = x == MASK_TOKEN
        out = model(x)
        logits = (out.logits if hasattr(out, "logits") else out).float()
        logits[..., MASK_TOKEN] = float("-inf")
        probs = logits.softmax(-1)
        conf, tok = probs.max(-1)
        if order == "random":
            score = torch.rand(x.shape, generator=gen).to(x.device)
        elif order == "confidence":
            score = conf
        else:
            correct = tok == solutions
            p_true = probs.gather(-1, solutions[..., None]).squeeze(-1)
            score = torch.where(correct, 1.0 + conf, p_true)
        score = score.masked_fill(~masked, float("-inf"))
        pos = score.argmax(-1)
        active = masked.any(-1)
        new = torch.where(active, tok[rows, pos], x[rows, pos])
        x[rows, pos] = new
    return x, calls
