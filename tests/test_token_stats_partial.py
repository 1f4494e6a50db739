"""token_stats_partial on every backend against its reference, and merged slices
against token_stats of the whole rows.

Partials are compared field by field (the sums within float32 rounding, the other
fields exactly); logits cut into uneven slices, reduced slice by slice and merged
must give token_stats of the whole rows: identical tokens (sampled ones included),
scores within float32 rounding. Outputs are poisoned before the kernels run
(conftest.py), so an unwritten field fails. The Triton cases that need its split
(merge kernel) path force small tiles with the ``tiles`` fixture.
"""
import math

import pytest
import torch

from dmkernels.distributed import merge_partials
from dmkernels.reference.token_stats_partial import (
    ENT,
    INVALID,
    KEY,
    MAX,
    SECOND,
    SUM,
    TOKEN,
    TOKEN_SCORE,
    token_stats_partial_reference,
)

from helpers import DTYPES, random_logits

EXACT = [MAX, SECOND, KEY, TOKEN, TOKEN_SCORE, INVALID]
NOISE = [(0.0, False), (0.8, False), (0.8, True)]


def edge_rows(x: torch.Tensor) -> torch.Tensor:
    """Plant the edge cases in a [R, V] logits tensor (R >= 9, V >= 70)."""
    x[0] = float("-inf")                 # nothing but -inf: SUM = ENT = 0
    x[1, 3] = float("nan")               # NaN: the invalid pattern
    x[2, 40:] = float("-inf")            # -inf tail (whole slices of it)
    x[3, 36] = x[3, 37] = 60.0           # tied maxima, often across a cut: SECOND = MAX, lowest column
    x[4, :60] = float("-inf")            # -inf head
    x[5, 5] = float("inf")               # +inf: the invalid pattern
    x[6, 64] = x[6, 65] = 60.0           # another tie, at a noise-group edge
    x[7] = x[7].round()                  # many ties
    x[8] = float("-inf")
    x[8, 33] = 0.5                       # a single finite entry
    return x


def assert_partials_match(got: torch.Tensor, want: torch.Tensor):
    assert got.dtype == torch.float32 and got.shape == want.shape
    got = got.cpu()
    torch.testing.assert_close(got[..., [SUM, ENT]], want[..., [SUM, ENT]], rtol=2e-5, atol=1e-6, equal_nan=True)
    g, w = got[..., EXACT], want[..., EXACT]
    same = (g == w) | (torch.isnan(g) & torch.isnan(w))
    assert bool(same.all()), f"fields {EXACT} differ at {(~same).nonzero().tolist()[:5]}"


def assert_stats_match(got, want):
    assert torch.equal(got.token.cpu(), want.token.cpu())
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=2e-5, atol=2e-6, equal_nan=True)


def check(backend, logits, **kw):
    got = backend.call("token_stats_partial", logits, **kw)
    ref_kw = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k != "rng"}
    want = token_stats_partial_reference(logits.cpu(), **ref_kw)
    assert_partials_match(got, want)
    return got.cpu()


def positions_for(kind, R):
    if kind is None:
        return None
    if kind == "none":
        return torch.zeros(R, dtype=torch.bool)
    pos = torch.rand(R) < 0.6
    pos[[0, 1, 3]] = True  # keep some edge rows on
    pos[4] = False
    return pos


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature,tempered", NOISE)
@pytest.mark.parametrize("vocab_start,V", [(0, 77), (13, 150), (31, 100), (126001, 463), (64, 2100), (32, 150),
                                           (126016, 463)])
def test_partial_matches_reference(backend, dtype, temperature, tempered, vocab_start, V):
    R = 11
    x = edge_rows(random_logits((R, V), dtype))
    positions = torch.rand(R) < 0.8
    positions[:9] = True
    if temperature > 0 and vocab_start % 32:
        # Sampling needs whole noise groups in a slice (csrc/common/noise.h).
        with pytest.raises(ValueError, match="token_stats_partial.*vocab_start.*multiple of 32"):
            backend.call("token_stats_partial", x, temperature=temperature, vocab_start=vocab_start)
        return
    got = check(backend, x, temperature=temperature, seed=1234, offset=5, positions=positions,
                tempered_scores=tempered, vocab_start=vocab_start, row_offset=7)
    # The edge rows really are what the reference says (so this test can fail).
    assert got[1, INVALID] == 1 and got[1, TOKEN] == -1 and torch.isnan(got[1, MAX])
    assert got[0, SUM] == 0 and got[0, ENT] == 0 and got[0, TOKEN] == -1
    if temperature == 0:
        assert got[3, TOKEN] == vocab_start + 36 and got[3, SECOND] == got[3, MAX]


