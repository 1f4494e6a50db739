"""dmkernels.blockcache: the exact block KV cache (a transformers Cache), the
re-laid batch canvas and its masks, and the model check."""
from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import Cache

from dmkernels.blockcache import BlockKVCache, BlockLayout, check_block_causal
from dmkernels.models import DiffusionLM, LLaDA2ForBlockDiffusion, llada2_tiny_config, tiny_config
from parity_harness import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 512
BL = 4


def _model(dtype):
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LLaDA2ForBlockDiffusion(llada2_tiny_config(vocab_size=V)).eval().to(dtype)
    torch.random.set_rng_state(state)
    return model


MODEL64 = _model(torch.float64)


def _canvas(lengths=(9, 6, 3), gen=10, seed=0):
    """A layout and a canvas whose generated positions hold random tokens (as if committed)."""
    layout = BlockLayout(list(lengths), gen, BL, "cpu")
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, V - 2, (p,), generator=g) for p in lengths]
    x = layout.canvas(prompts, V - 1, V - 2)
    x = torch.where(layout.gen, torch.randint(0, V - 2, x.shape, generator=g), x)
    return layout, x


def _call(model, layout, x, q0, e, cache=None):
    out = model(x[:, q0:e], attention_mask=layout.attention_mask(q0, e, e, model.dtype),
                position_ids=layout.positions[:, q0:e], past_key_values=cache, use_cache=cache is not None,
                output_hidden_states=True, logits_to_keep=BL if cache is not None else 0)
    return out.logits[:, -BL:], out.hidden_states[-1][:, -BL:]


def test_layout_relays_rows_on_one_block_grid():
    layout = BlockLayout([9, 6, 3, 0], 10, BL, "cpu")
    # Row r's position 0 at a multiple of BL, its first generated block at global block K = 9 // 4 = 2.
    assert layout.K == 2 and layout.start == [0, 4, 8, 8]
    assert layout.gen_start == [9, 10, 11, 8]
    # Alone: T = ceil((P + 10) / 4) * 4 = 20, 16, 16, 12 positions.
    assert layout.end == [20, 20, 24, 20] and layout.num_blocks == 6 and layout.width == 24
    assert layout.positions[1, 4].item() == 0 and layout.positions[1, 19].item() == 15
    assert layout.pad[2, :8].all() and not layout.pad[2, 8:].any()
    assert layout.prompt[1].sum().item() == 6 and layout.gen[1].sum().item() == 10
    x = layout.canvas([torch.arange(p) for p in (9, 6, 3, 0)], V - 1, V - 2)
    assert ((x == V - 1) == layout.gen).all()
    assert torch.equal(x[2, 8:11], torch.arange(3))


def test_mask_block_causal_pads_invisible_pad_query_sees_itself():
    layout = BlockLayout([9, 3], 6, BL, "cpu")  # row 1 starts at column 8
    keep = layout.keep(0, layout.width, layout.width)[:, 0]
    col_block = torch.arange(layout.width) // BL
    causal = col_block[None, :] <= col_block[:, None]
    assert torch.equal(keep[0], causal)  # no pads: plain block-causal
    assert not keep[1, 8:, :8].any()  # real queries never see pads
    assert torch.equal(keep[1, 8:, 8:], causal[8:, 8:])
    assert torch.equal(keep[1, :8, :8], torch.eye(8, dtype=torch.bool))  # a pad sees itself only
    additive = layout.attention_mask(4, 12, 12, torch.float64)
    assert additive.dtype == torch.float64 and additive.shape == (2, 1, 8, 12)
    assert torch.equal(additive == 0, layout.keep(4, 12, 12))
    assert (additive[additive != 0] == torch.finfo(torch.float64).min).all()


def test_cached_equals_uncached_float64_bit_for_bit():
    """Queries = [frontier, block end) against the cache vs the whole window
    [0, block end): float64 hidden states and logits are torch.equal (the same
    dot products over the same keys; no BLAS order difference showed up here).
    Both fold paths: a block committed as is, and one recomputed with the next."""
    layout, x = _canvas()
    cache = BlockKVCache(layout.width)
    checked = 0
    for g in range(layout.K, layout.num_blocks):
        s, e = g * BL, (g + 1) * BL
        for _ in range(2):  # two steps per block (the second: queries = the block only)
            q0 = cache.frontier
            logits, hidden = _call(MODEL64, layout, x, q0, e, cache)
            cache.commit(s - q0)
            full_logits, full_hidden = _call(MODEL64, layout, x, 0, e)
            assert torch.equal(hidden, full_hidden) and torch.equal(logits, full_logits)
            assert not logits.isnan().any()
            checked += 1
        if g % 2:  # odd blocks: keys final as computed; even blocks: folded into the next call
            cache.commit(e - cache.frontier)
    assert checked == 2 * (layout.num_blocks - layout.K)


