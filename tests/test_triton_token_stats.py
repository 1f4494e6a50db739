"""The Triton token_stats (dmkernels/triton/token_stats.py) against the reference.

Without a GPU the kernels run under the Triton interpreter on CPU tensors, so the
shapes stay small; tiles and vocabulary splits are forced small where a test needs
several of them.
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

from dmkernels import _extension  # noqa: E402
from dmkernels.reference import token_stats_reference  # noqa: E402
from dmkernels.reference.noise import gumbel_noise as reference_noise  # noqa: E402
from dmkernels.triton import noise as triton_noise  # noqa: E402
from dmkernels.triton import token_stats as triton_token_stats  # noqa: E402

from helpers import random_logits  # noqa: E402

# inf - inf in rows without a distribution: numpy warns under the interpreter.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"
TOL = dict(rtol=2e-5, atol=2e-6)
op = torch.ops.dmkernels_triton.token_stats


def run(logits, temperature=0.0, seed=0, offset=0, tempered_scores=False, positions=None, *rng):
    return op(logits, temperature, seed, offset, tempered_scores, positions, *rng)


def assert_matches(ours, ref):
    token, confidence, margin, entropy = ours
    assert token.dtype == torch.int64 and token.shape == ref.token.shape
    torch.testing.assert_close(token.cpu(), ref.token.cpu(), rtol=0, atol=0)
    for name, a in (("confidence", confidence), ("margin", margin), ("entropy", entropy)):
        b = getattr(ref, name)
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b.cpu(), equal_nan=True, msg=lambda m: f"{name}: {m}", **TOL)


def check(logits, **kw):
    ours = run(logits, **kw)
    assert_matches(ours, token_stats_reference(logits.contiguous(), **kw))
    return ours


def test_noise_is_bit_identical_to_the_reference():
    for seed, offset, rows, V in [(0, 0, 2, 100), (2**40 + 7, 2**33 + 5, 3, 77), (2**63 - 1, 2**63 - 1, 1, 64)]:
        ours = triton_noise.gumbel_noise(seed, offset, rows, V, device=DEVICE).cpu()
        ref = reference_noise(seed, offset, torch.arange(rows), V)
        assert torch.equal(ours.view(torch.int32), ref.view(torch.int32)), (seed, offset)


# (shape, dtype): V = 1, one row, several tiles (V > 1024), a split vocabulary
# (one row, V = 3001: 3 splits of 1024 under the interpreter), 4-d leading dims.
CASES = [
    ((1, 1), torch.float32),
    ((3, 1), torch.bfloat16),
    ((1, 7), torch.float16),
    ((5, 2), torch.float32),
    ((2, 3, 100), torch.bfloat16),
    ((3, 2500), torch.float16),
    ((1, 3001), torch.bfloat16),
    ((1, 3001), torch.float32),
    ((2, 2, 3, 77), torch.float16),
]
MODES = [(0.0, False), (1.0, False), (0.7, True), (2.5, False)]


@pytest.mark.parametrize("shape,dtype", CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in CASES])
@pytest.mark.parametrize("temperature,tempered", MODES)
def test_matches_reference(shape, dtype, temperature, tempered):
    logits = random_logits(shape, dtype).to(DEVICE)
    check(logits, temperature=temperature, seed=1234, offset=9, tempered_scores=tempered)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_logits_in_every_dtype(dtype):
    # Large magnitudes (bf16/fp16 rounding of x / T, exp of wide ranges).
    logits = random_logits((3, 600), dtype, scale=20.0).to(DEVICE)
    for temperature, tempered in ((0.0, False), (0.3, True)):
        check(logits, temperature=temperature, seed=77, tempered_scores=tempered)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_finite_logits_whose_differences_overflow(tiles, splits, temperature):
    # 2e38 - (-2e38) is -inf in float32: within a tile, across tiles (the running
    # rescale) and across splits (the merge). Entropy was 0 (NaN clamped), not ln 2.
    tiles(block_v=32, splits=splits)
    logits = torch.full((3, 96), -math.inf)
    logits[0, :3] = torch.tensor([2e38, -2e38, 2e38])
    logits[1, [0, 40, 90]] = torch.tensor([-2e38, 2e38, 2e38])  # the maximum grows by inf after tile 0
    logits[2, [5, 70]] = torch.tensor([-3e38, 3e38])  # x / T overflows: still the larger one
    ours = check(logits.to(DEVICE), temperature=temperature, seed=9)
    torch.testing.assert_close(ours[3].cpu(), torch.tensor([math.log(2), math.log(2), 0.0]))
    assert ours[0][2] == 70


@pytest.mark.parametrize("splits", [3, 8])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_split_vocabulary_merge(tiles, splits, temperature):
    # 64-column tiles: a 300-column row has 5 tiles spread over the splits.
    tiles(block_v=64, splits=splits)
    logits = random_logits((6, 300)).to(DEVICE)
    logits[0, 299] = 30.0  # maximum in the last column of the last split
    logits[1, [40, 250]] = 25.0  # tied maxima in different splits: margin 0
    logits[2, :128] = -math.inf  # whole splits of -inf
    logits[3, 100:] = -math.inf
    logits[4, 63:65] = 25.0  # a tie across a tile boundary
    # x + g rounds to multiples of 2 at 2^24: sampled values tie in and across splits.
    logits[5] = 2.0**24
    ours = check(logits, temperature=temperature, seed=5, offset=2)
    if temperature == 0:
        assert ours[0][[0, 1, 4]].tolist() == [299, 40, 63]
        assert ours[2][1] == 0 and ours[2][4] == 0


def test_split_plan_covers_the_vocabulary():
    cpu = torch.device("cpu")
    for rows, V in [(1, 1), (1, 33), (1, 3001), (2, 4096), (3, 5000), (64, 126464), (1, 126464)]:
        block_v, chunk, splits = triton_token_stats._plan(rows, V, cpu)
        assert block_v & (block_v - 1) == 0 and block_v >= 32 and chunk % block_v == 0
        assert (splits - 1) * chunk < V <= splits * chunk
    assert triton_token_stats._plan(1, 3001, cpu)[2] > 1  # the default plan splits few rows


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ties_go_to_the_lowest_index(tiles, temperature):
    tiles(block_v=64)
    logits = torch.zeros(5, 300)
    logits[0, [5, 17, 299]] = 3.0
    logits[1, :] = 1.0
    logits[2, [0, 256]] = 2.0
    logits[3] = (torch.arange(300) % 7 == 3).float()  # many tied maxima
    logits[4] = 2.0**24  # x + g rounds to multiples of 2: tied perturbed values
    ours = check(logits.to(DEVICE), temperature=temperature, seed=3)
    if temperature == 0:
        assert ours[0].tolist() == [5, 0, 0, 3, 0]
        assert ours[2].tolist() == [0.0] * 5  # two equal tops
    else:
        y = 2.0**24 + reference_noise(3, 0, torch.tensor([4]), 300)[0]
        assert (y == y.max()).sum() > 1  # the sampled row really has ties


@pytest.mark.parametrize("splits", [1, 3])
def test_neg_inf_entries_and_rows_without_distribution(tiles, splits):
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
    logits = logits.to(DEVICE)
    for temperature in (0.0, 1.3):
        token, confidence, margin, entropy = check(logits, temperature=temperature, seed=11)
        assert token[1] == 200
        assert confidence[1] == 1 and margin[1] == 1 and entropy[1] == 0
        assert token[2:6].tolist() == [-1] * 4
        for scores in (confidence, margin, entropy):
            assert torch.isnan(scores[2:6]).all()
        assert torch.isfinite(confidence[[0, 1, 6]]).all()


def test_all_nan_logits():
    token, confidence, _, _ = run(torch.full((3, 50), math.nan, device=DEVICE), 1.0, 0, 0, False, None)
    assert token.tolist() == [-1, -1, -1]
    assert torch.isnan(confidence).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_contiguous_inputs(temperature):
    base = random_logits((3, 4, 300), torch.bfloat16).to(DEVICE)
    views = [
        base[:, ::2, :199],  # strided rows, cut vocabulary
        base.transpose(0, 1),  # permuted leading dims
        base[:, 3],  # a strided slice
        base[:2, :2, 100:].unsqueeze(1).expand(2, 2, 2, 200),  # zero stride
        # More than 4 leading dims that do not coalesce: the row-offset table.
        random_logits((2, 3, 2, 2, 2, 40)).to(DEVICE).permute(4, 0, 3, 1, 2, 5)[:, :, :, ::2, :1],
        random_logits((3, 5)).to(DEVICE).t()[:, :1],  # V = 1 with stride 5 on V
    ]
    for logits in views:
        assert not logits.is_contiguous() or logits.stride(-1) != 1
        check(logits, temperature=temperature, seed=5)


def test_positions_restricts_the_work():
    logits = random_logits((3, 5, 117)).to(DEVICE)
    positions = torch.rand(3, 5) < 0.4
    positions[0] = False  # a row with nothing to do
    positions[1, 4] = True
    positions = positions.to(DEVICE)
    for temperature in (0.0, 0.9):
        token, confidence, margin, entropy = check(logits, temperature=temperature, seed=2, positions=positions)
        off = ~positions
        assert (token[off] == -1).all() and (confidence[off] == -math.inf).all()
        assert (margin[off] == -math.inf).all() and (entropy[off] == math.inf).all()
        full = run(logits, temperature, 2, 0, False, None)
        assert torch.equal(token[positions], full[0][positions])


def test_positions_with_split_vocabulary(tiles):
    tiles(block_v=32, splits=3)
    logits = random_logits((4, 100)).to(DEVICE)
    positions = torch.tensor([True, False, True, False], device=DEVICE)
    for temperature in (0.0, 1.0):
        check(logits, temperature=temperature, seed=8, positions=positions)
    # Non-contiguous positions.
    positions2 = torch.tensor([[True, False], [False, True]], device=DEVICE).t()
    check(logits.reshape(2, 2, 100), temperature=1.0, seed=8, positions=positions2)


def test_seed_and_offset_use_all_64_bits():
    logits = random_logits((8, 61), scale=0.5).to(DEVICE)
    base = run(logits, 1.0, 42, 3, False, None)[0]
    for seed, offset in ((42 + 2**32, 3), (42, 3 + 2**32), (2**63 - 1, 2**63 - 1)):
        ours = check(logits, temperature=1.0, seed=seed, offset=offset)
        assert not torch.equal(ours[0], base)


def test_rng_tensor_overrides_the_ints_and_is_read_at_call_time(tiles):
    tiles(block_v=64, splits=2)
    logits = random_logits((3, 150), scale=0.5).to(DEVICE)
    rng = torch.tensor([2**40 + 77, 3], device=DEVICE)
    a = run(logits, 1.0, 0, 0, False, None, rng)
    assert torch.equal(a[0], run(logits, 1.0, 2**40 + 77, 3, False, None)[0])
    rng[1] += 2**32  # in place, as a CUDA graph replay loop does between steps
    b = check(logits, temperature=1.0, seed=2**40 + 77, offset=3 + 2**32)
    assert torch.equal(run(logits, 1.0, 0, 0, False, None, rng)[0], b[0])
    assert not torch.equal(a[0], b[0])
    # The strided view of a bigger tensor works too.
    assert torch.equal(run(logits, 1.0, 0, 0, False, None, torch.tensor([[2**40 + 77, 0], [3, 9]]).t()[0])[0], a[0])


def test_bad_rng_is_named():
    logits = torch.randn(2, 11, device=DEVICE)
    bad_values = [torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0])]
    if DEVICE == "cpu":  # read on the host only where that is free (as the CPU kernel does)
        bad_values.append(torch.tensor([-1, 0]))
    for bad in bad_values:
        with pytest.raises((ValueError, TypeError), match="rng"):
            run(logits, 1.0, 0, 0, False, None, bad.to(DEVICE))


@pytest.mark.skipif(not _extension.LOADED, reason=f"dmkernels._C: {_extension.REASON}")
@pytest.mark.parametrize("shape,tempered", [((6, 500), False), ((2, 1, 2100), True)])
def test_tokens_equal_the_cpu_kernel(shape, tempered):
    logits = random_logits(shape, torch.bfloat16, scale=1.0)
    for seed, offset, temperature in ((0, 0, 1.0), (99, 7, 0.6), (2**40, 2**35, 1.7), (1, 0, 0.0)):
        ours = run(logits.to(DEVICE), temperature, seed, offset, tempered, None)
        cpu = torch.ops.dmkernels.token_stats(logits, temperature, seed, offset, tempered, None)
        assert torch.equal(ours[0].cpu(), cpu[0])
        for a, b in zip(ours[1:], cpu[1:]):
            torch.testing.assert_close(a.cpu(), b, equal_nan=True, **TOL)


def test_empty_and_one_dimensional_logits():
    out = run(torch.randn(0, 5, 10, device=DEVICE))
    assert out[0].shape == (0, 5) and out[3].shape == (0, 5)
    logits = random_logits((77,)).to(DEVICE)
    token = run(logits)[0]
    assert token.shape == () and int(token) == int(logits.argmax())


def test_argument_errors():
    with pytest.raises(ValueError, match="unit stride"):
        run(torch.randn(10, 4, device=DEVICE).t())
    with pytest.raises(TypeError, match="logits must be one of"):
        run(torch.randn(2, 4, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="temperature"):
        run(torch.randn(2, 4, device=DEVICE), -1.0)
    with pytest.raises(ValueError, match=r"token_stats: temperature must be 0 or >= 2\*\*-100"):
        run(torch.randn(2, 4, device=DEVICE), 1e-40)  # float32(1 / T) would be inf
    with pytest.raises(ValueError, match="positions"):
        run(torch.randn(2, 4, device=DEVICE), positions=torch.ones(3, dtype=torch.bool, device=DEVICE))


def test_opcheck():
    logits = random_logits((2, 3, 40), torch.bfloat16).to(DEVICE)
    positions = torch.tensor([[True, False, True], [True, True, False]], device=DEVICE)
    rng = torch.tensor([5, 1], device=DEVICE)
    for args in ((logits, 0.0, 0, 0, False, None), (logits, 0.8, 5, 1, True, positions),
                 (logits, 1.0, 0, 0, False, None, rng)):
        torch.library.opcheck(op, args)
