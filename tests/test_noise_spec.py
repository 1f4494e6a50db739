"""The noise spec has one source, csrc/common/noise.h: the constants the Python
reference and the Triton kernels re-type must be the header's, read from it here.
(The bit-identity tests check the arithmetic; this checks the numbers it uses.)"""
import re
from pathlib import Path

import pytest
import torch

from dmkernels import _checks
from dmkernels.reference import noise as ref_noise
from dmkernels.reference import token_stats as ref_token_stats

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "common" / "noise.h"


def _header_constants() -> dict:
    text = HEADER.read_text()
    out = {}
    for name, literal in re.findall(r"constexpr\s+\w+\s+(k\w+)\s*=\s*([^;]+);", text):
        literal = literal.strip().rstrip("uUfF")
        out[name] = float.fromhex(literal) if "p" in literal else (int(literal, 0) if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", literal) else float(literal))
    out["log_q"] = [None] * 9
    for case, literal in re.findall(r"case (\d+): return ([-0-9.e]+)f;", text):
        out["log_q"][int(case)] = float(literal)
    out["log_q"][8] = float(re.search(r"default: return ([-0-9.e]+)f;", text).group(1))
    return out


H = _header_constants()

# exp_f32 of the hierarchical sampler: header name -> reference / Triton name.
EXP_NAMES = ("kLog2e", "kExpRound", "kExpC1", "kExpC2", "kExpFlush", "kExpQ1", "kExpQ2", "kExpQ3", "kExpQ4",
             "kExpQ5")
EXP_REFERENCE = dict(kLog2e="LOG2E_F32", kExpRound="EXP_ROUND", kExpC1="EXP_C1", kExpC2="EXP_C2",
                     kExpFlush="EXP_FLUSH")


def test_the_header_parses():
    # A rename in the header must fail here rather than silently check nothing.
    for name in ("kPhiloxM0", "kPhiloxM1", "kPhiloxW0", "kPhiloxW1", "kGumbelBound", "kMinTemperature", "kLn2",
                 "kSqrt2", "kNoiseGroup", "kNoiseBlocksPerGroup", *EXP_NAMES, "kGroupStream", "kGroupKeyBound"):
        assert name in H, name
    assert None not in H["log_q"]


def test_reference_constants_are_the_headers():
    assert [ref_noise.PHILOX_M0, ref_noise.PHILOX_M1, ref_noise.PHILOX_W0, ref_noise.PHILOX_W1] == [
        H["kPhiloxM0"], H["kPhiloxM1"], H["kPhiloxW0"], H["kPhiloxW1"]]
    assert list(ref_noise.LOG_Q) == H["log_q"]
    assert ref_noise.LN2_F32 == H["kLn2"] and ref_noise.SQRT2_F32 == H["kSqrt2"]
    assert ref_token_stats.MIN_TEMPERATURE == H["kMinTemperature"] == _checks.MIN_TEMPERATURE
    for header, ref in EXP_REFERENCE.items():
        assert getattr(ref_noise, ref) == H[header], header
    assert list(ref_noise.EXP_Q) == [1.0] + [H[f"kExpQ{i}"] for i in range(1, 6)]
    assert ref_noise.GROUP_STREAM == H["kGroupStream"] and ref_noise.GROUP == H["kNoiseGroup"]


def test_triton_constants_are_the_headers():
    tri = pytest.importorskip("dmkernels.triton.noise", reason="triton is not installed")
    value = lambda c: getattr(c, "value", c)  # tl.constexpr
    assert [value(tri.PHILOX_M0), value(tri.PHILOX_M1), value(tri.PHILOX_W0), value(tri.PHILOX_W1)] == [
        H["kPhiloxM0"], H["kPhiloxM1"], H["kPhiloxW0"], H["kPhiloxW1"]]
    assert [value(getattr(tri, f"LOG_Q{i}")) for i in range(9)] == H["log_q"]
    assert value(tri.LN2_F32) == H["kLn2"] and value(tri.SQRT2_F32) == H["kSqrt2"]
    assert value(tri.GUMBEL_BOUND) == H["kGumbelBound"]
    for header, ref in {**EXP_REFERENCE, "kLog2e": "LOG2E_F32"}.items():
        assert value(getattr(tri, ref)) == H[header], header
    assert [value(getattr(tri, f"EXP_Q{i}")) for i in range(1, 6)] == [H[f"kExpQ{i}"] for i in range(1, 6)]
    assert value(tri.GROUP_STREAM) == H["kGroupStream"] and value(tri.GROUP_KEY_BOUND) == H["kGroupKeyBound"]


def test_float32_constants_are_exactly_representable():
    # The header spells them as float32 literals; a re-typed value that is not a
    # float32 would round differently in Python's float64 arithmetic.
    for v in H["log_q"] + [H["kLn2"], H["kSqrt2"], H["kGumbelBound"]] + [H[n] for n in EXP_NAMES]:
        assert torch.tensor(v, dtype=torch.float32).item() == v


def test_gumbel_bound_bounds_every_draw():
    # The largest u the mapping makes is 1 - 2^-24 (all 23 bits set): its Gumbel
    # value must stay below the bound the kernels use to skip noise.
    u = torch.tensor([2**23 - 1], dtype=torch.float32) * 2.0**-23 + 2.0**-24
    assert u.item() == 1 - 2.0**-24
    top = -ref_noise.log_f32(-ref_noise.log_f32(u))
    assert 16.0 < top.item() < H["kGumbelBound"]


def test_group_key_bound_bounds_every_group_key():
    # K_g - m_g = (log_f32(S_g) + G_g) s with S_g <= 32 and G_g below the Gumbel
    # bound: the kernels skip groups whose m_g + kGroupKeyBound * s cannot win.
    top = ref_noise.log_f32(torch.tensor([32.0])) + H["kGumbelBound"]
    assert top.item() < H["kGroupKeyBound"]
    # An element block never has the group stream's bit (columns < 2**24).
    assert ((2**24 - 1) // 32) * 8 + 7 < H["kGroupStream"]
