"""Exact KV cache for block-causal diffusion LMs (LLaDA2, SDAR), and the batch
canvas the block sampler runs on.

In a block-causal model a block attends to itself and to earlier blocks only, so
the keys and values of a finished block depend on that block's and earlier
blocks' tokens alone. Once the sampler leaves a block (its tokens final), its
K/V never change: caching them is exact.

* :class:`BlockKVCache` is a ``transformers`` ``Cache``: per layer one buffer
  ``[B, KV, max_len, head_dim]`` allocated at the layer's first ``update`` and a
  shared frontier ``n``. ``update(k, v, layer)`` writes the fresh K/V at
  ``[n, n + q)`` and returns views ``[:n + q]`` (no ``cat``, no allocation per
  step); :meth:`BlockKVCache.commit` advances the frontier over the keys that are
  final; everything past it is overwritten by the next call. Any model that
  routes its keys through ``Cache.update(k, v, layer_idx, ...)`` (our LLaDA2,
  the public LLaDA2 modeling code) works unchanged.
* :class:`BlockLayout` re-lays a left-padded batch so that every row's blocks
  sit on one global block grid (each row's first token at a multiple of
  ``block_length``, all rows starting to generate in the same global block),
  and builds position ids and the block-causal masks for a window of queries.
  Every real query sees exactly the keys it would see with its row alone (same
  row-relative positions, blocks and keys), so each row gets what it would get
  alone. Pad columns are invisible as keys; a pad query sees itself (a query
  with no visible key gives NaN in softmax, and ``0 * NaN`` would leak into real
  rows through ``attn @ V``).
* :func:`check_block_causal` decides whether a model may run with the cache.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .cache import _accepts  # whether the model's forward takes a keyword

__all__ = ["BlockKVCache", "BlockLayout", "BLOCK_CAUSAL_MODEL_TYPES", "check_block_causal", "mask_kind"]

# config.model_type of models whose attention is block-causal by construction:
# the public LLaDA2.0 / 2.1 and SDAR codes, and ours (dmkernels.models).
BLOCK_CAUSAL_MODEL_TYPES = frozenset(
    {"llada2_moe", "llada21_moe", "sdar", "dmkernels_llada2_moe", "dmkernels_sdar"})
_BOOL_MASK_MODEL_TYPES = frozenset({"sdar", "dmkernels_sdar"})


class BlockKVCache(Cache):
    """Preallocated exact block cache (see the module docstring).

    ``max_len``: the most keys a row ever holds (the canvas width). Buffers take
    the dtype, device, batch, head count and head dim of the first ``update`` of
    each layer. ``len(cache)`` is the number of layers seen; ``cache[i]`` gives
    layer i's committed ``(k, v)``."""

    def __init__(self, max_len: int):
        super().__init__(layers=[])
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"BlockKVCache: max_len must be a positive int, got {max_len!r}")
        self.max_len = max_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.frontier = 0

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None, *args, **kwargs):
        n, q = self.frontier, key_states.shape[-2]
        if n + q > self.max_len:
            raise ValueError(f"BlockKVCache: {n} cached + {q} fresh keys exceed max_len {self.max_len}")
        if layer_idx == len(self.keys):  # first call of this layer: allocate once
            b, h, _, d = key_states.shape
            self.keys.append(key_states.new_empty((b, h, self.max_len, d)))
            self.values.append(value_states.new_empty((b, h, self.max_len, value_states.shape[-1])))
        elif layer_idx > len(self.keys):
            raise ValueError(f"BlockKVCache: layer {layer_idx} updated before layer {len(self.keys)}")
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[:, :, n:n + q].copy_(key_states)
        v[:, :, n:n + q].copy_(value_states)
        return k[:, :, :n + q], v[:, :, :n + q]

    def commit(self, q: int) -> None:
        """The next ``q`` keys after the frontier (written by the latest call) are final."""
        if q < 0 or self.frontier + q > self.max_len:
            raise ValueError(f"BlockKVCache.commit: {q} keys past frontier {self.frontier} (max_len {self.max_len})")
        self.frontier += q

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.frontier

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len

    def get_mask_sizes(self, query_length, layer_idx: int = 0):
        return self.frontier + int(query_length), 0

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, layer_idx: int):
        n = self.frontier
        return self.keys[layer_idx][:, :, :n], self.values[layer_idx][:, :, :n]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"BlockKVCache(layers={len(self.keys)}, frontier={self.frontier}, max_len={self.max_len})"

    def reset(self):
        self.frontier = 0

    def crop(self, max_length: int):
        self.frontier = min(self.frontier, max_length) if max_length >= 0 else max(self.frontier + max_length, 0)

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return bool(self.keys)


