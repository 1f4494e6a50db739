"""token_stats_partial against its reference, and merged slices against token_stats.

The native (CPU) kernel and the reference are compared field by field; then
logits cut into uneven slices, reduced slice by slice and merged must give
token_stats of the whole rows: identical tokens (sampled ones included), scores
within float32 rounding. Triton: tests/test_triton_token_stats_partial.py.
"""
import pytest
import torch

from conftest import requires_extension
from helpers import DTYPES, random_logits

from dmkernels import ops
from dmkernels.distributed import merge_partials
from dmkernels.reference.token_stats_partial import (
    ENT,
    SUM,
    token_stats_partial_reference,
)

BACKENDS = [pytest.param("native", marks=requires_extension), "reference"]
NOISE = [(0.0, False), (0.8, False), (0.8, True)]


def edge_rows(x: torch.Tensor) -> torch.Tensor:
    """Plant the edge cases in a [R, V] logits tensor (R >= 8, V >= 70)."""
    x[0] = float("-inf")                 # nothing but -inf
    x[1, 3] = float("nan")               # NaN
    x[2, 40:] = float("-inf")            # -inf tail (whole slices of it)
    x[3, 36] = x[3, 37] = 60.0           # tied maxima, often across a cut
    x[4, :60] = float("-inf")            # -inf head
    x[5, 5] = float("inf")               # +inf
    x[6, 64] = x[6, 65] = 60.0           # another tie, at a noise-group edge
    x[7] = x[7].round()                  # many ties
    return x


def assert_partials_match(got: torch.Tensor, want: torch.Tensor):
    sums = [SUM, ENT]
    torch.testing.assert_close(got[..., sums], want[..., sums], rtol=2e-5, atol=1e-6, equal_nan=True)
    exact = [f for f in range(8) if f not in sums]
    g, w = got[..., exact], want[..., exact]
    same = (g == w) | (torch.isnan(g) & torch.isnan(w))
    assert bool(same.all()), f"fields differ at {(~same).nonzero().tolist()[:5]}"


def assert_stats_match(got, want):
    assert torch.equal(got.token, want.token)
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature,tempered", NOISE)
@pytest.mark.parametrize("vocab_start,V", [(0, 77), (13, 150), (126001, 463), (64, 2100)])
def test_partial_matches_reference(backend, dtype, temperature, tempered, vocab_start, V):
    R = 11
    x = edge_rows(random_logits((R, V), dtype))
    positions = torch.rand(R) < 0.8
    positions[:8] = True
    kw = dict(temperature=temperature, seed=1234, offset=5, positions=positions, tempered_scores=tempered,
              vocab_start=vocab_start, row_offset=7)
    got = ops.token_stats_partial(x, backend=backend, **kw)
    want = token_stats_partial_reference(x, **kw)
    assert got.shape == (R, 8) and got.dtype == torch.float32
    assert_partials_match(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature,tempered", NOISE)
@pytest.mark.parametrize("cuts", [(37,), (5, 50), (36, 37, 65), (1,)], ids=str)
def test_merged_slices_equal_token_stats_of_the_whole_rows(backend, dtype, temperature, tempered, cuts):
    B, L, V = 3, 5, 301
    x = random_logits((B, L, V), dtype)
    edge_rows(x.view(-1, V))
    positions = torch.rand(B, L) < 0.8
    bounds = (0, *cuts, V)
    noise = dict(temperature=temperature, seed=99, offset=3, positions=positions, tempered_scores=tempered)
    partials = torch.stack([ops.token_stats_partial(x[..., a:b], vocab_start=a, backend=backend, **noise)
                            for a, b in zip(bounds[:-1], bounds[1:])])
    want = ops.token_stats(x, backend=backend, **noise)
    assert_stats_match(merge_partials(partials, positions), want)
    # Any slice order merges the same.
    assert_stats_match(merge_partials(partials.flip(0), positions), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_offset_draws_the_noise_of_later_rows(backend):
    x = random_logits((9, 200))
    whole = ops.token_stats(x, temperature=1.0, seed=5, backend=backend)
    tail = ops.token_stats_partial(x[4:], row_offset=4, temperature=1.0, seed=5, backend=backend)
    assert torch.equal(merge_partials(tail[None]).token, whole.token[4:])
    # Without the offset the draw differs (so the test can fail).
    plain = ops.token_stats_partial(x[4:], temperature=1.0, seed=5, backend=backend)
    assert not torch.equal(merge_partials(plain[None]).token, whole.token[4:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_row_one_column_and_no_positions(backend):
    x = random_logits((1, 1))
    got = ops.token_stats_partial(x, vocab_start=41, backend=backend)
    assert got[0, 5].item() == 41.0 and got[0, 1].item() == 1.0
    off = ops.token_stats_partial(random_logits((4, 9)), positions=torch.zeros(4, dtype=torch.bool), backend=backend)
    assert_partials_match(off, token_stats_partial_reference(random_logits((4, 9)),
                                                              positions=torch.zeros(4, dtype=torch.bool)))
    empty = ops.token_stats_partial(random_logits((0, 9)), backend=backend)
    assert empty.shape == (0, 8)


def test_rng_tensor_overrides_seed_and_offset():
    x = random_logits((6, 90))
    a = ops.token_stats_partial(x, temperature=0.7, rng=torch.tensor([11, 4]), vocab_start=3)
    b = ops.token_stats_partial(x, temperature=0.7, seed=11, offset=4, vocab_start=3)
    assert_partials_match(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_name_themselves(backend):
    x = random_logits((3, 10))
    with pytest.raises(ValueError, match="vocab_start"):
        ops.token_stats_partial(x, vocab_start=-1, backend=backend)
    with pytest.raises(ValueError, match="vocab_start"):
        ops.token_stats_partial(x, vocab_start=2**24 - 5, backend=backend)
    with pytest.raises(ValueError, match="row_offset"):
        ops.token_stats_partial(x, row_offset=-2, backend=backend)
    with pytest.raises(TypeError, match="vocab_start"):
        ops.token_stats_partial(x, vocab_start=1.5, backend=backend)
    with pytest.raises(ValueError, match="positions"):
        ops.token_stats_partial(x, positions=torch.ones(4, dtype=torch.bool), backend=backend)
    with pytest.raises(TypeError, match="logits"):
        ops.token_stats_partial(x.double(), backend=backend)


@requires_extension
def test_native_op_checks_its_arguments_when_called_directly():
    x = random_logits((3, 10))
    with pytest.raises(RuntimeError, match="vocab_start"):
        torch.ops.dmkernels.token_stats_partial(x, 0.0, 0, 0, False, None, None, -1, 0)
    with pytest.raises(RuntimeError, match="row_offset"):
        torch.ops.dmkernels.token_stats_partial(x, 0.0, 0, 0, False, None, None, 0, -1)


@requires_extension
def test_opcheck():
    x = random_logits((2, 3, 70))
    pos = torch.rand(2, 3) < 0.5
    torch.library.opcheck(torch.ops.dmkernels.token_stats_partial, (x, 0.5, 3, 1, True, pos, None, 40, 2))
    torch.library.opcheck(torch.ops.dmkernels.token_stats_partial, (x, 0.0, 0, 0, False, None, None, 0, 0))
