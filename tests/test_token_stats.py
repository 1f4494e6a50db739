"""token_stats on every backend against its reference (dmkernels/reference/token_stats.py).

The Triton kernels run under the interpreter on CPU tensors where there is no
GPU; tests that need several tiles or vocabulary splits force them small with
the ``tiles`` fixture (it changes only the Triton launch: every backend runs the
case)."""
from __future__ import annotations

import math

import pytest
import torch

from dmkernels.reference import token_stats_reference
from dmkernels.reference import noise as ref_noise
from dmkernels.reference.noise import gumbel_noise as reference_noise
from dmkernels.reference.token_stats_partial import KEY, TOKEN, token_stats_partial_reference

from helpers import DTYPES, random_logits

# float32 sums over V in the kernels against float64 in the reference.
TOL = dict(rtol=2e-5, atol=2e-6)


def assert_matches(ours, ref):
    assert ours.token.dtype == torch.int64 and ours.token.shape == ref.token.shape
    torch.testing.assert_close(ours.token.cpu(), ref.token, rtol=0, atol=0)
    for name in ("confidence", "margin", "entropy"):
        a, b = getattr(ours, name).cpu(), getattr(ref, name)
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{name}: {m}", **TOL)


def check(backend, logits, **kw):
    """token_stats on the backend, compared with the reference on the CPU; returns ours (CPU)."""
    ours = backend.call("token_stats", logits, **kw)
    ref_kw = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    assert_matches(ours, token_stats_reference(logits.cpu().contiguous(), **ref_kw))
    return type(ours)(*(t.cpu() for t in ours))