# (dtype, rows, V, vocab_start, row_offset, temperature, tempered, positions, splits):
# vocab_start 0, off the 32-column noise groups (T = 0 only: sampling needs whole
# groups), and large; row offsets near 2**32; splits > 1 runs the Triton merge kernel.
CASES = [
    (torch.float32, 9, 77, 0, 0, 0.0, False, None, None),
    (torch.float16, 11, 150, 32, 5, 0.8, False, "some", None),
    (torch.float32, 9, 150, 126016, 0, 0.8, True, "some", None),
    (torch.bfloat16, 10, 100, 31, 3, 0.0, False, "some", None),
    (torch.float16, 9, 100, 126016, 2**32 - 9, 1.7, False, None, None),
    (torch.float32, 9, 300, 64, 7, 1.3, False, None, 3),
    (torch.float32, 9, 300, 45, 7, 0.0, False, None, 3),
    (torch.float16, 9, 300, 126000, 0, 0.0, False, "some", 3),
    (torch.float32, 9, 201, 64, 2**31 + 3, 0.6, True, "none", 2),
]


@pytest.mark.parametrize("dtype,R,V,vocab_start,row_offset,temperature,tempered,positions,splits", CASES,
                         ids=[f"{str(c[0])[6:]}-{c[1]}x{c[2]}-vs{c[3]}-ro{c[4]}-T{c[5]}{'t' if c[6] else ''}"
                              f"-{c[7]}-s{c[8]}" for c in CASES])
def test_slices_and_row_offsets(backend, tiles, dtype, R, V, vocab_start, row_offset, temperature, tempered,
                                positions, splits):
    if splits:
        tiles(block_v=64, splits=splits)
    x = edge_rows(random_logits((R, V), dtype))
    pos = positions_for(positions, R)
    got = check(backend, x, temperature=temperature, seed=1234, offset=9, tempered_scores=tempered, positions=pos,
                vocab_start=vocab_start, row_offset=row_offset)
    on = torch.ones(R, dtype=torch.bool) if pos is None else pos
    if on[1]:
        assert got[1, INVALID] == 1 and got[1, TOKEN] == -1 and torch.isnan(got[1, MAX])
    if on[0]:
        assert got[0, SUM] == 0 and got[0, ENT] == 0 and got[0, TOKEN] == -1
    off = ~on  # rows left out are empty
    empty = torch.tensor([-math.inf, 0, 0, -math.inf, -math.inf, -1, -math.inf, 0])
    assert torch.equal(got[off], empty.expand(int(off.sum()), 8))


# Cuts anywhere at T = 0; on noise-group edges (multiples of 32) for every temperature.
ALIGNED_CUTS = [(32,), (32, 64), (64, 96, 128), (288,), (64, 96, 192)]
MERGE_CASES = ([(0.0, False, cuts) for cuts in [(37,), (5, 50), (36, 37, 65), (1,), (1, 64), (37, 101)]]
               + [(t, tempered, cuts) for t, tempered in NOISE + [(1.5, False)] for cuts in ALIGNED_CUTS])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature,tempered,cuts", MERGE_CASES, ids=str)
def test_merged_slices_equal_token_stats_of_the_whole_rows(backend, dtype, temperature, tempered, cuts):
    B, L, V = 3, 5, 301
    x = random_logits((B, L, V), dtype)
    edge_rows(x.view(-1, V))
    positions = torch.rand(B, L) < 0.8
    bounds = (0, *cuts, V)
    noise = dict(temperature=temperature, seed=99, offset=3, positions=positions, tempered_scores=tempered)
    partials = torch.stack([backend.call("token_stats_partial", x[..., a:b], vocab_start=a, **noise)
                            for a, b in zip(bounds[:-1], bounds[1:])])
    want = backend.call("token_stats", x, **noise)
    pos = backend.to(positions)
    assert_stats_match(merge_partials(partials, pos), want)
    assert_stats_match(merge_partials(partials.flip(0), pos), want)  # any slice order merges the same
    if temperature > 0:  # the draw really is random: not the argmax everywhere
        argmax = backend.call("token_stats", x, temperature=0.0, positions=positions)
        assert not torch.equal(want.token, argmax.token)


