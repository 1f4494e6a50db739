"""token_stats allocates only its [..] outputs: nothing the size of the logits,
measured with the profiler's allocation records (largest single event)."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import dmkernels

from conftest import requires_extension

pytestmark = requires_extension


def largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max([e.cpu_memory_usage for e in prof.events()] + [0])


@pytest.mark.parametrize("temperature,tempered", [(0.0, False), (1.0, False), (0.5, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_stats_extra_memory_under_one_percent_of_the_logits(temperature, tempered, dtype):
    base = torch.randn(4, 40, 30011).to(dtype)
    logits = base[:, ::2]  # non-contiguous: a copy would show up here
    positions = torch.rand(4, 20) < 0.5
    logits_bytes = logits.numel() * logits.element_size()
    used = largest_allocation(lambda: dmkernels.token_stats(
        logits, temperature=temperature, seed=3, positions=positions, tempered_scores=tempered))
    outputs = 4 * 20 * (8 + 4 + 4 + 4)
    assert used <= outputs, used
    assert used < 0.01 * logits_bytes


def test_eager_softmax_would_fail_the_same_check():
    # The measurement can fail: a plain softmax allocates the logits' size.
    logits = torch.randn(4, 20, 30011)
    assert largest_allocation(lambda: torch.softmax(logits, -1)) >= logits.numel() * 4
