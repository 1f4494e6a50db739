"""The Sudoku task: generator, encoding, scoring, and the shipped denoiser."""
import random

import pytest
import torch

from dmkernels.tasks import sudoku

# A known valid grid (digits), row-major.
GRID = [
    5, 3, 4, 6, 7, 8, 9, 1, 2,
    6, 7, 2, 1, 9, 5, 3, 4, 8,
    1, 9, 8, 3, 4, 2, 5, 6, 7,
    8, 5, 9, 7, 6, 1, 4, 2, 3,
    4, 2, 6, 8, 5, 3, 7, 9, 1,
    7, 1, 3, 9, 2, 4, 8, 5, 6,
    9, 6, 1, 5, 3, 7, 2, 8, 4,
    2, 8, 7, 4, 1, 9, 6, 3, 5,
    3, 4, 5, 2, 8, 6, 1, 7, 9,
]


def _valid_digits(cells):
    units = [[r * 9 + c for c in range(9)] for r in range(9)]
    units += [[r * 9 + c for r in range(9)] for c in range(9)]
    units += [[(b // 3 * 3 + r) * 9 + b % 3 * 3 + c for r in range(3) for c in range(3)] for b in range(9)]
    return all(sorted(cells[i] for i in u) == list(range(1, 10)) for u in units)


def test_known_grid_and_unit_checker():
    assert _valid_digits(GRID)
    tokens = sudoku.digits_to_tokens(GRID)
    assert tokens.min() == 0 and tokens.max() == 8
    assert sudoku.valid_grid(tokens)
    assert sudoku.tokens_to_digits(tokens).tolist() == GRID


def test_random_grids_valid_and_diverse():
    grids = sudoku.generate_grids(50, seed=3)
    assert grids.shape == (50, 81) and grids.dtype == torch.long
    assert sudoku.valid_grid(grids).all()
    for g in sudoku.tokens_to_digits(grids).tolist():
        assert _valid_digits(g)
    # Not relabellings of one grid: the pattern "which cells equal cell 0's
    # digit" differs from grid to grid.
    patterns = {tuple((g == g[0]).tolist()) for g in grids}
    assert len(patterns) == 50
    assert len({tuple(g.tolist()) for g in grids}) == 50


def test_solver_counts():
    assert sudoku.count_solutions(GRID) == 1
    assert sudoku.solve([0] * 81) is not None and _valid_digits(sudoku.solve([0] * 81))
    assert sudoku.count_solutions([0] * 81) == 2  # capped at the limit
    # Two givens that clash: no solution.
    bad = [0] * 81
    bad[0] = bad[1] = 5
    assert sudoku.count_solutions(bad) == 0 and sudoku.solve(bad) is None
    # A deadly rectangle (two rows in different bands, two columns in one
    # stack, holding a/b and b/a): blanking it leaves two solutions.
    for grid in [GRID] + sudoku.tokens_to_digits(sudoku.generate_grids(20, seed=0)).tolist():
        cells = _deadly_rectangle(grid)
        if cells:
            break
    assert cells
    g = list(grid)
    for i in cells:
        g[i] = 0
    assert sudoku.count_solutions(g) == 2
    assert sudoku.count_solutions(g, limit=5) == 2


def _deadly_rectangle(grid):
    for r1 in range(9):
        for r2 in range(r1 + 1, 9):
            if r1 // 3 == r2 // 3:
                continue
            for c1 in range(9):
                for c2 in range(c1 + 1, 9):
                    if c1 // 3 != c2 // 3:
                        continue
                    a, b = grid[r1 * 9 + c1], grid[r1 * 9 + c2]
                    if grid[r2 * 9 + c1] == b and grid[r2 * 9 + c2] == a:
                        return [r1 * 9 + c1, r1 * 9 + c2, r2 * 9 + c1, r2 * 9 + c2]
    return None


@pytest.mark.parametrize("givens", [24, 30])
def test_puzzles_unique_with_requested_givens(givens):
    puzzles, solutions = sudoku.generate_puzzles(6, givens=givens, seed=11)
    assert ((puzzles != sudoku.MASK_TOKEN).sum(-1) == givens).all()
    assert sudoku.valid_grid(solutions).all()
    given = puzzles != sudoku.MASK_TOKEN
    assert (puzzles[given] == solutions[given]).all()
    for p, s in zip(sudoku.tokens_to_digits(puzzles).tolist(), sudoku.tokens_to_digits(solutions).tolist()):
        assert sudoku.count_solutions(p, limit=3) == 1
        assert sudoku.solve(p) == s


def test_make_puzzle_stalls_cleanly():
    # 17 givens is (almost) never reached by random removal in one pass: None, not a wrong puzzle.
    assert sudoku.make_puzzle(GRID, 17, random.Random(0), passes=1) is None
    p = sudoku.make_puzzle(GRID, 40, 0)
    assert sum(v != 0 for v in p) == 40 and sudoku.solve(p) == GRID and sudoku.count_solutions(p) == 1


def test_seeded_determinism():
    a = sudoku.generate_grids(5, seed=7)
    assert torch.equal(a, sudoku.generate_grids(5, seed=7))
    assert not torch.equal(a, sudoku.generate_grids(5, seed=8))
    assert torch.equal(a[:3], sudoku.generate_grids(3, seed=7))
    sudoku._puzzle.cache_clear()  # regenerate, not just read the memo
    p1, s1 = sudoku.generate_puzzles(3, givens=28, seed=5)
    sudoku._puzzle.cache_clear()
    p2, s2 = sudoku.generate_puzzles(3, givens=28, seed=5)
    assert torch.equal(p1, p2) and torch.equal(s1, s2)
    p3, _ = sudoku.generate_puzzles(3, givens=28, seed=6)
    assert not torch.equal(p1, p3)
    # The held-out set is its own stream, with prefixes stable in n.
    h4, hs4 = sudoku.heldout_puzzles(4)
    h2, _ = sudoku.heldout_puzzles(2)
    assert torch.equal(h4[:2], h2)
    train_grids = sudoku.generate_grids(4, seed=sudoku.HELDOUT_SEED)
    assert not (train_grids[:, None] == hs4[None]).all(-1).any()


def test_augment_keeps_validity():
    grids = sudoku.generate_grids(20, seed=1)
    gen = torch.Generator().manual_seed(0)
    out = sudoku.augment(grids, gen)
    assert sudoku.valid_grid(out).all()
    assert (out != grids).any(-1).all()
    masked = grids.clone()
    masked[:, ::3] = sudoku.MASK_TOKEN
    out = sudoku.augment(masked, torch.Generator().manual_seed(0))
    assert ((out == sudoku.MASK_TOKEN).sum(-1) == 27).all()


def test_scoring_hand_made():
    sol = sudoku.digits_to_tokens(GRID)
    puzzle = sol.clone()
    blanks = torch.tensor([0, 10, 20, 30, 40, 50, 60, 70, 80, 1])
    puzzle[blanks] = sudoku.MASK_TOKEN
    # Correct grid.
    assert sudoku.solved(sol, puzzle)
    assert sudoku.cell_accuracy(sol, sol, puzzle) == 1.0
    # One wrong blank cell: not solved, accuracy 9/10.
    wrong = sol.clone()
    wrong[40] = (wrong[40] + 1) % 9
    assert not sudoku.solved(wrong, puzzle)
    assert sudoku.cell_accuracy(wrong, sol, puzzle).item() == pytest.approx(0.9)
    # A valid grid that changes a given: relabel digits 1 <-> 2 everywhere.
    swapped = torch.where(sol == 0, 1, torch.where(sol == 1, 0, sol))
    assert sudoku.valid_grid(swapped)
    assert not sudoku.solved(swapped, puzzle)
    # Unfilled masks are never solved.
    assert not sudoku.solved(puzzle, puzzle)
    assert sudoku.cell_accuracy(puzzle, sol, puzzle) == 0.0
    # Batched: [N, 81] in, [N] out.
    batch = torch.stack([sol, wrong, swapped, puzzle])
    puzzles = puzzle.expand(4, 81)
    assert sudoku.solved(batch, puzzles).tolist() == [True, False, False, False]
    acc = sudoku.cell_accuracy(batch, sol.expand(4, 81), puzzles)
    assert acc.shape == (4,)
    assert acc[0] == 1.0 and acc[1] == pytest.approx(0.9) and acc[3] == 0.0


@pytest.fixture
def one_thread():
    # Small forwards: a second intra-op thread only adds contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heldout():
    return sudoku.heldout_puzzles(16)


@pytest.mark.parametrize("budget", sudoku.BUDGETS)
def test_checkpoint_loads(budget, one_thread):
    model = sudoku.load_denoiser(budget)
    assert not model.training
    assert model.config.vocab_size == sudoku.VOCAB_SIZE and model.config.mask_token_id == sudoku.MASK_TOKEN
    x = sudoku.heldout_puzzles(2)[0]
    with torch.no_grad():
        assert model(x).logits.shape == (2, 81, sudoku.VOCAB_SIZE)


def test_denoiser_has_learned_sudoku(heldout, one_thread):
    """Confidence-greedy filling with the shipped model is far above chance
    (1/9 per cell) and above random-order filling; the oracle order nearly
    always solves (the model's proposals are good, the order matters); the
    longer training budget fills better. (Measured on these 16 puzzles:
    long 83% / short 61% cell accuracy with confidence, 40% with random
    order, oracle 100% solved.)"""
    puzzles, solutions = heldout
    results = {}
    for budget in sudoku.BUDGETS:
        model = sudoku.load_denoiser(budget)
        for order in ("random", "confidence", "oracle"):
            filled, calls = sudoku.greedy_fill(model, puzzles, order, solutions=solutions, seed=0)
            assert calls == 81 - 24
            assert (filled != sudoku.MASK_TOKEN).all()
            given = puzzles != sudoku.MASK_TOKEN
            assert (filled[given] == puzzles[given]).all()
            results[budget, order] = (sudoku.cell_accuracy(filled, solutions, puzzles).mean().item(),
                                      sudoku.solved(filled, puzzles).float().mean().item())
    assert results["long", "confidence"][0] > 0.7, results
    assert results["long", "confidence"][0] > results["long", "random"][0] + 0.2, results
    assert results["long", "confidence"][1] > results["long", "random"][1], results
    assert results["long", "oracle"][1] >= 0.9, results
    assert results["long", "confidence"][0] > results["short", "confidence"][0] + 0.05, results


def test_learned_positions_option_and_caches():
    """position_embedding="rope+learned" (the Sudoku denoiser's) adds a
    position table, keeps the default unchanged, and keeps the cache modes
    equal to the full forward (they pass the absolute positions)."""
    from dmkernels.models import DiffusionLM, tiny_config

    assert DiffusionLM(tiny_config()).embed_positions is None
    with pytest.raises(ValueError):
        tiny_config(position_embedding="alibi")
    torch.manual_seed(0)
    model = DiffusionLM(tiny_config(vocab_size=10, position_embedding="rope+learned",
                                    max_position_embeddings=16)).eval()
    assert model.embed_positions.weight.shape == (16, 32)
    x = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        full = model(x, use_cache=True)
        # RoPE alone is blind to a shift of every position; the table is not.
        y = x[:, :8]
        assert not torch.allclose(model(y).logits, model(y, position_ids=torch.arange(8, 16)).logits)
        rope_only = DiffusionLM(tiny_config(vocab_size=10)).eval()
        torch.testing.assert_close(rope_only(y).logits, rope_only(y, position_ids=torch.arange(8, 16)).logits,
                                   rtol=1e-4, atol=1e-4)
        pkv = tuple((k[:, :, :6], v[:, :, :6]) for k, v in full.past_key_values)
        prefix = model(x[:, 6:], past_key_values=pkv).logits
        torch.testing.assert_close(prefix, full.logits[:, 6:], rtol=1e-5, atol=1e-5)
        dual_cache = tuple((k.clone(), v.clone()) for k, v in full.past_key_values)
        dual = model(x[:, 4:9], past_key_values=dual_cache, replace_range=(4, 9)).logits
        torch.testing.assert_close(dual, full.logits[:, 4:9], rtol=1e-5, atol=1e-5)