def test_row_offset_draws_the_noise_of_later_rows(backend):
    x = random_logits((9, 200))
    whole = backend.call("token_stats", x, temperature=1.0, seed=5).token.cpu()
    tail = backend.call("token_stats_partial", x[4:], row_offset=4, temperature=1.0, seed=5)
    assert torch.equal(merge_partials(tail[None]).token.cpu(), whole[4:])
    halves = torch.stack([backend.call("token_stats_partial", x[4:, :64], row_offset=4, temperature=1.0, seed=5),
                          backend.call("token_stats_partial", x[4:, 64:], vocab_start=64, row_offset=4,
                                       temperature=1.0, seed=5)])
    assert torch.equal(merge_partials(halves).token.cpu(), whole[4:])
    # Without the offset the draw differs (so the test can fail).
    plain = backend.call("token_stats_partial", x[4:], temperature=1.0, seed=5)
    assert not torch.equal(merge_partials(plain[None]).token.cpu(), whole[4:])


def test_one_row_one_column_and_no_positions(backend):
    x = random_logits((1, 50))
    check(backend, x, temperature=0.7, seed=3, tempered_scores=True, vocab_start=64)
    got = check(backend, x[0], vocab_start=77)  # [V] -> [8]
    assert got.shape == (8,) and got[TOKEN] == 77 + int(x[0].argmax())
    one = check(backend, random_logits((1, 1)), temperature=1.0, seed=2, vocab_start=96)
    assert one[0, TOKEN] == 96 and one[0, SUM] == 1
    check(backend, random_logits((4, 9)), positions=torch.zeros(4, dtype=torch.bool))
    assert backend.call("token_stats_partial", random_logits((0, 3, 9))).shape == (0, 3, 8)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ties_take_the_lowest_global_column(backend, tiles, temperature):
    tiles(block_v=32, splits=3)
    x = torch.zeros(3, 90)
    x[0, [5, 17, 70]] = 3.0  # tied maxima in different splits
    x[1] = 1.0               # all tied
    x[2] = 2.0**24           # x + g rounds to multiples of 2: tied perturbed values
    got = check(backend, x, temperature=temperature, seed=3, vocab_start=100 if temperature == 0 else 96)
    if temperature == 0:
        assert got[:, TOKEN].tolist() == [105.0, 100.0, 100.0]
        assert torch.equal(got[:, SECOND], got[:, MAX])


def test_rng_tensor_overrides_seed_and_offset(backend):
    x = random_logits((4, 90), scale=0.5)
    kw = dict(vocab_start=32, row_offset=2)
    a = backend.call("token_stats_partial", x, temperature=1.0, rng=torch.tensor([2**40 + 77, 3]), **kw)
    b = check(backend, x, temperature=1.0, seed=2**40 + 77, offset=3, **kw)
    assert torch.equal(a.cpu(), b)


def test_vocab_parallel_refuses_a_slice_off_the_noise_groups_before_any_model_call():
    # Sampling needs whole groups of 32 columns in every slice: VocabParallel says so
    # before the first model call (at T = 0 any start is fine).
    import dmkernels
    from dmkernels.distributed import VocabParallel
    from dmkernels.policies import LowConfidence

    def model(x, **kwargs):
        raise AssertionError("the model was called")

    ids = torch.zeros(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="vocab_start=40.*multiple of 32"):
        dmkernels.generate(model, ids, gen_length=4, block_length=4, steps=2, temperature=0.5, seed=0, mask_id=99,
                           policy=LowConfidence(), parallel=VocabParallel(vocab_start=40))
    assert VocabParallel(vocab_start=40).refuse(seed=0, logits_processor=None, temperature=0.0) is None
    assert VocabParallel(vocab_start=64).refuse(seed=0, logits_processor=None, temperature=0.5) is None
