"""token_stats against its reference (dmkernels/reference/token_stats.py)."""
from __future__ import annotations

import math
import re

import pytest
import torch

import dmkernels
from dmkernels.reference import token_stats_reference

from conftest import requires_extension
from helpers import DTYPES, random_logits

pytestmark = requires_extension

# float32 sums over V in the kernel against float64 in the reference.
TOL = dict(rtol=2e-5, atol=2e-6)


def assert_matches(ours, ref):
    assert ours.token.dtype == torch.int64 and ours.token.shape == ref.token.shape
    torch.testing.assert_close(ours.token, ref.token, rtol=0, atol=0)
    for name in ("confidence", "margin", "entropy"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{name}: {m}", **TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 7), (5, 2), (2, 3, 1000), (13, 2049), (1, 4101), (2, 2, 3, 77)])
@pytest.mark.parametrize("temperature,tempered", [(0.0, False), (1.0, False), (0.7, True), (2.5, False)])
def test_matches_reference(shape, dtype, temperature, tempered):
    logits = random_logits(shape, dtype)
    kw = dict(temperature=temperature, seed=1234, offset=9, tempered_scores=tempered)
    assert_matches(dmkernels.token_stats(logits, **kw), token_stats_reference(logits, **kw))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_large_vocab_many_chunks(temperature):
    # Several 2048-column chunks with the maximum moving late in the row.
    logits = random_logits((6, 126464 // 16 + 5), torch.bfloat16)
    logits[0, -3] = 40.0
    logits[1, 2047] = 40.0
    logits[2, 2048] = 40.0
    kw = dict(temperature=temperature, seed=7)
    assert_matches(dmkernels.token_stats(logits, **kw), token_stats_reference(logits, **kw))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ties_go_to_the_lowest_index(temperature):
    logits = torch.zeros(4, 300)
    logits[0, [5, 17, 299]] = 3.0
    logits[1, :] = 1.0
    logits[2, [0, 256]] = 2.0
    logits[3] = torch.arange(300) % 7 == 3  # many tied maxima
    ours = dmkernels.token_stats(logits, temperature=temperature, seed=3)
    assert_matches(ours, token_stats_reference(logits, temperature=temperature, seed=3))
    if temperature == 0:
        assert ours.token.tolist() == [5, 0, 0, 3]
        assert ours.margin[[0, 1, 2, 3]].tolist() == [0.0, 0.0, 0.0, 0.0]  # two equal tops


def test_neg_inf_entries_and_rows_without_distribution():
    logits = random_logits((6, 333))
    logits[0, :300] = -math.inf  # only 33 finite
    logits[1, :] = -math.inf
    logits[1, 200] = 0.5  # a single finite entry: confidence 1, margin 1, entropy 0
    logits[2, :] = -math.inf  # nothing finite: no distribution
    logits[3, 17] = math.nan  # NaN: no distribution
    logits[4, 40] = math.inf  # +inf: no distribution
    for temperature in (0.0, 1.3):
        ours = dmkernels.token_stats(logits, temperature=temperature, seed=11)
        assert_matches(ours, token_stats_reference(logits, temperature=temperature, seed=11))
        assert ours.token[1] == 200
        assert ours.confidence[1] == 1 and ours.margin[1] == 1 and ours.entropy[1] == 0
        assert ours.token[2:5].tolist() == [-1, -1, -1]
        for name in ("confidence", "margin", "entropy"):
            assert torch.isnan(getattr(ours, name)[2:5]).all()
        assert torch.isfinite(ours.confidence[[0, 1, 5]]).all()


def test_all_nan_logits():
    logits = torch.full((3, 50), math.nan)
    ours = dmkernels.token_stats(logits, temperature=1.0, seed=0)
    assert ours.token.tolist() == [-1, -1, -1]
    assert torch.isnan(ours.confidence).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_contiguous_inputs(temperature):
    base = random_logits((8, 6, 1500), torch.bfloat16)
    views = [
        base[:, ::2, :999],  # strided rows, cut vocabulary
        base.transpose(0, 1),  # permuted leading dims
        base[:, 3],  # a strided slice
        base[:, :, 500:].unsqueeze(1).expand(8, 3, 6, 1000),  # zero stride
    ]
    for logits in views:
        assert not logits.is_contiguous()
        ours = dmkernels.token_stats(logits, temperature=temperature, seed=5)
        ref = token_stats_reference(logits.contiguous(), temperature=temperature, seed=5)
        assert_matches(ours, ref)


def test_positions_restricts_the_work():
    logits = random_logits((3, 40, 517))
    positions = torch.rand(3, 40) < 0.3
    positions[0] = False  # a row with nothing to do
    positions[1, 7] = True
    for temperature in (0.0, 0.9):
        ours = dmkernels.token_stats(logits, temperature=temperature, seed=2, positions=positions)
        ref = token_stats_reference(logits, temperature=temperature, seed=2, positions=positions)
        assert_matches(ours, ref)
        assert (ours.token[~positions] == -1).all()
        assert (ours.confidence[~positions] == -math.inf).all()
        assert (ours.margin[~positions] == -math.inf).all()
        assert (ours.entropy[~positions] == math.inf).all()
        # Selected rows get the same answer as without `positions`.
        full = dmkernels.token_stats(logits, temperature=temperature, seed=2)
        assert torch.equal(ours.token[positions], full.token[positions])


def test_scores_describe_the_documented_distribution():
    logits = random_logits((4, 300))
    T = 0.5
    untempered = dmkernels.token_stats(logits, temperature=T, seed=1)
    tempered = dmkernels.token_stats(logits, temperature=T, seed=1, tempered_scores=True)
    assert torch.equal(untempered.token, tempered.token)  # same sample either way
    p = torch.softmax(logits.double(), -1)
    pt = torch.softmax(logits.double() / T, -1)
    tok = untempered.token.unsqueeze(-1)
    torch.testing.assert_close(untempered.confidence.double(), p.gather(-1, tok).squeeze(-1), **TOL)
    torch.testing.assert_close(tempered.confidence.double(), pt.gather(-1, tok).squeeze(-1), **TOL)
    torch.testing.assert_close(tempered.entropy.double(), -(pt * pt.log()).sum(-1), **TOL)


def test_empty_leading_dims():
    out = dmkernels.token_stats(torch.randn(0, 5, 10))
    assert out.token.shape == (0, 5) and out.entropy.shape == (0, 5)


def test_one_dimensional_logits():
    logits = random_logits((77,))
    out = dmkernels.token_stats(logits)
    assert out.token.shape == () and int(out.token) == int(logits.argmax())


class TestSampling:
    def test_same_seed_same_tokens_and_fresh_noise_per_seed_and_offset(self):
        logits = random_logits((16, 64, 101), scale=0.5)
        a = dmkernels.token_stats(logits, temperature=1.0, seed=42, offset=3).token
        b = dmkernels.token_stats(logits, temperature=1.0, seed=42, offset=3).token
        assert torch.equal(a, b)
        assert torch.equal(a, token_stats_reference(logits, temperature=1.0, seed=42, offset=3).token)
        for kw in (dict(seed=43, offset=3), dict(seed=42, offset=4), dict(seed=42 + 2**32, offset=3),
                   dict(seed=42, offset=3 + 2**32)):
            other = dmkernels.token_stats(logits, temperature=1.0, **kw).token
            assert (other != a).float().mean() > 0.5, kw

    def test_seed_none_follows_torch_manual_seed(self):
        logits = random_logits((8, 200), scale=0.3)
        torch.manual_seed(5)
        a = dmkernels.token_stats(logits, temperature=1.0).token
        torch.manual_seed(5)
        b = dmkernels.token_stats(logits, temperature=1.0).token
        assert torch.equal(a, b)

    @pytest.mark.parametrize("temperature,tempered", [(1.0, False), (0.6, False), (2.0, True)])
    def test_frequencies_match_the_softmax(self, temperature, tempered):
        # 40000 independent draws (one per row) from one distribution; chi-squared
        # test at p = 1e-4 (critical value for 6 degrees of freedom: 27.86).
        probs_logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.7])
        n = 40000
        logits = probs_logits.expand(n, -1)
        token = dmkernels.token_stats(logits, temperature=temperature, seed=2024, tempered_scores=tempered).token
        expected = torch.softmax(probs_logits.double() / temperature, -1) * n
        observed = torch.bincount(token, minlength=7).double()
        chi2 = float(((observed - expected) ** 2 / expected).sum())
        assert chi2 < 27.86, (chi2, observed.tolist(), expected.tolist())

    def test_frequencies_over_offsets_for_one_row(self):
        # The same row drawn at 3000 offsets is also a fair sample.
        row = torch.tensor([[0.3, -0.2, 1.1, 0.0]])
        counts = torch.zeros(4)
        for offset in range(3000):
            counts[dmkernels.token_stats(row, temperature=1.0, seed=99, offset=offset).token[0]] += 1
        expected = torch.softmax(row[0].double(), -1) * 3000
        chi2 = float(((counts.double() - expected) ** 2 / expected).sum())
        assert chi2 < 21.1  # 3 degrees of freedom, p = 1e-4

    def test_neg_inf_never_sampled(self):
        logits = torch.zeros(2000, 9)
        logits[:, ::2] = -math.inf
        token = dmkernels.token_stats(logits, temperature=5.0, seed=1).token
        assert (token % 2 == 1).all()


class TestRngTensor:
    def test_rng_tensor_equals_the_ints_and_is_read_at_call_time(self):
        logits = random_logits((5, 9, 211), scale=0.5)
        rng = torch.tensor([77, 3])
        a = dmkernels.token_stats(logits, temperature=1.0, rng=rng)
        assert torch.equal(a.token, dmkernels.token_stats(logits, temperature=1.0, seed=77, offset=3).token)
        assert torch.equal(a.token, dmkernels.token_stats(logits, temperature=1.0, rng=rng, backend="reference").token)
        rng[1] += 1  # what a CUDA graph replay loop does between steps
        b = dmkernels.token_stats(logits, temperature=1.0, rng=rng)
        assert torch.equal(b.token, dmkernels.token_stats(logits, temperature=1.0, seed=77, offset=4).token)
        assert (a.token != b.token).any()

    def test_bad_rng_is_named(self):
        logits = random_logits((2, 11))
        for bad, word in [(torch.tensor([1, 2, 3]), "shape"), (torch.tensor([1.0, 2.0]), "int64"),
                          (torch.tensor([-1, 0]), ">= 0")]:
            with pytest.raises((ValueError, TypeError, RuntimeError), match=f"rng.*{re.escape(word)}"):
                dmkernels.token_stats(logits, temperature=1.0, rng=bad)
            with pytest.raises(RuntimeError, match=f"rng.*{re.escape(word)}"):
                torch.ops.dmkernels.token_stats(logits, 1.0, 0, 0, False, None, bad)


# Extreme inputs, on every backend (Triton under its interpreter without a GPU).
BACKENDS = ["reference", "native", "triton"]


def _backend(backend):
    if backend == "triton" and dmkernels.backends()["triton"] != "available":
        pytest.skip(f"triton: {dmkernels.backends()['triton']}")
    return backend


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_logits_whose_differences_overflow(backend):
    # z - max overflows float32 to -inf for finite z: exp(-inf) * -inf was NaN (Triton: entropy 0).
    logits = torch.tensor([[2e38, -2e38, 2e38], [-3e38, 3e38, 0.0]])
    wide = torch.full((1, 300), -3e38)  # the maximum appears late: the running rescale overflows too
    wide[0, [250, 299]] = 3e38
    for T in (0.0, 0.7, 2.0):
        for x, entropy in ((logits, [math.log(2), 0.0]), (wide, [math.log(2)])):
            s = dmkernels.token_stats(x, temperature=T, seed=5, backend=_backend(backend))
            torch.testing.assert_close(s.entropy, torch.tensor(entropy), rtol=1e-6, atol=1e-7)
            assert_matches(s, token_stats_reference(x, temperature=T, seed=5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["token_stats", "token_stats_partial"])
def test_temperatures_below_the_floor_are_refused(backend, op):
    logits = torch.tensor([[0.0, 1.0, 0.5]])
    fn = getattr(dmkernels, op)
    for T in (1e-40, 5e-324, 2.0**-101):  # float32(1 / T) is inf, or beyond 2**100
        with pytest.raises(ValueError, match=rf"dmkernels.{op}: temperature must be 0 or >= 2\*\*-100"):
            fn(logits, temperature=T, seed=1, backend=_backend(backend))
    # The floor itself is accepted: the noise, scaled by 2**-100, cannot outweigh a gap of 0.5.
    out = fn(logits, temperature=2.0**-100, seed=1, backend=backend)
    if op == "token_stats":
        assert out.token.tolist() == [1]


def test_compiled_op_refuses_temperatures_below_the_floor():
    with pytest.raises(ValueError, match="temperature must be 0 or >= 2\\*\\*-100"):
        torch.ops.dmkernels.token_stats(torch.zeros(1, 3), 1e-40, 0, 0, False, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_where_x_over_t_overflows(backend):
    # x / T overflows float32 (to +inf or -inf) but the distribution softmax(x / T) is
    # a point mass on the larger logit: every seed must draw it, on every backend.
    for row, T in (([2e38, 3e38], 0.5), ([-3e38, -2e38], 0.5), ([3.4e38, 3.3e38, 0.0], 1e-3)):
        logits = torch.tensor([row] * 16)
        want = max(range(len(row)), key=row.__getitem__)
        for seed in (0, 1, 2):
            s = dmkernels.token_stats(logits, temperature=T, seed=seed, backend=_backend(backend))
            assert s.token.tolist() == [want] * 16, (row, T, seed)
            assert_matches(s, token_stats_reference(logits, temperature=T, seed=seed))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_tempered_scores_that_overflow_have_no_distribution(backend):
    # softmax(x / T) of x / T beyond float32 cannot be represented: token -1, NaN scores,
    # the same on every backend (a row that does not overflow is unaffected).
    logits = torch.tensor([[2e38, 3e38, 0.0], [1.0, 2.0, 0.0]])
    s = dmkernels.token_stats(logits, temperature=0.5, seed=3, tempered_scores=True, backend=_backend(backend))
    assert s.token[0] == -1 and all(math.isnan(getattr(s, n)[0]) for n in ("confidence", "margin", "entropy"))
    assert_matches(s, token_stats_reference(logits, temperature=0.5, seed=3, tempered_scores=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [0.9, 0.3, 0.01, 1e-6])
def test_scaled_perturbation_draws_the_unscaled_argmax(backend, T):
    # y = x * c + g * s is (x * float32(1/T) + g) * 2**-e: where nothing overflows the
    # draw is exactly the argmax of the unscaled sum, so tokens did not change.
    from dmkernels.reference.noise import gumbel_noise
    from dmkernels.reference.token_stats import inverse_temperature

    logits = random_logits((24, 300), scale=4.0 * T)  # spreads comparable to the noise
    rows = torch.arange(24)
    want = torch.argmax(logits * inverse_temperature(T) + gumbel_noise(11, 2, rows, 300), dim=-1)
    s = dmkernels.token_stats(logits, temperature=T, seed=11, offset=2, backend=_backend(backend))
    assert torch.equal(s.token, want)
