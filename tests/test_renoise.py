"""renoise_ (DiffusionGemma's canvas re-noising) on every backend against its
reference and against the stream's spec (csrc/common/noise.h, "Re-noising"):
frozen rows untouched, accepted positions get their sample, every other
position a uniform token in [0, V) that is a pure function of (seed, offset,
b * L + l), the same on every backend."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import dmkernels
from dmkernels.reference import noise as ref_noise
from dmkernels.reference import renoise_reference

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "common" / "noise.h"
INT_PAIRS = [(torch.int64, torch.int64), (torch.int32, torch.int64), (torch.int64, torch.int32),
             (torch.int32, torch.int32)]


def run_both(backend, canvas, sample, accept, vocab, frozen=None, seed=0, offset=0, rng=None):
    """The backend's raw op on its device and the reference on a CPU copy:
    ((canvas, noised), (canvas, noised)), all on the CPU."""
    want_canvas = canvas.clone()
    want = renoise_reference(want_canvas, sample, accept, frozen, vocab, seed, offset)
    got_canvas = backend.to(canvas.clone())
    rng_arg = (backend.to(rng),) if rng is not None else ()
    got = backend.raw("renoise_", got_canvas, sample, accept, frozen, vocab, seed, offset, *rng_arg)
    assert got.dtype == torch.int64 and got.shape == (canvas.shape[0],)
    return (got_canvas.cpu(), got.cpu()), (want_canvas, want)


def inputs(B, L, canvas_dtype=torch.int64, sample_dtype=torch.int64, vocab=50, p_accept=0.4):
    canvas = torch.randint(0, vocab, (B, L), dtype=canvas_dtype)
    sample = torch.randint(0, vocab, (B, L), dtype=sample_dtype)
    accept = torch.rand(B, L) < p_accept
    return canvas, sample, accept


# ---------------------------------------------------------------------------
# The spec, written out independently with Python ints.
# ---------------------------------------------------------------------------


def philox_py(c, k):
    c, k = list(c), list(k)
    M = 0xFFFFFFFF
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & M, p1 & M, ((p0 >> 32) ^ c[3] ^ k[1]) & M, p0 & M]
        k = [(k[0] + 0x9E3779B9) & M, (k[1] + 0xBB67AE85) & M]
    return c


def spec_token(seed: int, offset: int, flat: int, vocab: int) -> int:
    """noise.h's "Re-noising" paragraph, with Python ints."""
    pair = flat // 2
    words = philox_py([0x40000000 | (pair & 0x3FFFFFFF), pair >> 30, offset & 0xFFFFFFFF, offset >> 32],
                      [seed & 0xFFFFFFFF, seed >> 32])
    bits = words[2 * (flat % 2)] | (words[2 * (flat % 2) + 1] << 32)
    return (bits * vocab) >> 64


@pytest.mark.parametrize("seed,offset,vocab", [(0, 0, 262144), (7, 3, 2**31), (2**63 - 1, 2**63 - 1, 2**63 - 1),
                                               (2**40 + 5, 2**33 + 1, 1), (123, 9, 3)])
def test_reference_is_the_spec(seed, offset, vocab):
    # Flat indices around the word-1 carry (pair 2**30) and the first pairs.
    flat = torch.tensor([0, 1, 2, 3, 4, 5, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**40 + 3, 2**62 + 7])
    got = ref_noise.uniform_tokens(seed, offset, flat, vocab).tolist()
    assert got == [spec_token(seed, offset, int(f), vocab) for f in flat]
    assert all(0 <= t < vocab for t in got)


