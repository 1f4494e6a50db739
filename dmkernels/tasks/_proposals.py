"""A denoiser whose proposals never include some token ids (the mask, a task's
non-answer tokens), for the tasks and the quality benchmarks."""
from __future__ import annotations

import time

import torch

from .. import _checks as check


class BannedProposals(torch.nn.Module):
    """``model`` with the token ids ``banned`` (an int, a slice, or a sequence
    of ints) set to ``-inf`` in its logits, so that they are never proposed.
    Counts its calls and their time (for the benchmarks' cost per step)."""

    def __init__(self, model, banned):
        super().__init__()
        op = "tasks.BannedProposals"
        if isinstance(banned, (list, tuple)):
            if not banned or not all(isinstance(i, int) and not isinstance(i, bool) for i in banned):
                check.fail(op, f"banned must be an int, a slice or a non-empty sequence of ints, got {banned!r}")
            # A sequence indexes as a tensor, made once per device: no host-to-device copy per call.
            self._ids = {torch.device("cpu"): torch.tensor(banned, dtype=torch.int64)}
        elif isinstance(banned, slice) or (isinstance(banned, int) and not isinstance(banned, bool)):
            self._ids = None
        else:
            check.fail(op, f"banned must be an int, a slice or a non-empty sequence of ints, got {banned!r}")
        self.model, self.banned = model, banned
        self.config = model.config
        self.seconds = 0.0
        self.calls = 0

    def _index(self, device: torch.device):
        if self._ids is None:
            return self.banned
        if device not in self._ids:
            self._ids[device] = self._ids[torch.device("cpu")].to(device)
        return self._ids[device]

    def forward(self, x, **kwargs):
        t0 = time.perf_counter()
        out = self.model(x, **kwargs)
        out.logits[..., self._index(out.logits.device)] = float("-inf")  # in place: hidden states pass through
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out
