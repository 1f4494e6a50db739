"""The ops trace under torch.compile (fullgraph) through their fake implementations."""
from __future__ import annotations

import torch

import dmkernels  # noqa: F401

from conftest import requires_extension

pytestmark = requires_extension


def scheduling_step(logits, x, k, mask_id: int):
    eligible = x == mask_id
    token, confidence, _, _ = torch.ops.dmkernels.token_stats(logits, 0.0, 0, 0, False, eligible)
    select = torch.ops.dmkernels.select_topk(confidence, k, eligible)
    changed, remaining = torch.ops.dmkernels.commit_(x, token, select, mask_id)
    return changed, remaining


def test_one_step_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    logits = torch.randn(2, 13, 50)
    x = torch.randint(0, 40, (2, 13))
    x[:, 3:] = 49
    k = torch.tensor([2, 4])
    x_eager, x_comp = x.clone(), x.clone()
    changed_e, remaining_e = scheduling_step(logits, x_eager, k, 49)
    compiled = torch.compile(scheduling_step, fullgraph=True, backend="aot_eager")
    changed_c, remaining_c = compiled(logits, x_comp, k, 49)
    assert torch.equal(x_eager, x_comp)
    assert torch.equal(changed_e, changed_c) and torch.equal(remaining_e, remaining_c)
    assert remaining_c.tolist() == [8, 6]


def test_sampling_with_a_drawn_seed_compiles_fullgraph():
    # seed=None at T > 0 drew the seed with .item(), a data-dependent value that
    # fullgraph tracing refused; under torch.compile it is drawn as an rng tensor.
    import dmkernels

    def step(logits):
        stats = dmkernels.token_stats(logits, temperature=0.7)
        partial = dmkernels.token_stats_partial(logits, temperature=0.7, vocab_start=32)
        return stats.token, partial

    torch._dynamo.reset()
    logits = torch.randn(2, 13, 50)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)  # torch's generator still governs the drawn seed
        runs.append(compiled(logits))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    assert ((runs[0][0] >= 0) & (runs[0][0] < 50)).all()