def test_the_stream_cannot_collide_with_token_stats_noise():
    # Counter word 0 of the three streams: element blocks (< 2**22 for V <= 2**24),
    # group blocks (bit 31 set), renoise blocks (bit 30 set, bit 31 clear).
    header = HEADER.read_text()
    consts = dict(re.findall(r"constexpr\s+uint32_t\s+(kRenoise\w+|kGroupStream)\s*=\s*(0x[0-9A-Fa-f]+)u;", header))
    stream, mask, group = (int(consts[n], 16) for n in ("kRenoiseStream", "kRenoisePairMask", "kGroupStream"))
    assert (stream, mask, group) == (ref_noise.RENOISE_STREAM, ref_noise.RENOISE_PAIR_MASK, ref_noise.GROUP_STREAM)
    largest_element_block = ((2**24 - 1) // 32) * 8 + 7
    assert largest_element_block < stream and (stream | mask) < group and stream & group == 0 and stream & mask == 0
    tri = pytest.importorskip("dmkernels.triton.renoise", reason="triton is not installed")
    assert (tri.RENOISE_STREAM.value, tri.RENOISE_PAIR_MASK.value) == (stream, mask)


# ---------------------------------------------------------------------------
# Against the reference on every backend.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("canvas_dtype,sample_dtype", INT_PAIRS, ids=str)
@pytest.mark.parametrize("B,L", [(1, 1), (1, 9), (3, 1), (3, 5), (5, 77), (4, 300), (2, 1030)])
def test_matches_reference(backend, B, L, canvas_dtype, sample_dtype):
    # B * L = 1, 9, 3, 15, 385, ... : odd and not multiples of 4, so a row starts
    # and ends mid-pair of the two-positions-per-Philox-call layout.
    canvas, sample, accept = inputs(B, L, canvas_dtype, sample_dtype)
    frozen = torch.rand(B) < 0.3
    if B > 1:
        frozen[0], frozen[1] = True, False
        if B > 2:
            frozen[2] = False
        accept[1] = False  # a row drawn entirely
    if B > 2:
        accept[2] = True  # a row accepted entirely
    for f in (None, frozen):
        ours, expected = run_both(backend, canvas, sample, accept, 50, f, seed=11, offset=4)
        assert torch.equal(ours[0], expected[0]) and torch.equal(ours[1], expected[1])
    if B > 1:
        assert torch.equal(ours[0][0], canvas[0]) and ours[1][0] == 0  # frozen: untouched, nothing drawn
        assert ours[1][1] == L
    if B > 2:
        assert torch.equal(ours[0][2], sample[2].to(canvas_dtype)) and ours[1][2] == 0


@pytest.mark.parametrize("seed,offset", [(0, 0), (1, 2**32 + 1), (2**63 - 1, 2**63 - 1), (2**32, 7)])
def test_same_tokens_for_large_seeds_and_offsets(backend, seed, offset):
    canvas, sample, accept = inputs(3, 13)
    ours, expected = run_both(backend, canvas, sample, accept, 1000, seed=seed, offset=offset)
    assert torch.equal(ours[0], expected[0])
    flat = torch.arange(3 * 13).reshape(3, 13)
    drawn = ~accept
    assert ours[0][drawn].tolist() == [spec_token(seed, offset, int(f), 1000) for f in flat[drawn]]


def test_rng_tensor_gives_the_ints_tokens(backend):
    canvas, sample, accept = inputs(4, 11)
    frozen = torch.tensor([False, True, False, False])
    for seed, offset in ((5, 9), (2**62 + 1, 2**40)):
        by_ints = backend.call("renoise_", canvas.clone(), sample, accept, 77, frozen=frozen, seed=seed,
                               offset=offset).cpu()
        by_rng = backend.call("renoise_", canvas.clone(), sample, accept, 77, frozen=frozen,
                              rng=torch.tensor([seed, offset])).cpu()
        # rng wins over seed / offset when both are given.
        by_both = backend.call("renoise_", canvas.clone(), sample, accept, 77, frozen=frozen, seed=3, offset=1,
                               rng=torch.tensor([seed, offset])).cpu()
        assert torch.equal(by_ints, by_rng) and torch.equal(by_ints, by_both)
        want = canvas.clone()
        renoise_reference(want, sample, accept, frozen, 77, seed, offset)
        assert torch.equal(by_ints, want)


def test_returns_the_canvas_in_place(backend):
    canvas, sample, accept = inputs(2, 6)
    x = backend.to(canvas.clone())
    out = backend.call("renoise_", x, sample, accept, 50, seed=1)
    assert out is x


def test_tokens_are_a_function_of_the_flat_index_only(backend):
    # The same 60 positions as [1, 60], [4, 15] and [5, 12]: the same tokens at the
    # same flat index, whatever the row length and whatever the other positions do.
    V, seed, offset = 1 << 20, 42, 5
    flats = []
    for B, L in ((1, 60), (4, 15), (5, 12)):
        canvas = torch.zeros(B, L, dtype=torch.int64)
        accept = (torch.rand(B, L) < 0.5)
        x = backend.call("renoise_", canvas.clone(), torch.full((B, L), -3), accept, V, seed=seed, offset=offset).cpu()
        drawn = (~accept).flatten()
        flats.append((x.flatten(), drawn))
        assert (x.flatten()[~drawn] == -3).all()  # accepted: the sample, never a random token
    full = torch.tensor([spec_token(seed, offset, f, V) for f in range(60)])
    for x, drawn in flats:
        assert torch.equal(x[drawn], full[drawn])


def test_seed_and_offset_change_the_tokens(backend):
    canvas, sample = torch.zeros(4, 64, dtype=torch.int64), torch.zeros(4, 64, dtype=torch.int64)
    none = torch.zeros(4, 64, dtype=torch.bool)
    base = backend.call("renoise_", canvas.clone(), sample, none, 2**30, seed=1, offset=0).cpu()
    for kw in (dict(seed=2, offset=0), dict(seed=1, offset=1), dict(seed=1 + 2**32, offset=0),
               dict(seed=1, offset=2**32)):
        other = backend.call("renoise_", canvas.clone(), sample, none, 2**30, **kw).cpu()
        assert (other != base).float().mean() > 0.99, kw


# ---------------------------------------------------------------------------
# Distribution and range.
# ---------------------------------------------------------------------------


def chi_square_p(counts: torch.Tensor) -> float:
    """p-value of a chi-square test of uniform counts."""
    n, k = counts.sum().item(), counts.numel()
    expected = n / k
    chi2 = ((counts.double() - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((k - 1) / 2, dtype=torch.float64), chi2 / 2))


@pytest.mark.parametrize("vocab", [2, 3, 7, 10])
def test_tokens_are_uniform(backend, vocab):
    # Many positions of one call, and one position over many offsets.
    B, L = backend.cap(64, 16), 250
    canvas = torch.zeros(B, L, dtype=torch.int64)
    none = torch.zeros(B, L, dtype=torch.bool)
    x = backend.call("renoise_", canvas, canvas.clone(), none, vocab, seed=9, offset=0).cpu()
    counts = torch.bincount(x.flatten(), minlength=vocab)
    assert counts.numel() == vocab and chi_square_p(counts) > 1e-6, counts
    # Successive cells of a pair (words 0-1 and 2-3 of one call) are independent:
    # the joint counts of (even, odd) neighbours are uniform over vocab**2 cells.
    pairs = x.flatten()[: (B * L) // 2 * 2].reshape(-1, 2)
    joint = torch.bincount(pairs[:, 0] * vocab + pairs[:, 1], minlength=vocab * vocab)
    assert chi_square_p(joint) > 1e-6, joint


def test_the_uniformity_test_can_fail():
    # The statistic above rejects counts skewed by 3% at this size (a biased mapping),
    # and accepts exact ones.
    counts = torch.tensor([1030.0 * 16, 970.0 * 16, 1000.0 * 16])
    assert chi_square_p(counts) < 1e-6 and chi_square_p(torch.tensor([1000.0, 1000.0, 1000.0])) > 0.99


@pytest.mark.parametrize("canvas_dtype,vocab", [(torch.int32, 1), (torch.int64, 1), (torch.int32, 2**31),
                                                (torch.int32, 2**31 - 1), (torch.int64, 2**31 + 1),
                                                (torch.int64, 2**63 - 1), (torch.int64, 3 * 2**61 + 5)])
def test_tokens_stay_in_range(backend, canvas_dtype, vocab):
    B, L = backend.cap(16, 4), 129
    canvas = torch.full((B, L), -5, dtype=canvas_dtype)
    none = torch.zeros(B, L, dtype=torch.bool)
    ours, expected = run_both(backend, canvas, canvas.clone(), none, vocab, seed=3, offset=1)
    x = ours[0].long()
    assert torch.equal(ours[0], expected[0]) and (ours[1] == L).all()
    assert x.min() >= 0 and x.max() < vocab
    if vocab == 1:
        assert (x == 0).all()
    else:
        # The whole range is reached: the top eighth and the bottom eighth both occur.
        assert (x >= vocab - vocab // 8).any() and (x < vocab // 8).any()


# ---------------------------------------------------------------------------
# Semantics, layouts, edge shapes.
# ---------------------------------------------------------------------------


def test_accepted_positions_are_never_random_and_frozen_rows_never_change(backend):
    B, L = 6, 37
    canvas, sample, _ = inputs(B, L, vocab=1000)
    everything = torch.ones(B, L, dtype=torch.bool)
    x = backend.call("renoise_", canvas.clone(), sample, everything, 1000, seed=4).cpu()
    assert torch.equal(x, sample)
    frozen_all = torch.ones(B, dtype=torch.bool)
    x = backend.call("renoise_", canvas.clone(), sample, torch.rand(B, L) < 0.5, 1000, frozen=frozen_all,
                     seed=4).cpu()
    assert torch.equal(x, canvas)
    # Out-of-vocabulary samples (token_stats' -1, or anything) are written as given.
    odd = torch.full((B, L), -1)
    odd[:, 1] = 5000
    x = backend.call("renoise_", canvas.clone(), odd, everything, 1000, seed=4).cpu()
    assert torch.equal(x, odd)


def test_writes_through_strided_views(backend):
    # The canvas is a block of a larger [B, 40] canvas; sample column-major; accept a
    # slice; frozen a strided view. Nothing outside the block changes.
    B = 5
    full = torch.randint(0, 30, (B, 40))
    sample = torch.randint(0, 30, (17, B)).t()
    accept = (torch.rand(B, 34) < 0.5)[:, ::2]
    frozen = (torch.tensor([False, True, False, False, True, False, False, False, True, False]))[::2]
    want = full.clone()
    renoise_reference(want[:, 8:25], sample, accept, frozen, 30, 6, 2)
    got = backend.to(full.clone())
    backend.call("renoise_", got[:, 8:25], sample, accept, 30, frozen=frozen, seed=6, offset=2)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(got.cpu()[:, :8], full[:, :8]) and torch.equal(got.cpu()[:, 25:], full[:, 25:])


@pytest.mark.parametrize("B,L", [(0, 5), (3, 0), (0, 0)])
def test_empty_shapes(backend, B, L):
    canvas, sample, accept = inputs(B, L)
    ours, expected = run_both(backend, canvas, sample, accept, 10, torch.zeros(B, dtype=torch.bool), seed=1)
    assert ours[0].shape == (B, L) and torch.equal(ours[1], expected[1]) and (ours[1] == 0).all()


def test_int64_samples_into_an_int32_canvas(backend):
    canvas = torch.zeros(2, 3, dtype=torch.int32)
    sample = torch.tensor([[2**31 - 1, 5, 2**31], [2**31, 2**40, 1]])
    accept = torch.tensor([[True, True, False], [True, True, True]])
    if backend.device == "cpu":
        # A written sample that does not fit is refused before anything is written.
        with pytest.raises(ValueError, match=r"dmkernels.renoise_: sample\[1, 0\]"):
            backend.call("renoise_", canvas, sample, accept, 10, seed=1)
        assert (canvas == 0).all()
    # In a frozen row, or where not accepted, it is not written, so not refused.
    x = backend.call("renoise_", canvas.clone(), sample, accept, 10, frozen=torch.tensor([False, True]), seed=1).cpu()
    assert x[0, :2].tolist() == [2**31 - 1, 5] and 0 <= x[0, 2] < 10 and (x[1] == 0).all()


def test_seed_none_draws_from_torch_generator(backend):
    canvas, sample, accept = inputs(3, 20, vocab=2**20)
    torch.manual_seed(5)
    a = backend.call("renoise_", canvas.clone(), sample, accept, 2**20).cpu()
    torch.manual_seed(5)
    b = backend.call("renoise_", canvas.clone(), sample, accept, 2**20).cpu()
    c = backend.call("renoise_", canvas.clone(), sample, accept, 2**20).cpu()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_host_sync_inside_a_step(backend):
    from dmkernels.testing import forbid_host_sync, step_scope

    canvas, sample, accept = (backend.to(t) for t in inputs(2, 9))
    frozen = backend.to(torch.tensor([False, True]))
    rng = backend.to(torch.tensor([3, 1]))
    want = canvas.cpu().clone()
    renoise_reference(want, sample.cpu(), accept.cpu(), frozen.cpu(), 50, 3, 1)
    x, y = canvas.clone(), canvas.clone()
    with forbid_host_sync(), step_scope():
        dmkernels.renoise_(x, sample, accept, 50, frozen=frozen, seed=3, offset=1, backend=backend.name)
        if backend.device != "cpu":  # a CPU rng is read on the host by the checks (free there, as token_stats')
            dmkernels.renoise_(y, sample, accept, 50, frozen=frozen, rng=rng, backend=backend.name)
    if backend.device == "cpu":
        dmkernels.renoise_(y, sample, accept, 50, frozen=frozen, rng=rng, backend=backend.name)
    assert torch.equal(x.cpu(), want) and torch.equal(y.cpu(), want)


def test_a_step_with_renoise_compiles_fullgraph_and_matches_eager():
    def step(x, sample, accept, frozen, rng):
        dmkernels.renoise_(x, sample, accept, 1000, frozen=frozen, rng=rng)
        return dmkernels.renoise_(x.clone(), sample, ~accept, 1000, seed=5, offset=2) + 1

    torch._dynamo.reset()
    canvas, sample, accept = inputs(3, 17, vocab=1000)
    frozen, rng = torch.tensor([False, True, False]), torch.tensor([8, 3])
    x_eager, x_comp = canvas.clone(), canvas.clone()
    eager = step(x_eager, sample, accept, frozen, rng)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x_comp, sample, accept, frozen, rng)
    assert torch.equal(x_eager, x_comp) and torch.equal(eager, compiled) and not torch.equal(x_eager, canvas)


@pytest.mark.parametrize("call,error,words", [
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 1.5), TypeError, ["vocab_size", "int"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 0), ValueError, ["vocab_size", ">= 1"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, True), TypeError, ["vocab_size"]),
    (lambda b, c, s, a: b.call("renoise_", c.tolist(), s, a, 10), TypeError, ["canvas", "Tensor"]),
    (lambda b, c, s, a: b.call("renoise_", c, s.tolist(), a, 10), TypeError, ["sample", "Tensor"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 10, seed=1.0), TypeError, ["seed"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 10, offset=-1), ValueError, ["offset"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a.to("meta"), 10, seed=0), ValueError, ["accept", "meta"]),
    (lambda b, c, s, a: b.call("renoise_", c, s.to("meta"), a, 10, seed=0), ValueError, ["sample", "meta"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 10, frozen=torch.zeros(2, dtype=torch.bool, device="meta"),
                               seed=0), ValueError, ["frozen", "meta"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 10, rng=torch.tensor([1, 2], device="meta")), ValueError,
     ["rng", "meta"]),
    (lambda b, c, s, a: b.call("renoise_", c, s, a, 10, frozen=torch.zeros(3, dtype=torch.bool), seed=0),
     ValueError, ["frozen", "shape"]),
    (lambda b, c, s, a: b.call("renoise_", c.int(), s, a, 2**31 + 1, seed=0), ValueError, ["vocab_size", "int32"]),
])
def test_public_api_names_the_argument(backend, call, error, words):
    canvas, sample, accept = inputs(2, 5)
    with pytest.raises(error) as info:
        call(backend, canvas, sample, accept)
    assert type(info.value) is error
    for word in ["dmkernels.renoise_", *words]:
        assert word in str(info.value), (word, str(info.value))
