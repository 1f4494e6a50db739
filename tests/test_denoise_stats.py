"""denoise_stats on every backend: against its reference
(dmkernels/reference/denoise_stats.py), against token_stats(tempered_scores=True)
for the token and entropy, and against plain torch (``logits / T``) for the
argmax and processed_out, bit for bit. The Triton kernels run under the
interpreter where there is no GPU (``backend.cap`` keeps their shapes small)."""
from __future__ import annotations

import math

import pytest
import torch

import dmkernels
from dmkernels.reference import denoise_stats_reference, token_stats_reference

from helpers import DTYPES, random_logits

TOL = dict(rtol=2e-5, atol=2e-6)  # float32 sums in the kernels against float64 in the reference


def run(backend, logits, temperature, *, out_dtype=None, out_init=None, frozen=None, **kw):
    """denoise_stats on the backend and the reference (on the CPU), compared; returns
    (ours on the CPU, processed_out on the CPU or None)."""
    out = ref_out = None
    if out_dtype is not None:
        init = out_init if out_init is not None else torch.full(logits.shape, 12345.0)
        out = backend.to(init.to(out_dtype))
        ref_out = init.to(out_dtype)
    ours = backend.call("denoise_stats", logits, temperature, processed_out=out, frozen=frozen, **kw)
    ref_kw = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    t_ref = temperature.cpu() if isinstance(temperature, torch.Tensor) else temperature
    if "seed" not in ref_kw and "rng" not in ref_kw:
        raise AssertionError("tests pass a seed or an rng")
    rng = ref_kw.pop("rng", None)
    if rng is not None:
        ref_kw["seed"], ref_kw["offset"] = (int(v) for v in rng.tolist())
    ref = denoise_stats_reference(logits.cpu(), t_ref, processed_out=ref_out, frozen=frozen, **ref_kw)
    assert isinstance(ours, dmkernels.DenoiseStats)
    got = dmkernels.DenoiseStats(*(t.cpu() for t in ours))
    for name in ("token", "argmax"):
        g, w = getattr(got, name), getattr(ref, name)
        assert g.dtype == torch.int64 and g.shape == w.shape, name
        assert torch.equal(g, w), (name, g, w)
    assert got.entropy.dtype == torch.float32 and got.entropy.shape == ref.entropy.shape
    torch.testing.assert_close(got.entropy, ref.entropy, equal_nan=True, **TOL)
    if out is not None:
        assert torch.equal(out.cpu().view(torch.int16 if out.element_size() == 2 else torch.int32),
                           ref_out.view(torch.int16 if ref_out.element_size() == 2 else torch.int32)), "processed_out"
        return got, out.cpu()
    return got, None


def torch_processed(logits, temperature, dtype):
    """transformers' processed logits: ``logits / T`` with T a float32 0-d tensor."""
    t = temperature if isinstance(temperature, torch.Tensor) else torch.tensor(temperature, dtype=torch.float32)
    return (logits / t).to(dtype)


