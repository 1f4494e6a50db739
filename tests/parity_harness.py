"""Shared pieces of the parity tests: seeded random models, left-padded prompt
batches, a frequency test for sampling, and the ``large`` opt-in."""
from __future__ import annotations

import functools
import math
import os
from collections import Counter

import pytest
import torch

# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: these tests run many tiny forwards, which two threads
    on a shared 2-core machine slow down by orders of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def tiny_model(vocab_size: int = 256, seed: int = 0, **overrides):
    """``DiffusionLM(tiny_config(vocab_size))`` with weights fixed by ``seed`` (mask = V - 1,
    pad = EOS = V - 2). Cached: treat it as read-only."""
    from dmkernels.models import DiffusionLM, tiny_config

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = DiffusionLM(tiny_config(vocab_size=vocab_size, **overrides)).eval()
    torch.random.set_rng_state(state)
    return model


@functools.lru_cache(maxsize=None)
def llada_like_model(seed: int = 0):
    """``DiffusionLM(llada_like_config())``: LLaDA's vocabulary (V = 126464, mask 126336)."""
    from dmkernels.models import DiffusionLM, llada_like_config

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = DiffusionLM(llada_like_config()).eval()
    torch.random.set_rng_state(state)
    return model


def prompts(batch: int, length: int, vocab_size: int, *, pads=(), pad_id=None, seed: int = 0):
    """Random prompt ids in ``[0, V - 2)`` (never the mask or the pad), left-padded:
    row ``r`` starts with ``pads[r]`` pad tokens. Returns ``(ids, attention_mask)``;
    the mask is None when nothing is padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size - 2, (batch, length), generator=g)
    if not any(pads):
        return ids, None
    mask = torch.ones(batch, length, dtype=torch.long)
    pad_id = vocab_size - 2 if pad_id is None else pad_id
    for row, n in enumerate(pads):
        ids[row, :n] = pad_id
        mask[row, :n] = 0
    return ids, mask


# ----------------------------------------------------------------------------- frequency test


def outcomes(x: torch.Tensor) -> Counter:
    """Counts of each row of ``x`` (as a tuple)."""
    return Counter(tuple(int(v) for v in row) for row in x)


def chi2_homogeneity(a: Counter, b: Counter, min_count: int = 10) -> tuple[float, int]:
    """Two-sample chi-square statistic that ``a`` and ``b`` (counts over the same
    outcomes) come from one distribution, and its degrees of freedom. Outcomes
    seen fewer than ``min_count`` times in both samples together share one bin."""
    na, nb = sum(a.values()), sum(b.values())
    bins: list[tuple[int, int]] = []
    rare = [0, 0]
    for key in set(a) | set(b):
        ca, cb = a.get(key, 0), b.get(key, 0)
        if ca + cb < min_count:
            rare[0] += ca
            rare[1] += cb
        else:
            bins.append((ca, cb))
    if sum(rare):
        bins.append(tuple(rare))
    stat = 0.0
    for ca, cb in bins:
        pooled = (ca + cb) / (na + nb)
        for observed, n in ((ca, na), (cb, nb)):
            expected = n * pooled
            stat += (observed - expected) ** 2 / expected
    return stat, max(len(bins) - 1, 1)


def chi2_critical(dof: int, z: float = 5.0) -> float:
    """Upper quantile of chi-square(dof) at the normal quantile ``z`` (Wilson-Hilferty;
    z = 5 is a tail probability of about 3e-7)."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


def same_distribution(a: torch.Tensor, b: torch.Tensor, z: float = 5.0) -> tuple[bool, str]:
    """Whether the rows of ``a`` and ``b`` look like draws from one distribution."""
    stat, dof = chi2_homogeneity(outcomes(a), outcomes(b))
    crit = chi2_critical(dof, z)
    return stat <= crit, f"chi2 = {stat:.1f} on {dof} dof (critical {crit:.1f})"


def assert_same_distribution(ours: torch.Tensor, eager: torch.Tensor) -> None:
    ok, msg = same_distribution(ours, eager)
    top_ours = outcomes(ours).most_common(5)
    top_eager = outcomes(eager).most_common(5)
    assert ok, f"distributions differ: {msg}; most common ours {top_ours}, eager {top_eager}"


def assert_different_distribution(a: torch.Tensor, b: torch.Tensor) -> None:
    """The frequency test has power: it tells these two apart (used with a known
    difference, e.g. temperature T against 2T)."""
    ok, msg = same_distribution(a, b)
    assert not ok, f"the frequency test cannot tell these apart: {msg}"


# ----------------------------------------------------------------------------- opt-in for slow cases


def run_large(config) -> bool:
    """``--run-large`` (registered by benchmarks/conftest.py when benchmarks/ is
    collected) or DMKERNELS_RUN_LARGE=1."""
    try:
        flag = config.getoption("--run-large", default=False)
    except ValueError:
        flag = False
    return bool(flag) or os.environ.get("DMKERNELS_RUN_LARGE") == "1"


@pytest.fixture
def large(request):
    if not run_large(request.config):
        pytest.skip("slow parity case: pass --run-large (with benchmarks/ collected) or set DMKERNELS_RUN_LARGE=1")
