"""Fake (meta) implementations of every dmkernels op, for torch.compile and
torch.library.opcheck: output shapes and dtypes only, no data."""
from __future__ import annotations

import torch

from . import _extension


def _register() -> None:
    @torch.library.register_fake("dmkernels::token_stats")
    def _token_stats(logits, temperature, seed, offset, tempered_scores, positions, rng=None):
        rows = logits.shape[:-1]
        scores = [logits.new_empty(rows, dtype=torch.float32) for _ in range(3)]
        return (logits.new_empty(rows, dtype=torch.int64), *scores)

    @torch.library.register_fake("dmkernels::token_stats_partial")
    def _token_stats_partial(logits, temperature, seed, offset, tempered_scores, positions, rng, vocab_start,
                             row_offset):
        return logits.new_empty((*logits.shape[:-1], 8), dtype=torch.float32)

    # The kernels return contiguous outputs whatever the inputs' strides.
    def _selection(ref):
        return ref.new_empty(ref.shape, dtype=torch.bool)

    torch.library.register_fake("dmkernels::select_topk")(lambda scores, k, eligible: _selection(eligible))
    torch.library.register_fake("dmkernels::select_threshold")(lambda scores, eligible, threshold: _selection(eligible))
    torch.library.register_fake("dmkernels::select_factor")(lambda scores, eligible, factor: _selection(eligible))
    torch.library.register_fake("dmkernels::select_entropy_bounded")(
        lambda error, entropy, eligible, gamma: _selection(eligible)
    )
    torch.library.register_fake("dmkernels::select_group")(lambda eligible, groups, step: _selection(eligible))

    @torch.library.register_fake("dmkernels::commit_")
    def _commit(x, token, select, mask_id):
        return select.new_empty(select.shape), x.new_empty((x.shape[0],), dtype=torch.int64)


if _extension.LOADED:
    _register()
