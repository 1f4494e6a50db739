"""dilated_groups (DUS order), and select_group on every backend against its reference."""
from __future__ import annotations

import pytest
import torch

import dmkernels
from dmkernels.reference import select_group_reference

from helpers import random_eligible
from selection_cases import same, strided


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


@pytest.mark.parametrize("B,L", [(1, 1), (4, 32), (3, 20), (6, 64), (5, 33), (4, 100)])
def test_select_group_matches_reference(backend, B, L):
    groups = dmkernels.dilated_groups(L)
    eligible = random_eligible(B, L)
    if B > 1:
        eligible[1] = False
    if B > 2:
        eligible[2] = False
        eligible[2, L - 1] = True
    n_groups = int(groups.max()) + 1
    for step in range(n_groups + 1):  # a host int step
        ours = backend.call("select_group", eligible, groups, step)
        same(ours, select_group_reference(eligible, groups, torch.tensor(step)))
        assert torch.equal(ours.cpu().any(-1), eligible.any(-1))
    for index_dtype in (torch.int64, torch.int32):
        for g in (groups, torch.stack([groups.roll(b) for b in range(B)]), torch.randint(-1, 6, (B, L))):
            g = g.to(index_dtype)
            for step in (torch.tensor(0), torch.tensor(n_groups + 2), torch.randint(-2, n_groups + 1, (B,))):
                step = step.to(index_dtype)
                same(backend.call("select_group", eligible, g, step), select_group_reference(eligible, g, step))


def test_select_group_non_contiguous(backend):
    eligible = random_eligible(4, 60)
    groups = torch.randint(0, 5, (60, 8)).t()[:4]  # [B, L], strided
    step = torch.randint(0, 4, (8,))[::2]
    _, e = strided(torch.zeros(4, 60), eligible)
    same(backend.call("select_group", e, groups, step), select_group_reference(eligible, groups, step))
    g1 = dmkernels.dilated_groups(120)[::2]  # [L], stride 2
    same(backend.call("select_group", e, g1, torch.tensor(1)), select_group_reference(eligible, g1, torch.tensor(1)))


def test_select_group_empty(backend):
    for B, L in ((0, 5), (3, 0)):
        out = backend.call("select_group", torch.ones(B, L, dtype=torch.bool), torch.zeros(L, dtype=torch.int64), 0)
        assert out.shape == (B, L)


def test_select_group_walks_a_block_in_dus_order(backend):
    L = 16
    groups = dmkernels.dilated_groups(L)
    x = torch.full((1, L), 99)
    steps = 0
    while (x == 99).any():
        select = backend.call("select_group", x == 99, groups, steps).cpu()
        newly = torch.nonzero(select[0]).flatten().tolist()
        assert newly == torch.nonzero(groups == steps).flatten().tolist()
        x[select] = 1
        steps += 1
    assert steps == int(groups.max()) + 1


def test_select_group_catches_up_on_skipped_groups(backend):
    groups = dmkernels.dilated_groups(8)  # groups: {0,4}, {2,6}, odds
    eligible = torch.ones(1, 8, dtype=torch.bool)
    assert backend.call("select_group", eligible, groups, 1).cpu().nonzero()[:, 1].tolist() == [0, 2, 4, 6]
    # Nothing eligible in groups <= 0: the first non-empty group is taken.
    eligible = torch.tensor([[False, True, False, True, False, True, False, True]])
    assert backend.call("select_group", eligible, groups, 0).cpu().nonzero()[:, 1].tolist() == [1, 3, 5, 7]