def test_update_writes_in_place_and_returns_views():
    cache = BlockKVCache(16)
    assert isinstance(cache, Cache)
    k = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    for layer in range(2):
        ko, vo = cache.update(k, v, layer, {})
        assert torch.equal(ko, k) and torch.equal(vo, v)
    assert len(cache) == 2 and cache.get_seq_length() == 0
    cache.commit(5)
    k2 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ko, vo = cache.update(k2, k2, 0, {})
    assert ko.shape == (2, 3, 9, 4) and torch.equal(ko[:, :, :5], k) and torch.equal(ko[:, :, 5:], k2)
    assert ko.untyped_storage().data_ptr() == cache.keys[0].untyped_storage().data_ptr()
    assert torch.equal(cache[0][0], k) and cache.get_seq_length() == 5
    with pytest.raises(ValueError, match="max_len"):
        cache.update(torch.zeros(2, 3, 12, 4, dtype=torch.float64), k2, 1, {})
    with pytest.raises(ValueError, match="commit"):
        cache.commit(12)


def test_no_allocation_per_step():
    """After the first call of each layer, model calls through the cache never
    (re)allocate its buffers, and update() itself allocates nothing."""
    layout, x = _canvas()
    cache = BlockKVCache(layout.width)
    s = layout.K * BL
    _call(MODEL64, layout, x, 0, s + BL, cache)
    cache.commit(s)
    ptrs = [t.data_ptr() for t in cache.keys + cache.values]
    for g in range(layout.K, layout.num_blocks):
        _call(MODEL64, layout, x, cache.frontier, (g + 1) * BL, cache)
        cache.commit(BL)
    assert [t.data_ptr() for t in cache.keys + cache.values] == ptrs
    cache.reset()
    k = torch.randn(3, 2, BL, 16, dtype=torch.float64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        for layer in range(len(cache)):
            cache.update(k, k, layer, {})
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    assert allocated == 0


def test_pads_never_leak_rows_independent():
    """Pad tokens and other rows change nothing in a row (float64, bit for bit), no
    NaN anywhere, and a row equals itself alone (its own unpadded canvas)."""
    layout, x = _canvas()
    e = layout.num_blocks * BL
    logits, _ = _call(MODEL64, layout, x, 0, e)
    assert not logits.isnan().any()
    other = x.clone()
    other[layout.pad] = 7  # different pad tokens
    other[0, layout.gen[0]] = 3  # another row's tokens
    logits2, _ = _call(MODEL64, layout, other, 0, e)
    assert torch.equal(logits2[1:], logits[1:]) and not logits2.isnan().any()
    full = MODEL64(x, attention_mask=layout.attention_mask(0, e, e, torch.float64),
                   position_ids=layout.positions, use_cache=False).logits
    for r in range(3):
        own = x[r:r + 1, layout.start[r]:layout.end[r]]
        alone = BlockLayout([layout.prompt_lengths[r]], 10, BL, "cpu")
        w = own.shape[1]
        ref = MODEL64(own, attention_mask=alone.attention_mask(0, w, w, torch.float64),
                      position_ids=alone.positions[:, :w], use_cache=False).logits
        torch.testing.assert_close(full[r, layout.start[r]:layout.end[r]], ref[0], rtol=0, atol=1e-12)


class _NoCacheArg(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = MODEL64.config

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return MODEL64(input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_check_block_causal():
    check_block_causal(MODEL64, "x")  # our LLaDA2 qualifies
    with pytest.raises(ValueError, match=r"dmkernels\.caller: model: .*past_key_values"):
        check_block_causal(_NoCacheArg(), "caller")
    bidirectional = DiffusionLM(tiny_config(vocab_size=64))
    with pytest.raises(ValueError, match=r"dmkernels\.caller: model \(model_type .*block-causal"):
        check_block_causal(bidirectional, "caller")
    check_block_causal(bidirectional, "caller", block_causal=True)  # declared by the caller
    with pytest.raises(ValueError, match="model"):
        check_block_causal(MODEL64, "caller", block_causal=False)