SHAPES = [(1,), (50,), (1, 1), (3, 1), (1, 7), (5, 37), (2, 3, 1000), (13, 2049), (1, 4101), (2, 2, 3, 77)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("out", ["none", "same", "other"])
def test_matches_reference(backend, shape, dtype, out):
    if len(shape) > 1:
        shape = (*shape[:-2], backend.cap(shape[-2], 4), shape[-1])  # interpreter: rows
    logits = random_logits(shape, dtype)
    out_dtype = {"none": None, "same": dtype, "other": torch.bfloat16 if dtype != torch.bfloat16 else torch.float16}
    run(backend, logits, 0.7, out_dtype=out_dtype[out], seed=1234, offset=9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [0.4083333, 1.0, 2.5, 1e-3])
def test_token_and_entropy_are_token_stats_tempered(backend, dtype, T):
    logits = random_logits((backend.cap(6, 3), 700), dtype)
    logits[0, 3] = -math.inf
    for seed, offset in ((0, 0), (7, 3), (2**40 + 5, 2**33 + 1)):
        ours = backend.call("denoise_stats", logits, T, seed=seed, offset=offset)
        ts = backend.call("token_stats", logits, temperature=T, seed=seed, offset=offset, tempered_scores=True)
        assert torch.equal(ours.token.cpu(), ts.token.cpu())
        assert torch.equal(ours.entropy.cpu(), ts.entropy.cpu())  # the same code on each backend
        ref = token_stats_reference(logits, temperature=T, seed=seed, offset=offset, tempered_scores=True)
        assert torch.equal(ours.token.cpu(), ref.token)  # and so the same tokens on every backend


# DiffusionGemma's schedule: T = t_min + (t_max - t_min) * (step / N) as a float32 0-d tensor.
SCHEDULE = [torch.tensor(0.4) + (torch.tensor(0.8) - torch.tensor(0.4)) * (torch.tensor(s, dtype=torch.int32) / 48)
            for s in (1, 7, 29, 48)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_argmax_and_processed_out_are_torchs(backend, dtype, out_dtype):
    # Near-ties that x * float32(1 / T) would break differently from x / T:
    # adjacent float32 values in [0.5, 1) and exact ties (the first index wins).
    rows = backend.cap(8, 4)
    base = torch.rand(rows, 300) * 0.5 + 0.5
    logits = base.clone()
    top = torch.nextafter(torch.tensor(0.99), torch.tensor(1.0))
    logits[:, 40] = top
    logits[:, 41] = torch.nextafter(top, torch.tensor(2.0))  # one ulp above
    logits[:, 250] = logits[:, 41]  # an exact tie later in the row
    logits[0, :] = 0.75  # all equal: index 0
    logits[1, 7] = -math.inf
    logits = logits.to(dtype)
    for i, T in enumerate(SCHEDULE):
        for temperature in (T, float(T)):
            got, out = run(backend, logits, temperature, out_dtype=out_dtype, seed=i, offset=3)
            z = torch_processed(logits, T, dtype)
            assert torch.equal(got.argmax, torch.argmax(z, -1))
            assert torch.equal(out.view(torch.int16 if out.element_size() == 2 else torch.int32),
                               z.to(out_dtype).view(torch.int16 if out.element_size() == 2 else torch.int32))


def test_division_is_not_a_multiplication(backend):
    # x / T and x * float32(1 / T) differ by an ulp for some x: argmax and
    # processed_out must follow the division (the sampler keeps the multiply).
    T = torch.tensor(0.7)
    x = torch.rand(4000) + 0.5
    differ = (x / T) != (x * float(torch.tensor(1 / 0.7, dtype=torch.float32)))
    assert differ.any()
    logits = x[differ][: backend.cap(64, 32)].reshape(1, -1)
    got, out = run(backend, logits, T, out_dtype=torch.float32, seed=1)
    assert torch.equal(out, logits / T)


def test_rows_without_a_distribution(backend):
    T = 0.6
    logits = random_logits((6, 100))
    logits[0, 5] = math.nan
    logits[1, 99] = math.inf
    logits[2, :] = -math.inf
    logits[3, ::3] = -math.inf  # fine: -inf entries
    logits[4, :] = math.nan
    logits[5, 0] = 3e38  # x / T overflows float32: no representable distribution
    got, out = run(backend, logits, T, out_dtype=torch.float32, seed=5)
    assert got.token[:3].tolist() == [-1, -1, -1] and got.argmax[:3].tolist() == [-1, -1, -1]
    assert got.token[4] == -1 and got.argmax[4] == -1 and got.token[5] == -1 and got.argmax[5] == -1
    assert torch.isnan(got.entropy[[0, 1, 2, 4, 5]]).all()
    assert got.token[3] >= 0 and got.token[3] % 3 != 0 and got.argmax[3] % 3 != 0
    # processed_out is written on every row, even those without a distribution.
    want = torch_processed(logits, T, torch.float32)
    assert torch.equal(out.view(torch.int32), want.view(torch.int32))


def test_frozen_rows_are_skipped_and_left_untouched(backend):
    logits = random_logits((3, 4, 90), torch.bfloat16)
    frozen = torch.rand(3, 4) < 0.5
    frozen[0, 0], frozen[0, 1] = True, False
    logits[0, 0, 3] = math.nan  # frozen: no error, no NaN outputs
    init = torch.randn(3, 4, 90)
    got, out = run(backend, logits, 0.9, out_dtype=torch.float32, out_init=init, frozen=frozen, seed=8)
    assert (got.token[frozen] == -1).all() and (got.argmax[frozen] == -1).all()
    assert (got.entropy[frozen] == math.inf).all()
    assert (got.token[~frozen] >= 0).all()
    assert torch.equal(out[frozen], init[frozen])  # untouched, bit for bit
    assert torch.equal(out[~frozen], torch_processed(logits, 0.9, torch.float32)[~frozen])
    # Whole batch rows frozen through an expand()ed [B, 1] mask (a finished-rows flag).
    finished = torch.tensor([True, False, True])
    got, out = run(backend, logits, 0.9, out_dtype=torch.bfloat16, out_init=init, frozen=finished[:, None].expand(3, 4),
                   seed=8)
    assert (got.token[finished] == -1).all() and (got.token[~finished] >= 0).all()
    assert torch.equal(out[finished], init.bfloat16()[finished])


def test_every_output_element_is_written(backend):
    # Fresh outputs are poisoned (DMKERNELS_POISON_OUTPUTS, tests/conftest.py); a
    # processed_out full of NaN must come back with no NaN where rows are live.
    logits = random_logits((backend.cap(7, 3), 5, 33))
    out = backend.to(torch.full(logits.shape, math.nan))
    got = backend.call("denoise_stats", logits, 1.3, seed=3, processed_out=out)
    assert not torch.isnan(out.cpu()).any()
    assert (got.token.cpu() >= 0).all() and (got.argmax.cpu() >= 0).all()
    assert torch.isfinite(got.entropy.cpu()).all()
    every = backend.call("denoise_stats", logits, 1.3, seed=3, frozen=backend.to(torch.ones(logits.shape[:-1],
                                                                                            dtype=torch.bool)))
    assert (every.token.cpu() == -1).all() and (every.argmax.cpu() == -1).all()
    assert (every.entropy.cpu() == math.inf).all()


def test_temperature_tensor_and_float_draw_the_same_tokens(backend):
    logits = random_logits((backend.cap(5, 3), 260))
    T = torch.tensor(0.55)
    a, out_a = run(backend, logits, backend.to(T), out_dtype=torch.bfloat16, seed=21, offset=4)
    b, out_b = run(backend, logits, float(T), out_dtype=torch.bfloat16, seed=21, offset=4)
    assert torch.equal(a.token, b.token) and torch.equal(a.argmax, b.argmax) and torch.equal(out_a, out_b)
    assert torch.equal(a.entropy, b.entropy)


def test_temperature_python_float_keeps_its_double_for_the_sampler(backend):
    # inv_t = float32(1 / float64(T)): the token is token_stats' for the same T
    # even where float32(T) would give another inv_t.
    T = 0.1 + 2**-40
    logits = random_logits((backend.cap(6, 3), 64))
    got, _ = run(backend, logits, T, seed=2, offset=1)
    assert torch.equal(got.token, token_stats_reference(logits, temperature=T, seed=2, offset=1,
                                                        tempered_scores=True).token)


def test_non_contiguous_inputs(backend):
    big = random_logits((4, 6, 80), torch.float16)
    logits = big[::2, 1::2, :]  # strided leading dims, unit stride on V
    out_big = torch.zeros(6, 4, 80)
    out = out_big.transpose(0, 1)[:2, :3]  # another layout, unit stride on V
    ours = backend.call("denoise_stats", logits, 0.8, seed=4, processed_out=backend.to(out))
    ref_out = torch.zeros(2, 3, 80)
    ref = denoise_stats_reference(logits.contiguous(), 0.8, seed=4, processed_out=ref_out)
    assert torch.equal(ours.token.cpu(), ref.token) and torch.equal(ours.argmax.cpu(), ref.argmax)
    if backend.device == "cpu":  # the view itself was written
        assert torch.equal(out, ref_out)
        assert (out_big.transpose(0, 1)[2:] == 0).all()


def test_empty_and_one_dimensional_logits(backend):
    got = backend.call("denoise_stats", torch.randn(0, 5), 1.0, seed=0)
    assert got.token.shape == (0,) and got.argmax.shape == (0,) and got.entropy.shape == (0,)
    logits = torch.tensor([0.5, 3.0, 3.0, -1.0])
    got, out = run(backend, logits, 0.5, out_dtype=torch.float32, seed=1)
    assert got.argmax.shape == () and int(got.argmax) == 1


def test_f16_overflow_of_the_quotient_is_torchs_argmax(backend):
    # bf16 / fp16 rounding of x / T may overflow to +inf: argmax is the first +inf.
    logits = torch.tensor([[100.0, 200.0, 300.0, 250.0]], dtype=torch.float16)
    got, out = run(backend, logits, 1e-3, out_dtype=torch.float16, seed=0)
    z = torch_processed(logits, 1e-3, torch.float16)
    assert torch.isinf(z).sum() >= 2 and int(got.argmax[0]) == int(torch.argmax(z, -1)[0]) == 0
    assert int(got.token[0]) == 2  # the sampler sees x * inv_t in float32: 300 dominates


def test_rng_tensor_overrides_seed_and_offset(backend):
    logits = random_logits((3, 150), scale=0.5)
    rng = backend.to(torch.tensor([2**40 + 77, 3]))
    a, _ = run(backend, logits, 1.0, rng=rng)
    b = backend.call("denoise_stats", logits, 1.0, seed=2**40 + 77, offset=3)
    assert torch.equal(a.token, b.token.cpu())
    rng[1] += 1  # in place, as a graph replay loop does
    c, _ = run(backend, logits, 1.0, rng=rng)
    assert not torch.equal(a.token, c.token)


def test_seed_none_follows_torch_manual_seed(backend):
    logits = random_logits((8, 200), scale=0.3)
    torch.manual_seed(5)
    a = backend.call("denoise_stats", logits, 1.0).token
    torch.manual_seed(5)
    b = backend.call("denoise_stats", logits, 1.0).token
    assert torch.equal(a, b)


@pytest.mark.parametrize("T", [1.0, 0.45])
def test_frequencies_match_the_tempered_softmax(backend, T):
    # n independent draws (one per row) from softmax(x / T); chi-squared at
    # p = 1e-4 (critical value for 6 degrees of freedom: 27.86).
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.7])
    n = backend.cap(40000, 600)  # the interpreter pays per row
    token = backend.call("denoise_stats", row.expand(n, -1), T, seed=2024).token.cpu()
    expected = torch.softmax(row.double() / T, -1) * n
    observed = torch.bincount(token, minlength=7).double()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 27.86, (chi2, observed.tolist(), expected.tolist())