class BlockLayout:
    """The re-laid batch canvas (issue 14 design 2.4) for prompts of lengths
    ``prompt_lengths`` (one per row, unpadded), ``gen_length`` tokens each, blocks
    of ``block_length``.

    Row r alone has ``T_r = ceil((P_r + gen) / bl) * bl`` positions and generates
    its blocks ``P_r // bl .. T_r / bl - 1``. Here its position 0 sits at column
    ``start[r] = (K - P_r // bl) * bl`` with ``K = max_r P_r // bl``, so all rows
    generate from global block ``K``; row r's canvas ends at ``end[r] = start[r] +
    T_r``. Attributes (device tensors ``[B, W]`` unless said): ``pad`` (columns
    before ``start``), ``prompt`` (the row's prompt tokens), ``gen`` (its
    positions ``[P_r, T_r)``: generated, overhang included), ``positions``
    (row-relative, 0 on pads), ``col_block`` ``[W]`` (global block per column),
    host ints ``K``, ``num_blocks``, ``width``, lists ``start``, ``gen_start``
    (column of position ``P_r``), ``last_block`` (global index of row r's last
    block)."""

    def __init__(self, prompt_lengths, gen_length: int, block_length: int, device):
        bl = block_length
        self.B = len(prompt_lengths)
        self.block_length = bl
        self.prompt_lengths = [int(p) for p in prompt_lengths]
        own_first = [p // bl for p in self.prompt_lengths]
        own_total = [-(-(p + gen_length) // bl) for p in self.prompt_lengths]
        self.K = max(own_first)
        self.start = [(self.K - f) * bl for f in own_first]
        self.last_block = [self.K + t - f - 1 for f, t in zip(own_first, own_total)]
        self.num_blocks = max(self.last_block) + 1
        self.width = self.num_blocks * bl
        self.gen_start = [s + p for s, p in zip(self.start, self.prompt_lengths)]
        self.end = [s + t * bl for s, t in zip(self.start, own_total)]
        self.device = torch.device(device)
        col = torch.arange(self.width, device=self.device)
        start = torch.tensor(self.start, device=self.device)[:, None]
        gen_start = torch.tensor(self.gen_start, device=self.device)[:, None]
        end = torch.tensor(self.end, device=self.device)[:, None]
        self.col_block = col // bl
        self.pad = col[None] < start
        self.prompt = ~self.pad & (col[None] < gen_start)
        self.gen = (col[None] >= gen_start) & (col[None] < end)
        self.positions = (col[None] - start).clamp_min(0)
        self.last_block_t = torch.tensor(self.last_block, device=self.device)

    def canvas(self, prompts, mask_id: int, filler: int) -> torch.Tensor:
        """int64 ``[B, W]``: each row's prompt at its columns, ``mask_id`` on its
        generated positions, ``filler`` (any id other than ``mask_id``) on pads
        and past the row's canvas."""
        x = torch.full((self.B, self.width), filler, dtype=torch.int64, device=self.device)
        for r, p in enumerate(prompts):
            x[r, self.start[r]:self.gen_start[r]] = p.to(self.device)
        return x.masked_fill_(self.gen, mask_id)

    def keep(self, q0: int, q1: int, k1: int) -> torch.Tensor:
        """bool ``[B, 1, q1 - q0, k1]``: query column i in ``[q0, q1)`` sees key column
        j in ``[0, k1)`` iff j's block <= i's block and j is no pad; a pad query
        sees itself."""
        qb, kb = self.col_block[q0:q1], self.col_block[:k1]
        keep = (kb[None, None, :] <= qb[None, :, None]) & ~self.pad[:, None, :k1]
        qcol = torch.arange(q0, q1, device=self.device)
        own = qcol[:, None] == torch.arange(k1, device=self.device)[None, :]
        keep |= own[None] & self.pad[:, q0:q1, None]
        return keep[:, None]

    def attention_mask(self, q0: int, q1: int, k1: int, dtype: torch.dtype, kind: str = "additive") -> torch.Tensor:
        """:meth:`keep` as the model takes it: ``"additive"`` (0 / the dtype's lowest
        finite value, in ``dtype``: LLaDA2, SDPA models) or ``"bool"`` (SDAR)."""
        keep = self.keep(q0, q1, k1)
        if kind == "bool":
            return keep
        return torch.zeros(keep.shape, dtype=dtype, device=self.device).masked_fill_(~keep, torch.finfo(dtype).min)


def check_block_causal(model, caller: str, block_causal: bool | None = None) -> None:
    """ValueError naming ``model`` unless the model can run with :class:`BlockKVCache`:
    its forward takes ``past_key_values`` and ``attention_mask`` (by name or
    ``**kwargs``) and it is block-causal: ``block_causal=True`` given, or
    ``model.block_causal`` true, or ``model.config.model_type`` one of
    :data:`BLOCK_CAUSAL_MODEL_TYPES`."""
    for name in ("past_key_values", "attention_mask"):
        if not _accepts(model, name):
            raise ValueError(f"dmkernels.{caller}: model: its forward takes no {name}, which the block KV cache "
                             f"needs; pass cache=None (uncached, the whole window every step)")
    if block_causal is None:
        block_causal = getattr(model, "block_causal", None)
    if block_causal is None:
        block_causal = getattr(getattr(model, "config", None), "model_type", None) in BLOCK_CAUSAL_MODEL_TYPES
    if not block_causal:
        kind = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"dmkernels.{caller}: model (model_type {kind!r}) is not known to use block-causal attention, which the "
            f"exact block KV cache needs (known: {', '.join(sorted(BLOCK_CAUSAL_MODEL_TYPES))}); pass "
            f"block_causal=True if it does, or cache=None")


def mask_kind(model) -> str:
    """The attention-mask format the model takes: ``"bool"`` for SDAR, else ``"additive"``."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    return "bool" if kind in _BOOL_MASK_MODEL_TYPES else "additive"
