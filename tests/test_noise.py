"""The reference noise: Philox4x32-10 known answers and the uniform mapping."""
from __future__ import annotations

import torch

from dmkernels.reference import gumbel_noise, noise_bits, philox4x32_10
from dmkernels.reference.noise import uniform_from_bits


def _philox(ctr, key):
    words = philox4x32_10(*(torch.tensor([c]) for c in ctr), *key)
    return [int(w) for w in words]


def test_philox_known_answers():
    # Random123's published known-answer vectors for philox4x32_10.
    assert _philox([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _philox([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _philox([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_uniform_is_exact_and_open():
    bits = torch.tensor([0, 511, 512, 0xFFFFFFFF])
    u = uniform_from_bits(bits)
    assert u.dtype == torch.float32
    assert u.tolist() == [2.0**-24, 2.0**-24, 2.0**-23 + 2.0**-24, 1 - 2.0**-24]


def test_noise_layout_and_distribution():
    rows = torch.tensor([0, 5, 2**32 - 1])
    bits = noise_bits(7, 3, rows, 10)
    assert bits.shape == (3, 10) and int(bits.min()) >= 0 and int(bits.max()) < 2**32
    # Block 1 of row 5 holds columns 1, 9, 17, 25 (csrc/common/noise.h).
    bits = noise_bits(7, 3, rows, 40)
    assert bits[1, [1, 9, 17, 25]].tolist() == _philox([1, 5, 3, 0], [7, 0])
    assert int(bits[1, 32]) == _philox([8, 5, 3, 0], [7, 0])[0]  # group 1 starts at block 8
    g = gumbel_noise(1, 0, torch.arange(200), 1000).double()
    assert abs(g.mean().item() - 0.5772) < 0.01  # Euler-Mascheroni
    assert abs(g.var().item() - torch.pi**2 / 6) < 0.03


def test_log_f32_is_accurate_on_the_ranges_the_noise_uses():
    from dmkernels.reference.noise import log_f32

    u = uniform_from_bits(torch.randint(0, 2**32, (200000,)))
    for x in (u, -torch.log(u.double()).float(), torch.tensor([2.0**-24, 1 - 2.0**-24, 1.0, 16.6])):
        exact = x.double().log()
        rel = (log_f32(x).double() - exact).abs() / exact.abs().clamp_min(1e-300)
        assert float(rel.max()) < 2e-7
