"""torch.library.opcheck on every op: schema, fake implementation, dispatch."""
from __future__ import annotations

import math

import pytest
import torch

import dmkernels  # noqa: F401

from conftest import requires_extension

pytestmark = requires_extension


def _cases():
    logits = torch.randn(3, 5, 37)
    logits[0, 0, 3] = -math.inf
    scores = torch.rand(4, 19)
    eligible = torch.rand(4, 19) < 0.5
    x = torch.randint(0, 9, (4, 19))
    x[eligible] = 9
    return [
        ("token_stats", (logits, 0.0, 0, 0, False, None)),
        ("token_stats", (logits.bfloat16(), 0.7, 3, 2, True, torch.rand(3, 5) < 0.5)),
        ("token_stats", (logits[:, :, :30], 1.0, 1, 0, False, None)),
        ("token_stats", (logits, 1.0, 0, 0, False, None, torch.tensor([5, 2]))),
        ("select_topk", (scores, torch.tensor([0, 3, 19, 2]), eligible)),
        ("select_topk", (scores.t().contiguous().t(), torch.tensor([1, 2, 3, 4]), eligible.t().contiguous().t())),
        ("select_threshold", (scores, eligible, 0.5)),
        ("select_factor", (scores, eligible, 1.0)),
        ("select_entropy_bounded", (scores, scores * 0.1, eligible, 0.2)),
        ("select_group", (eligible, torch.arange(19) % 3, torch.tensor(1))),
        ("commit_", (x, torch.randint(0, 9, (4, 19)), eligible, 9)),
    ]


@pytest.mark.parametrize("name,args", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.dmkernels, name).default, args)


def _partial_cases():
    logits = torch.randn(3, 5, 37)
    logits[0, 0, 3] = -math.inf
    return [
        (logits, 0.0, 0, 0, False, None, None, 0, 0),
        (logits.bfloat16(), 0.7, 3, 2, True, torch.rand(3, 5) < 0.5, None, 45, 7),
        (logits[:, :, :30], 1.0, 1, 0, False, None, torch.tensor([5, 2]), 64, 0),
        (logits.half(), 0.5, 2, 1, False, None, None, 0, 100),
    ]


@pytest.mark.parametrize("args", _partial_cases())
def test_opcheck_token_stats_partial(args):
    torch.library.opcheck(torch.ops.dmkernels.token_stats_partial.default, args)