def test_large_vocabulary_many_chunks(backend, tiles):
    tiles(block_v=256, splits=3)  # Triton: several tiles and vocabulary splits
    logits = random_logits((backend.cap(4, 3), 5000), torch.bfloat16)
    logits[0, -3] = 40.0
    logits[1, 2047] = 40.0
    logits[1, 4000] = 40.0  # a tie across chunks: the first wins the argmax
    run(backend, logits, 0.8, out_dtype=torch.bfloat16, seed=7)


BAD = [
    ("temperature 0", dict(temperature=0.0), ValueError, ["temperature", "2**-100"]),
    ("temperature < 0", dict(temperature=-0.5), ValueError, ["temperature"]),
    ("temperature NaN", dict(temperature=math.nan), ValueError, ["temperature"]),
    ("temperature str", dict(temperature="hot"), TypeError, ["temperature"]),
    ("temperature tensor 0", dict(temperature=torch.tensor(0.0)), ValueError, ["temperature"]),
    ("temperature tensor float64", dict(temperature=torch.tensor(0.5, dtype=torch.float64)), TypeError,
     ["temperature", "float32"]),
    ("temperature tensor 1-d", dict(temperature=torch.tensor([0.5])), ValueError, ["temperature", "shape"]),
    ("temperature tensor device", dict(temperature=torch.tensor(0.5, device="meta")), ValueError,
     ["temperature", "meta"]),
    ("seed < 0", dict(seed=-1), ValueError, ["seed"]),
    ("processed_out shape", dict(processed_out=torch.zeros(2, 3, 10)), ValueError, ["processed_out", "shape"]),
    ("processed_out dtype", dict(processed_out=torch.zeros(2, 3, 11, dtype=torch.float64)), TypeError,
     ["processed_out", "float64"]),
    ("frozen dtype", dict(frozen=torch.zeros(2, 3)), TypeError, ["frozen", "bool"]),
    ("frozen shape", dict(frozen=torch.zeros(2, 3, 11, dtype=torch.bool)), ValueError, ["frozen", "shape"]),
]


@pytest.mark.parametrize("name,kw,error,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(backend, name, kw, error, words):
    kw = dict(kw)
    temperature = kw.pop("temperature", 1.0)
    if backend.device != "cpu" and isinstance(temperature, torch.Tensor) and temperature.device.type == "cpu" \
            and temperature.dim() == 0 and temperature.dtype == torch.float32:
        pytest.skip("a GPU tensor's value is not read on the host")
    with pytest.raises(error) as info:
        backend.call("denoise_stats", torch.randn(2, 3, 11), temperature, **{"seed": 0, **kw})
    for word in ["dmkernels.denoise_stats", *words]:
        assert word in str(info.value), (word, str(info.value))