# V = 1, one row, several tiles and vocabulary splits (V > 1024: 3 splits of 1024
# under the interpreter), 4-d leading dims.
SHAPES = [(1, 1), (3, 1), (1, 7), (5, 2), (2, 3, 1000), (13, 2049), (1, 4101), (3, 2500), (1, 3001), (2, 2, 3, 77)]
MODES = [(0.0, False), (1.0, False), (0.7, True), (2.5, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("temperature,tempered", MODES)
def test_matches_reference(backend, shape, dtype, temperature, tempered):
    shape = (*shape[:-2], backend.cap(shape[-2], 4), shape[-1]) if len(shape) > 1 else shape  # interpreter: rows
    logits = random_logits(shape, dtype)
    check(backend, logits, temperature=temperature, seed=1234, offset=9, tempered_scores=tempered)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_in_every_dtype(backend, dtype):
    # Large magnitudes (bf16/fp16 rounding of x / T, exp of wide ranges).
    logits = random_logits((3, 600), dtype, scale=20.0)
    for temperature, tempered in ((0.0, False), (0.3, True)):
        check(backend, logits, temperature=temperature, seed=77, tempered_scores=tempered)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_large_vocab_many_chunks(backend, temperature):
    # Several 2048-column chunks with the maximum moving late in the row.
    logits = random_logits((6, 126464 // 16 + 5), torch.bfloat16)
    logits[0, -3] = 40.0
    logits[1, 2047] = 40.0
    logits[2, 2048] = 40.0
    check(backend, logits, temperature=temperature, seed=7)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ties_go_to_the_lowest_index(backend, tiles, temperature):
    tiles(block_v=64)
    logits = torch.zeros(5, 300)
    logits[0, [5, 17, 299]] = 3.0
    logits[1, :] = 1.0
    logits[2, [0, 256]] = 2.0
    logits[3] = (torch.arange(300) % 7 == 3).float()  # many tied maxima
    logits[4] = 2.0**24  # x + g rounds to multiples of 2: tied perturbed values
    ours = check(backend, logits, temperature=temperature, seed=3)
    if temperature == 0:
        assert ours.token.tolist() == [5, 0, 0, 3, 0]
        assert ours.margin.tolist() == [0.0] * 5  # two equal tops
    else:
        # The sampled row really has ties: group keys 2^24 + log(32) + G and the
        # perturbed values 2^24 + g inside a group round to multiples of 2.
        keys = 2.0**24 + (ref_noise.log_f32(torch.tensor([32.0])) + ref_noise.group_gumbel(
            3, 0, torch.tensor([4]), torch.arange(10)))
        y = 2.0**24 + reference_noise(3, 0, torch.tensor([4]), 300)[0]
        assert (keys == keys.max()).sum() > 1 or (y[:32] == y[:32].max()).sum() > 1


@pytest.mark.parametrize("splits", [1, 3])
def test_neg_inf_entries_and_rows_without_distribution(backend, tiles, splits):
    tiles(block_v=64, splits=splits)
    logits = random_logits((7, 333))
    logits[0, :300] = -math.inf  # only 33 finite
    logits[1, :] = -math.inf
    logits[1, 200] = 0.5  # a single finite entry: confidence 1, margin 1, entropy 0
    logits[2, :] = -math.inf  # nothing finite: no distribution
    logits[3, 17] = math.nan  # NaN: no distribution
    logits[4, 40] = math.inf  # +inf: no distribution
    logits[5, :] = -math.inf
    logits[5, 300] = math.nan  # NaN among -inf only
    for temperature in (0.0, 1.3):
        ours = check(backend, logits, temperature=temperature, seed=11)
        assert ours.token[1] == 200
        assert ours.confidence[1] == 1 and ours.margin[1] == 1 and ours.entropy[1] == 0
        assert ours.token[2:6].tolist() == [-1] * 4
        for name in ("confidence", "margin", "entropy"):
            assert torch.isnan(getattr(ours, name)[2:6]).all()
        assert torch.isfinite(ours.confidence[[0, 1, 6]]).all()


def test_all_nan_logits(backend):
    ours = backend.call("token_stats", torch.full((3, 50), math.nan), temperature=1.0, seed=0)
    assert ours.token.tolist() == [-1, -1, -1]
    assert torch.isnan(ours.confidence).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_contiguous_inputs(backend, temperature):
    base = backend.to(random_logits((8, 6, 1500), torch.bfloat16))
    views = [
        base[:, ::2, :999],  # strided rows, cut vocabulary
        base.transpose(0, 1),  # permuted leading dims
        base[:, 3],  # a strided slice
        base[:2, :2, 500:].unsqueeze(1).expand(2, 3, 2, 1000),  # zero stride
        # More than 4 leading dims that do not coalesce (Triton: the row-offset table).
        backend.to(random_logits((2, 3, 2, 2, 2, 40))).permute(4, 0, 3, 1, 2, 5)[:, :, :, ::2, :1],
        backend.to(random_logits((3, 5))).t()[:, :1],  # V = 1 with stride 5 on V
    ]
    for logits in views:
        assert not logits.is_contiguous() or logits.stride(-1) != 1
        check(backend, logits, temperature=temperature, seed=5)


def test_positions_restricts_the_work(backend):
    logits = random_logits((3, 40, 517))
    positions = torch.rand(3, 40) < 0.3
    positions[0] = False  # a row with nothing to do
    positions[1, 7] = True
    for temperature in (0.0, 0.9):
        ours = check(backend, logits, temperature=temperature, seed=2, positions=positions)
        assert (ours.token[~positions] == -1).all()
        assert (ours.confidence[~positions] == -math.inf).all()
        assert (ours.margin[~positions] == -math.inf).all()
        assert (ours.entropy[~positions] == math.inf).all()
        # Selected rows get the same answer as without `positions`.
        full = backend.call("token_stats", logits, temperature=temperature, seed=2)
        assert torch.equal(ours.token[positions], full.token.cpu()[positions])


def test_positions_with_split_vocabulary(backend, tiles):
    tiles(block_v=32, splits=3)
    logits = random_logits((4, 100))
    positions = torch.tensor([True, False, True, False])
    for temperature in (0.0, 1.0):
        check(backend, logits, temperature=temperature, seed=8, positions=positions)
    positions2 = torch.tensor([[True, False], [False, True]]).t()  # non-contiguous positions
    check(backend, logits.reshape(2, 2, 100), temperature=1.0, seed=8, positions=positions2)


def test_scores_describe_the_documented_distribution(backend):
    logits = random_logits((4, 300))
    T = 0.5
    untempered = check(backend, logits, temperature=T, seed=1)
    tempered = check(backend, logits, temperature=T, seed=1, tempered_scores=True)
    assert torch.equal(untempered.token, tempered.token)  # same sample either way
    p = torch.softmax(logits.double(), -1)
    pt = torch.softmax(logits.double() / T, -1)
    tok = untempered.token.unsqueeze(-1)
    torch.testing.assert_close(untempered.confidence.double(), p.gather(-1, tok).squeeze(-1), **TOL)
    torch.testing.assert_close(tempered.confidence.double(), pt.gather(-1, tok).squeeze(-1), **TOL)
    torch.testing.assert_close(tempered.entropy.double(), -(pt * pt.log()).sum(-1), **TOL)


def test_empty_and_one_dimensional_logits(backend):
    out = backend.call("token_stats", torch.randn(0, 5, 10))
    assert out.token.shape == (0, 5) and out.entropy.shape == (0, 5)
    logits = random_logits((77,))
    out = backend.call("token_stats", logits)
    assert out.token.shape == () and int(out.token) == int(logits.argmax())


@pytest.mark.parametrize("shape,tempered", [((6, 500), False), ((2, 1, 2100), True)])
def test_seed_and_offset_use_all_64_bits(backend, shape, tempered):
    logits = random_logits(shape, torch.bfloat16, scale=0.5)
    draws = {}
    for seed, offset, temperature in ((42, 3, 1.0), (42 + 2**32, 3, 1.0), (42, 3 + 2**32, 1.0),
                                      (2**63 - 1, 2**63 - 1, 1.0), (2**40, 2**35, 1.7), (99, 7, 0.6), (1, 0, 0.0)):
        ours = check(backend, logits, temperature=temperature, seed=seed, offset=offset, tempered_scores=tempered)
        draws[(seed, offset)] = ours.token
    base = draws[(42, 3)]
    for key in ((42 + 2**32, 3), (42, 3 + 2**32), (2**63 - 1, 2**63 - 1)):
        assert (draws[key] != base).float().mean() > 0.5, key


class TestSampling:
    def test_same_seed_same_tokens(self, backend):
        logits = random_logits((backend.cap(16, 2), 64, 101), scale=0.5)  # interpreter: fewer rows
        a = backend.call("token_stats", logits, temperature=1.0, seed=42, offset=3).token.cpu()
        b = backend.call("token_stats", logits, temperature=1.0, seed=42, offset=3).token.cpu()
        assert torch.equal(a, b)
        assert torch.equal(a, token_stats_reference(logits, temperature=1.0, seed=42, offset=3).token)

    def test_seed_none_follows_torch_manual_seed(self, backend):
        logits = random_logits((8, 200), scale=0.3)
        torch.manual_seed(5)
        a = backend.call("token_stats", logits, temperature=1.0).token
        torch.manual_seed(5)
        b = backend.call("token_stats", logits, temperature=1.0).token
        assert torch.equal(a, b)

    @pytest.mark.parametrize("temperature,tempered", [(1.0, False), (0.6, False), (2.0, True)])
    def test_frequencies_match_the_softmax(self, backend, temperature, tempered):
        # n independent draws (one per row) from one distribution; chi-squared
        # test at p = 1e-4 (critical value for 6 degrees of freedom: 27.86).
        probs_logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.7])
        n = backend.cap(40000, 600)  # the interpreter pays per row (15 ms)
        logits = probs_logits.expand(n, -1)
        token = backend.call("token_stats", logits, temperature=temperature, seed=2024,
                             tempered_scores=tempered).token.cpu()
        expected = torch.softmax(probs_logits.double() / temperature, -1) * n
        observed = torch.bincount(token, minlength=7).double()
        chi2 = float(((observed - expected) ** 2 / expected).sum())
        assert chi2 < 27.86, (chi2, observed.tolist(), expected.tolist())

    def test_frequencies_over_offsets_for_one_row(self, backend):
        # The same row drawn at many offsets is also a fair sample.
        row = torch.tensor([[0.3, -0.2, 1.1, 0.0]])
        n = backend.cap(3000, 300)  # the interpreter pays per call
        counts = torch.zeros(4)
        for offset in range(n):
            counts[backend.call("token_stats", row, temperature=1.0, seed=99, offset=offset).token.cpu()[0]] += 1
        expected = torch.softmax(row[0].double(), -1) * n
        chi2 = float(((counts.double() - expected) ** 2 / expected).sum())
        assert chi2 < 21.1  # 3 degrees of freedom, p = 1e-4

    def test_neg_inf_never_sampled(self, backend):
        logits = torch.zeros(backend.cap(2000, 200), 9)
        logits[:, ::2] = -math.inf
        token = backend.call("token_stats", logits, temperature=5.0, seed=1).token
        assert (token % 2 == 1).all()


def test_rng_tensor_overrides_the_ints_and_is_read_at_call_time(backend, tiles):
    tiles(block_v=64, splits=2)
    logits = random_logits((3, 150), scale=0.5)
    rng = backend.to(torch.tensor([2**40 + 77, 3]))
    a = backend.call("token_stats", logits, temperature=1.0, rng=rng).token.cpu()
    assert torch.equal(a, check(backend, logits, temperature=1.0, seed=2**40 + 77, offset=3).token)
    rng[1] += 2**32  # in place, as a CUDA graph replay loop does between steps
    b = check(backend, logits, temperature=1.0, seed=2**40 + 77, offset=3 + 2**32).token
    assert torch.equal(backend.call("token_stats", logits, temperature=1.0, rng=rng).token.cpu(), b)
    assert not torch.equal(a, b)
    # The strided view of a bigger tensor works too.
    view = backend.to(torch.tensor([[2**40 + 77, 0], [3, 9]])).t()[0]
    assert torch.equal(backend.call("token_stats", logits, temperature=1.0, rng=view).token.cpu(), a)


# Extreme inputs.


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("splits", [1, 3])
def test_finite_logits_whose_differences_overflow(backend, tiles, splits):
    # z - max overflows float32 to -inf for finite z: exp(-inf) * -inf was NaN
    # (Triton: entropy 0): within a tile, across tiles (the running rescale) and
    # across splits (the merge).
    tiles(block_v=32, splits=splits)
    logits = torch.tensor([[2e38, -2e38, 2e38], [-3e38, 3e38, 0.0]])
    wide = torch.full((1, 300), -3e38)  # the maximum appears late: the running rescale overflows too
    wide[0, [250, 299]] = 3e38
    tiled = torch.full((3, 96), -math.inf)
    tiled[0, :3] = torch.tensor([2e38, -2e38, 2e38])
    tiled[1, [0, 40, 90]] = torch.tensor([-2e38, 2e38, 2e38])  # the maximum grows by inf after tile 0
    tiled[2, [5, 70]] = torch.tensor([-3e38, 3e38])  # x / T overflows: still the larger one
    for T in (0.0, 0.5, 0.7, 2.0):
        for x, entropy in ((logits, [math.log(2), 0.0]), (wide, [math.log(2)]), (tiled, [math.log(2)] * 2 + [0.0])):
            s = check(backend, x, temperature=T, seed=5)
            torch.testing.assert_close(s.entropy, torch.tensor(entropy), rtol=1e-6, atol=1e-7)
        assert s.token[2] == 70


@pytest.mark.parametrize("op", ["token_stats", "token_stats_partial"])
def test_temperatures_below_the_floor_are_refused(backend, op):
    logits = torch.tensor([[0.0, 1.0, 0.5]])
    for T in (1e-40, 5e-324, 2.0**-101):  # float32(1 / T) is inf, or beyond 2**100
        with pytest.raises(ValueError, match=rf"dmkernels.{op}: temperature must be 0 or >= 2\*\*-100"):
            backend.call(op, logits, temperature=T, seed=1)
    # The floor itself is accepted: the noise, scaled by 2**-100, cannot outweigh a gap of 0.5.
    out = backend.call(op, logits, temperature=2.0**-100, seed=1)
    if op == "token_stats":
        assert out.token.tolist() == [1]


def test_sampling_where_x_over_t_overflows(backend):
    # x / T overflows float32 (to +inf or -inf) but the distribution softmax(x / T) is
    # a point mass on the larger logit: every seed must draw it, on every backend.
    for row, T in (([2e38, 3e38], 0.5), ([-3e38, -2e38], 0.5), ([3.4e38, 3.3e38, 0.0], 1e-3)):
        logits = torch.tensor([row] * 16)
        want = max(range(len(row)), key=row.__getitem__)
        for seed in (0, 1, 2):
            s = check(backend, logits, temperature=T, seed=seed)
            assert s.token.tolist() == [want] * 16, (row, T, seed)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_tempered_scores_that_overflow_have_no_distribution(backend):
    # softmax(x / T) of x / T beyond float32 cannot be represented: token -1, NaN scores,
    # the same on every backend (a row that does not overflow is unaffected).
    logits = torch.tensor([[2e38, 3e38, 0.0], [1.0, 2.0, 0.0]])
    s = check(backend, logits, temperature=0.5, seed=3, tempered_scores=True)
    assert s.token[0] == -1 and all(math.isnan(getattr(s, n)[0]) for n in ("confidence", "margin", "entropy"))


@pytest.mark.parametrize("T", [0.9, 0.3, 0.01, 1e-6])
def test_scaled_sampler_draws_the_unscaled_sample(backend, T):
    # The sampler works on w = x * c with noise scaled by s, a power of two (noise.h):
    # where nothing overflows that is exactly the sampler of x * float32(1/T) with
    # unit scales (every key and perturbed value scaled by s), so the token is the same.
    from dmkernels.reference.token_stats import inverse_temperature

    logits = random_logits((24, 300), scale=4.0 * T)  # spreads comparable to the noise
    rows = torch.arange(24)
    want, _ = ref_noise.hierarchical_sample(logits * inverse_temperature(T), 1.0, 1.0, 11, 2, rows)
    s = backend.call("token_stats", logits, temperature=T, seed=11, offset=2)
    assert torch.equal(s.token.cpu(), want)


def _chi2_z(observed: torch.Tensor, expected: torch.Tensor) -> tuple[float, int]:
    """Chi-squared statistic over the cells (cells expecting fewer than 5 draws pooled
    into one), as a normal deviate by the Wilson-Hilferty transform: large when the
    draws do not follow ``expected``."""
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    assert not bool((obs[~keep] > 0).any()), "a draw where the distribution has no mass"
    obs, exp = obs[keep], exp[keep]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    k = max(1, obs.numel() - 1)
    z = ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return z, k


def _draws(backend, row: torch.Tensor, n_rows: int, n_calls: int, T: float, tempered: bool) -> torch.Tensor:
    """Counts per column of n_rows * n_calls draws of ``row`` (rows and offsets both vary)."""
    logits = backend.to(row.expand(n_rows, -1).contiguous())
    counts = torch.zeros(row.shape[-1], dtype=torch.float64)
    for offset in range(n_calls):
        token = backend.call("token_stats", logits, temperature=T, seed=77, offset=offset,
                             tempered_scores=tempered).token.cpu()
        counts += torch.bincount(token, minlength=row.shape[-1]).double()
    return counts


class TestHierarchicalSampling:
    """The sample follows softmax(x / T) (noise.h: a group by its mass, then a column
    of the group), on every backend: chi-squared at a normal deviate of 4 (p ~ 3e-5)."""

    @pytest.mark.parametrize("T,tempered", [(1.0, False), (0.7, False), (0.7, True), (3.0, False)])
    def test_near_ties_within_and_across_groups(self, backend, T, tempered):
        row = torch.full((100,), -4.0)
        row[[3, 40, 99]] = 2.0                 # exact ties in three groups (99: the short last group)
        row[[5, 70]] = 2.0 - 1e-3              # near ties
        row[[6, 7, 8]] = torch.tensor([1.0, 1.0 + 2**-20, 0.5])
        row[[10, 60]] = -math.inf
        row[64:96] = torch.linspace(-1.0, 1.0, 32)  # a group of many small masses
        n_rows, n_calls = (backend.cap(4000, 300), backend.cap(10, 2))
        counts = _draws(backend, row, n_rows, n_calls, T, tempered)
        expected = torch.softmax(row.double() / T, -1) * counts.sum()
        z, k = _chi2_z(counts, expected)
        assert z < 4.0, (z, k)
        assert counts[[10, 60]].sum() == 0

    @pytest.mark.parametrize("T,tempered", [(1.0, False), (0.7, False), (0.7, True)])
    def test_huge_vocabulary_few_rows(self, backend, T, tempered):
        # LLaDA's vocabulary: background mass spread over every group plus hot
        # columns in a few; draws from a few rows at many offsets.
        V = backend.cap(126464, 4096)
        g = torch.Generator().manual_seed(3)
        row = torch.randn(V, generator=g) - 3.0
        hot = torch.randperm(V, generator=g)[:40]
        row[hot] = torch.linspace(0.0, 4.0, 40)
        row[torch.randperm(V, generator=g)[:V // 10]] = -math.inf
        n_rows = 4
        # The reference and the interpreter pay per element: fewer draws (their tokens
        # are the native kernel's, bit for bit, as the tests above check).
        n_calls = 1000 if backend.name == "native" else 10
        counts = _draws(backend, row, n_rows, n_calls, T, tempered)
        p = torch.softmax(row.double() / T, -1)
        cells = torch.cat([counts[hot], counts.sum().reshape(1) - counts[hot].sum()])
        expected = torch.cat([p[hot], (1 - p[hot].sum()).reshape(1)]) * counts.sum()
        z, k = _chi2_z(cells, expected)
        assert z < 4.0, (z, k)

    def test_many_seeds_dtypes_and_edges_bit_identical(self, backend):
        # Every backend draws exactly the reference's token: odd V, -inf entries,
        # NaN and all -inf rows, tiny and huge temperatures, every dtype, many seeds.
        V = 333
        seeds = [0, 1, 2, 3, 5, 8, 13, 2**31, 2**40 + 3, 2**63 - 1][: backend.cap(10, 3)]
        for dtype in DTYPES:
            x = random_logits((9, V), dtype)
            x[0] = -math.inf
            x[1, 7] = math.nan
            x[2, ::3] = -math.inf
            x[3, 200:] = -math.inf
            x[4] = x[4].round()  # ties
            x[5, 320:] = 40.0    # the mass in the short last group
            for T, tempered in [(1.0, False), (0.7, True), (0.7, False), (1e-20, False), (1e20, True)]:
                for seed in seeds:
                    check(backend, x, temperature=T, seed=seed, offset=seed % 7, tempered_scores=tempered)

    @pytest.mark.parametrize("T,tempered", [(1.0, False), (0.3, True), (1e-30, False)])
    def test_group_key_is_canonical_on_every_backend(self, backend, T, tempered):
        # One group per row: the KEY of token_stats_partial is K = m + (log_f32(S) + G) s
        # with S the canonical sum of the canonical exps (noise.h), so its bits test
        # exp_f32 and group_sum32 of the backend. Rows span exp's range: d = 0 down to
        # the clamp at -86, -inf entries, values in float32's extremes.
        from dmkernels.reference.token_stats import inverse_temperature, key_scales

        g = torch.Generator().manual_seed(5)
        x = torch.randn(16, 32, generator=g) * torch.tensor([0.01, 1, 3, 10, 30, 100, 1e3, 1e30] * 2)[:, None]
        x[8, 5:] = -math.inf
        x[9, ::2] = -100.0
        x[10] = torch.linspace(-90, 0, 32)
        x[11] = 3e38 * torch.rand(32, generator=g)
        got = backend.call("token_stats_partial", x, temperature=T, seed=9, offset=1, tempered_scores=tempered)
        want = token_stats_partial_reference(x, temperature=T, seed=9, offset=1, tempered_scores=tempered)
        got, want = got.cpu()[:, [KEY, TOKEN]], want[:, [KEY, TOKEN]]
        assert bool(((got == want) | (got.isnan() & want.isnan())).all()), (got, want)
        valid = ~want[:, 0].isnan()  # x / T overflowing float32 with tempered scores: no distribution
        assert int(valid.sum()) >= 15
        want = token_stats_partial_reference(x, temperature=T, seed=9, offset=1, tempered_scores=tempered)
        # ... and the reference's KEY is the spec's formula.
        c, s = key_scales(inverse_temperature(T))
        w = x * c
        m = w.max(-1).values
        S = ref_noise.group_sum32(ref_noise.exp_f32((w - m[:, None]) * (1.0 / s)))
        G = ref_noise.group_gumbel(9, 1, torch.arange(16), torch.zeros(16, dtype=torch.int64))
        assert torch.equal(want[valid, KEY], (m + (ref_noise.log_f32(S) + G) * s)[valid])


# The Triton launch itself: its noise, its split plan, its merge of splits.


def test_triton_noise_is_bit_identical_to_the_reference(triton_backend):
    from dmkernels.triton import noise as triton_noise

    for seed, offset, rows, V in [(0, 0, 2, 100), (2**40 + 7, 2**33 + 5, 3, 77), (2**63 - 1, 2**63 - 1, 1, 64)]:
        ours = triton_noise.gumbel_noise(seed, offset, rows, V, device=triton_backend.device).cpu()
        ref = reference_noise(seed, offset, torch.arange(rows), V)
        assert torch.equal(ours.view(torch.int32), ref.view(torch.int32)), (seed, offset)


def test_triton_canonical_exp_sum_and_group_noise_are_the_references(triton_backend):
    from dmkernels.triton import noise as triton_noise

    dev = triton_backend.device
    d = torch.cat([torch.linspace(-100, 0, 20001), -torch.rand(20000) * 3, -torch.rand(1000) * 1e-30,
                   torch.tensor([0.0, -0.0, -math.inf, -86.0, -85.99999, -1e-45, -0.34657359, -0.34657362])])
    ours = triton_noise.exp_f32_tensor(d.to(dev)).cpu()
    assert torch.equal(ours.view(torch.int32), ref_noise.exp_f32(d).view(torch.int32))
    assert ref_noise.exp_f32(torch.zeros(1)).item() == 1.0
    err = (ref_noise.exp_f32(d[:40001]).double() / torch.exp(d[:40001].double().clamp(min=-86)) - 1).abs().max()
    assert err < 2**-23  # below one ulp: a canonical exp, not a rough one
    e = torch.rand(64, 32) * torch.tensor([1.0, 1e-8, 30.0, 1e7]).repeat(16)[:, None]
    assert torch.equal(triton_noise.group_sum32_tensor(e.to(dev)).cpu(), ref_noise.group_sum32(e))
    # The fold order is the spec's: another order gives other bits on such sums.
    assert not torch.equal(ref_noise.group_sum32(e), e.sum(-1)) or not torch.equal(
        ref_noise.group_sum32(e), e.flip(-1).cumsum(-1)[:, -1])
    for seed, offset, row in [(0, 0, 0), (2**40 + 7, 2**33 + 5, 3), (2**63 - 1, 2**63 - 1, 2**32 - 1)]:
        ours = triton_noise.group_gumbel_tensor(seed, offset, row, 100, device=dev).cpu()
        assert torch.equal(ours, ref_noise.group_gumbel(seed, offset, torch.tensor([row]), torch.arange(100)))


def test_reference_fma_rounds_once():
    # exp_f32 uses fused multiply-adds: the reference emulates them exactly in float64
    # (round to odd), checked here against exact rational arithmetic.
    from fractions import Fraction

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3000, generator=g), torch.randn(3000, generator=g)
    c = torch.randn(3000, generator=g) * torch.rand(3000, generator=g) ** 8
    c[:1000] = -(a[:1000] * b[:1000])  # cancellation: the fused result is the product's rounding error
    got = ref_noise.fma_f32(a, b, c)
    for i in range(0, 3000, 3):
        exact = Fraction(a[i].item()) * Fraction(b[i].item()) + Fraction(c[i].item())
        near = torch.tensor(float(exact), dtype=torch.float32)
        cands = [torch.nextafter(near, torch.tensor(-math.inf)), near, torch.nextafter(near, torch.tensor(math.inf))]
        best = min(cands, key=lambda v: (abs(Fraction(v.item()) - exact), int(v.view(torch.int32)) & 1))
        assert got[i].item() == best.item(), i
    assert not torch.equal(got[:1000], a[:1000] * b[:1000] + c[:1000])  # two roundings differ


@pytest.mark.parametrize("temperature,tempered", [(1.0, False), (0.7, True), (2.0, True)])
@pytest.mark.parametrize("block_v,splits", [(64, 1), (64, 3), (32, None)])
def test_top_two_from_group_maxima(backend, tiles, temperature, tempered, block_v, splits):
    # When sampling with one distribution the Triton kernel takes a tile's top two
    # from its group maxima and reads the maximum's group again only when the tile
    # holds a new maximum: the margin must still see every place the second can be.
    tiles(block_v=block_v, splits=splits)
    logits = random_logits((8, 300))
    logits[0, [5, 9]] = 20.0             # the maximum twice in one group: margin 0
    logits[1, 5], logits[1, 9] = 20.0, 19.0   # the second in the maximum's group
    logits[2, 40], logits[2, 9] = 20.0, 19.0  # the second in another group of the tile
    logits[3, 290], logits[3, 9] = 20.0, 19.5  # a record in the last, short group
    logits[4, 9], logits[4, 200] = 19.0, 20.0  # a record in a later tile: the old maximum is second
    logits[5, 9], logits[5, 200] = 20.0, 20.0  # equal maxima in two tiles
    logits[6, 100], logits[6, 101] = 20.0, 20.0 - 2**-18  # a near tie in one group
    logits[7] = (torch.arange(300) % 11 == 4).float() * 3.0  # many tied maxima over the tiles
    ours = check(backend, logits, temperature=temperature, seed=11, offset=4, tempered_scores=tempered)
    assert ours.margin[0] == 0 and ours.margin[5] == 0 and ours.margin[7] == 0


@pytest.mark.parametrize("temperature,tempered", [(1.0, False), (0.7, True), (0.7, False)])
def test_triton_group_pass_takes_every_candidate_in_bound_order(triton_backend, tiles, monkeypatch,
                                                                temperature, tempered):
    # The Triton kernel gives a group its canonical key only while the group's bound
    # (fast sum plus KEY_SLACK) reaches the best key so far. With a huge slack every
    # group is a candidate, taken in decreasing bound order, not column order: the
    # sample must still be the reference's, the earlier group winning ties.
    if triton_backend.device != "cpu":
        pytest.skip("changes a constexpr global: the interpreter reads it at run time")
    import triton.language as tl

    from dmkernels.triton import token_stats as triton_token_stats

    tiles(block_v=128, splits=1)
    logits = random_logits((6, 700))
    logits[1] = 2.0**24  # tied keys in every group
    logits[2, ::3] = -math.inf
    logits[3, 333] = 30.0
    logits[4] = logits[4] * 30
    for slack in (40.0, 1e-3):
        monkeypatch.setattr(triton_token_stats, "KEY_SLACK", tl.constexpr(slack))
        for seed in range(3):
            ours = triton_backend.call("token_stats", triton_backend.to(logits), temperature=temperature, seed=seed,
                                       offset=1, tempered_scores=tempered).token.cpu()
            want = token_stats_reference(logits, temperature=temperature, seed=seed, offset=1,
                                         tempered_scores=tempered).token
            assert torch.equal(ours, want), (slack, seed)


def test_triton_split_plan_covers_the_vocabulary(triton_backend):
    from dmkernels.triton import token_stats as triton_token_stats

    cpu = torch.device("cpu")
    for rows, V in [(1, 1), (1, 33), (1, 3001), (2, 4096), (3, 5000), (64, 126464), (1, 126464)]:
        block_v, chunk, splits = triton_token_stats._plan(rows, V, cpu)
        assert block_v & (block_v - 1) == 0 and block_v >= 32 and chunk % block_v == 0
        assert (splits - 1) * chunk < V <= splits * chunk
    assert triton_token_stats._plan(1, 3001, cpu)[2] > 1  # the default plan splits few rows


@pytest.mark.parametrize("splits", [3, 8])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_split_vocabulary_merge(backend, tiles, splits, temperature):
    # 64-column tiles: a 300-column row has 5 tiles spread over the Triton splits.
    tiles(block_v=64, splits=splits)
    logits = random_logits((6, 300))
    logits[0, 299] = 30.0  # maximum in the last column of the last split
    logits[1, [40, 250]] = 25.0  # tied maxima in different splits: margin 0
    logits[2, :128] = -math.inf  # whole splits of -inf
    logits[3, 100:] = -math.inf
    logits[4, 63:65] = 25.0  # a tie across a tile boundary
    logits[5] = 2.0**24  # x + g rounds to multiples of 2: sampled values tie in and across splits
    ours = check(backend, logits, temperature=temperature, seed=5, offset=2)
    if temperature == 0:
        assert ours.token[[0, 1, 4]].tolist() == [299, 40, 63]
        assert ours.margin[1] == 0 and ours.margin[4] == 0
