"""dilated_groups (DUS order) and select_group against its reference."""
from __future__ import annotations

import pytest
import torch

import dmkernels
from dmkernels.reference import select_group_reference

from conftest import requires_extension
from helpers import random_eligible


def test_dilated_groups_block_32_base_2():
    groups = dmkernels.dilated_groups(32)
    assert groups.dtype == torch.int64 and groups.shape == (32,)
    members = [sorted(torch.nonzero(groups == g).flatten().tolist()) for g in range(int(groups.max()) + 1)]
    assert members == [
        [0, 16],
        [8, 24],
        [4, 12, 20, 28],
        [2, 6, 10, 14, 18, 22, 26, 30],
        list(range(1, 32, 2)),
    ]


@pytest.mark.parametrize("block_length,base", [(1, 2), (2, 2), (5, 2), (20, 2), (27, 3), (32, 4), (64, 2), (100, 3)])
def test_dilated_groups_partition_coarse_to_fine(block_length, base):
    groups = dmkernels.dilated_groups(block_length, base)
    n_groups = int(groups.max()) + 1
    assert groups.min() == 0 and groups[0] == 0
    assert set(groups.tolist()) == set(range(n_groups))  # no empty group
    assert n_groups <= max(1, round(torch.log(torch.tensor(float(block_length))).item() / torch.log(torch.tensor(float(base))).item()) + 1)
    # Within a group, positions are spread: the smallest gap never shrinks as groups go on
    # before the final stride-1 group.
    gaps = []
    for g in range(n_groups):
        pos = torch.nonzero(groups == g).flatten()
        gaps.append(int((pos[1:] - pos[:-1]).min()) if len(pos) > 1 else block_length)
    assert gaps == sorted(gaps, reverse=True)


@requires_extension
@pytest.mark.parametrize("B,L", [(1, 1), (4, 32), (3, 20), (6, 64)])
def test_select_group_matches_reference(B, L):
    groups = dmkernels.dilated_groups(L)
    eligible = random_eligible(B, L)
    if B > 1:
        eligible[1] = False
    n_groups = int(groups.max()) + 1
    for step in range(n_groups + 1):
        ours = dmkernels.select_group(eligible, groups, step)
        assert torch.equal(ours, select_group_reference(eligible, groups, torch.tensor(step)))
        assert torch.equal(ours.any(-1), eligible.any(-1))
    per_row_step = torch.randint(0, n_groups, (B,), dtype=torch.int32)
    per_row_groups = torch.stack([groups.roll(b) for b in range(B)])
    ours = dmkernels.select_group(eligible, per_row_groups, per_row_step)
    assert torch.equal(ours, select_group_reference(eligible, per_row_groups, per_row_step))


@requires_extension
def test_select_group_walks_a_block_in_dus_order():
    L = 16
    groups = dmkernels.dilated_groups(L)
    x = torch.full((1, L), 99)
    steps = 0
    while (x == 99).any():
        select = dmkernels.select_group(x == 99, groups, steps)
        newly = torch.nonzero(select[0]).flatten().tolist()
        assert newly == torch.nonzero(groups == steps).flatten().tolist()
        x[select] = 1
        steps += 1
    assert steps == int(groups.max()) + 1


@requires_extension
def test_select_group_catches_up_on_skipped_groups():
    groups = dmkernels.dilated_groups(8)  # groups: {0,4}, {2,6}, odds
    eligible = torch.ones(1, 8, dtype=torch.bool)
    assert dmkernels.select_group(eligible, groups, 1).nonzero()[:, 1].tolist() == [0, 2, 4, 6]
    # Nothing eligible in groups <= 0: the first non-empty group is taken.
    eligible = torch.tensor([[False, True, False, True, False, True, False, True]])
    assert dmkernels.select_group(eligible, groups, 0).nonzero()[:, 1].tolist() == [1, 3, 5, 7]
