"""The Triton token_stats_partial (dmkernels/triton/token_stats.py, PARTIAL mode)
against its reference, and merged slices against the Triton token_stats.

Without a GPU the kernels run under the Triton interpreter on CPU tensors, so the
shapes stay small; tiles and vocabulary splits are forced small where a test needs
the split (merge kernel) path. Outputs are poisoned before the kernels run, so an
unwritten field fails.
"""
import os
import shutil

if shutil.which("nvidia-smi") is None:
    # Read when the kernels are decorated (import of dmkernels.triton.*), not before.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from dmkernels.reference.token_stats_partial import (  # noqa: E402
    ENT,
    INVALID,
    KEY,
    MAX,
    SECOND,
    SUM,
    TOKEN,
    TOKEN_SCORE,
    merge_token_stats_partials,
    token_stats_partial_reference,
)
from dmkernels.triton import token_stats as triton_token_stats  # noqa: E402

from helpers import random_logits  # noqa: E402

# inf - inf in rows without a distribution: numpy warns under the interpreter.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"
SUM_TOL = dict(rtol=1e-5, atol=1e-6)
STATS_TOL = dict(rtol=2e-5, atol=2e-6)
EXACT = [MAX, SECOND, KEY, TOKEN, TOKEN_SCORE, INVALID]
op = torch.ops.dmkernels_triton.token_stats_partial
whole_op = torch.ops.dmkernels_triton.token_stats


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Poison the outputs before the kernels run (also conftest's default)."""
    monkeypatch.setenv("DMKERNELS_POISON_OUTPUTS", "1")


def run(logits, temperature=0.0, seed=0, offset=0, tempered_scores=False, positions=None, rng=None,
        vocab_start=0, row_offset=0):
    return op(logits, temperature, seed, offset, tempered_scores, positions, rng, vocab_start, row_offset)


def assert_partials_match(got, want):
    assert got.dtype == torch.float32 and got.shape == want.shape
    got, want = got.cpu(), want.cpu()
    g, w = got[..., EXACT], want[..., EXACT]
    same = (g == w) | (torch.isnan(g) & torch.isnan(w))
    assert bool(same.all()), (f"fields {EXACT} differ at rows {(~same).any(-1).nonzero().flatten().tolist()[:5]}:\n"
                              f"{got[(~same).any(-1)][:3]}\nwant\n{want[(~same).any(-1)][:3]}")
    torch.testing.assert_close(got[..., [SUM, ENT]], want[..., [SUM, ENT]], equal_nan=True, **SUM_TOL)


def check(logits, **kw):
    got = run(logits, **kw)
    want = token_stats_partial_reference(logits.cpu(), **{k: (v.cpu() if torch.is_tensor(v) else v)
                                                         for k, v in kw.items() if k != "rng"})
    assert_partials_match(got, want)
    return got.cpu()


def edge_rows(x: torch.Tensor) -> torch.Tensor:
    """Plant the edge cases in [R, V] logits (R >= 9, V >= 70)."""
    x[0] = -math.inf                     # nothing but -inf: SUM = ENT = 0
    x[1, 3] = math.nan                   # NaN: the invalid pattern
    x[2, 5] = math.inf                   # +inf: the invalid pattern
    x[3, 20] = x[3, 50] = 40.0           # two equal maxima: SECOND = MAX, lowest column
    x[4, 40:] = -math.inf                # -inf tail
    x[5, :60] = -math.inf                # -inf head
    x[6] = x[6].round()                  # many ties
    x[7] = -math.inf
    x[7, 33] = 0.5                       # a single finite entry
    return x


def positions_for(kind, R):
    if kind is None:
        return None
    if kind == "none":
        return torch.zeros(R, dtype=torch.bool, device=DEVICE)
    pos = torch.rand(R) < 0.6
    pos[[0, 1, 3]] = True  # keep some edge rows on
    pos[4] = False
    return pos.to(DEVICE)


# (dtype, rows, V, vocab_start, row_offset, temperature, tempered, positions, splits):
# vocab_start 0, off the 32-column noise groups, and large; splits > 1 runs the merge kernel.
CASES = [
    (torch.float32, 9, 77, 0, 0, 0.0, False, None, None),
    (torch.float16, 11, 150, 13, 5, 0.8, False, "some", None),
    (torch.float32, 9, 150, 126000, 0, 0.8, True, "some", None),
    (torch.bfloat16, 10, 100, 31, 3, 0.0, False, "some", None),
    (torch.float16, 9, 100, 126001, 2**32 - 9, 1.7, False, None, None),
    (torch.float32, 9, 300, 45, 7, 1.3, False, None, 3),
    (torch.float16, 9, 300, 126000, 0, 0.0, False, "some", 3),
    (torch.float32, 9, 201, 64, 2**31 + 3, 0.6, True, "none", 2),
]


@pytest.mark.parametrize("dtype,R,V,vocab_start,row_offset,temperature,tempered,positions,splits", CASES,
                         ids=[f"{str(c[0])[6:]}-{c[1]}x{c[2]}-vs{c[3]}-ro{c[4]}-T{c[5]}{'t' if c[6] else ''}"
                              f"-{c[7]}-s{c[8]}" for c in CASES])
def test_matches_reference(tiles, dtype, R, V, vocab_start, row_offset, temperature, tempered, positions, splits):
    if splits:
        tiles(block_v=64, splits=splits)
    x = edge_rows(random_logits((R, V), dtype)).to(DEVICE)
    pos = positions_for(positions, R)
    got = check(x, temperature=temperature, seed=1234, offset=9, tempered_scores=tempered, positions=pos,
                vocab_start=vocab_start, row_offset=row_offset)
    on = torch.ones(R, dtype=torch.bool) if pos is None else pos.cpu()
    # The edge rows really are what the reference says (so this test can fail).
    if on[1]:
        assert got[1, INVALID] == 1 and got[1, TOKEN] == -1 and torch.isnan(got[1, MAX])
    if on[0]:
        assert got[0, SUM] == 0 and got[0, ENT] == 0 and got[0, TOKEN] == -1
    if on[3] and temperature == 0:
        assert got[3, TOKEN] == vocab_start + 20 and got[3, SECOND] == got[3, MAX]
    off = ~on
    empty = torch.tensor([-math.inf, 0, 0, -math.inf, -math.inf, -1, -math.inf, 0])
    assert torch.equal(got[off], empty.expand(int(off.sum()), 8))


def test_one_row_and_one_dimensional_logits():
    x = random_logits((1, 50)).to(DEVICE)
    check(x, temperature=0.7, seed=3, tempered_scores=True, vocab_start=64)
    got = check(x[0], vocab_start=77)  # [V] -> [8]
    assert got.shape == (8,) and got[TOKEN] == 77 + int(x[0].argmax())
    one = check(random_logits((1, 1)).to(DEVICE), temperature=1.0, seed=2, vocab_start=41)
    assert one[0, TOKEN] == 41 and one[0, SUM] == 1
    assert run(torch.randn(0, 3, 9, device=DEVICE)).shape == (0, 3, 8)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ties_take_the_lowest_global_column(tiles, temperature):
    tiles(block_v=32, splits=3)
    x = torch.zeros(3, 90)
    x[0, [5, 17, 70]] = 3.0  # tied maxima in different splits
    x[1] = 1.0               # all tied
    x[2] = 2.0**24           # x + g rounds to multiples of 2: tied perturbed values
    got = check(x.to(DEVICE), temperature=temperature, seed=3, vocab_start=100)
    if temperature == 0:
        assert got[:, TOKEN].tolist() == [105.0, 100.0, 100.0]
        assert torch.equal(got[:, SECOND], got[:, MAX])


def test_rng_tensor_overrides_seed_and_offset():
    x = random_logits((4, 90), scale=0.5).to(DEVICE)
    kw = dict(vocab_start=7, row_offset=2)
    a = run(x, 1.0, 0, 0, False, None, torch.tensor([2**40 + 77, 3], device=DEVICE), **kw)
    b = check(x, temperature=1.0, seed=2**40 + 77, offset=3, **kw)
    assert torch.equal(a.cpu(), b)


CUTS = [(0, 37, 101, 301), (0, 150, 301), (0, 1, 64, 301)]


@pytest.mark.parametrize("temperature,tempered,cuts,dtype", [
    (0.0, False, CUTS[0], torch.float32),
    (0.8, False, CUTS[1], torch.float16),
    (0.8, True, CUTS[0], torch.bfloat16),
    (1.5, False, CUTS[2], torch.float32),
], ids=["T0-3cuts", "T0.8-2cuts", "T0.8tempered-3cuts", "T1.5-3cuts"])
def test_merged_slices_equal_token_stats_of_the_whole_rows(temperature, tempered, cuts, dtype):
    R, V = 10, cuts[-1]
    x = random_logits((R, V), dtype)
    edge_rows(x)
    x[8, 36] = x[8, 37] = 50.0  # tied maxima across a cut
    x = x.to(DEVICE)
    positions = (torch.rand(R) < 0.8).to(DEVICE)
    noise = (temperature, 99, 4, tempered, positions)
    partials = torch.stack([op(x[:, a:b], *noise, None, a, 0) for a, b in zip(cuts[:-1], cuts[1:])])
    merged = merge_token_stats_partials(partials.cpu(), positions.cpu())
    token, *scores = whole_op(x, *noise)
    assert torch.equal(merged.token, token.cpu())
    for a, b in zip((merged.confidence, merged.margin, merged.entropy), scores):
        torch.testing.assert_close(a, b.cpu(), equal_nan=True, **STATS_TOL)
    if temperature > 0:  # the draw really is random: not the argmax everywhere
        assert not torch.equal(token, whole_op(x, 0.0, 0, 0, False, positions)[0])


def test_row_offset_gives_a_worker_the_noise_of_its_global_rows():
    x = random_logits((9, 120)).to(DEVICE)
    whole = whole_op(x, 1.0, 5, 0, False, None)[0].cpu()
    tail = merge_token_stats_partials(torch.stack([run(x[4:, :50], 1.0, 5, row_offset=4),
                                                   run(x[4:, 50:], 1.0, 5, vocab_start=50, row_offset=4)]).cpu())
    assert torch.equal(tail.token, whole[4:])
    plain = merge_token_stats_partials(run(x[4:], 1.0, 5)[None].cpu())
    assert not torch.equal(plain.token, whole[4:])  # without the offset the draw differs


def test_argument_errors():
    x = torch.randn(2, 40, device=DEVICE)
    with pytest.raises(ValueError, match="vocab_start"):
        run(x, vocab_start=-1)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        run(x, vocab_start=2**24 - 39)
    with pytest.raises(ValueError, match="row_offset"):
        run(x, row_offset=2**32 - 1)
    with pytest.raises(ValueError, match="positions"):
        run(x, positions=torch.ones(3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="unit stride"):
        run(torch.randn(10, 4, device=DEVICE).t())


def test_opcheck():
    logits = random_logits((2, 3, 40), torch.bfloat16).to(DEVICE)
    positions = torch.tensor([[True, False, True], [True, True, False]], device=DEVICE)
    rng = torch.tensor([5, 1], device=DEVICE)
    for args in ((logits, 0.0, 0, 0, False, None, None, 0, 0), (logits, 0.8, 5, 1, True, positions, rng, 45, 3)):
        torch.library.opcheck(op, args)
