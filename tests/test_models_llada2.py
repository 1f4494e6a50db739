"""dmkernels.models.llada2: LLaDA2's MoE block-diffusion architecture against a slow
per-token / per-query re-implementation, its masks, GQA, partial rotary
embedding, MoE routing, the transformers Cache path (exact in float64), dtypes,
host-sync freedom, checkpoint names and the Auto registration."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache  # noqa: E402

from dmkernels.constants import LLADA2_EOS_ID, LLADA2_MASK_ID, LLADA2_VOCAB_SIZE  # noqa: E402
from dmkernels.models import LLaDA2Config, LLaDA2ForBlockDiffusion, llada2_like_config, llada2_tiny_config  # noqa: E402
from dmkernels.models.llada2 import _rotate_partial, _rotary_cos_sin, block_causal_mask  # noqa: E402
from dmkernels.testing import HostSyncError, forbid_host_sync, step_scope  # noqa: E402
from parity_harness import one_thread  # noqa: E402,F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 512


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def build(dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    return LLaDA2ForBlockDiffusion(llada2_tiny_config(vocab_size=V, **overrides)).eval().to(dtype)


def tokens(b, w, seed=1):
    return torch.randint(0, V - 2, (b, w), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- slow reference


def _rms(x, w, eps):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _rope_one(vec, pos, d, theta):
    """Rotate channel pairs (i, i + d/2), i < d/2, by pos * theta^(-2i/d); channels >= d unchanged."""
    out = vec.clone()
    for i in range(d // 2):
        angle = pos * theta ** (-2.0 * i / d)
        a, b = vec[i], vec[i + d // 2]
        out[i] = a * math.cos(angle) - b * math.sin(angle)
        out[i + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def _swiglu(x, sd, prefix):
    g = x @ sd[prefix + "gate_proj.weight"].T
    u = x @ sd[prefix + "up_proj.weight"].T
    return (g * torch.sigmoid(g) * u) @ sd[prefix + "down_proj.weight"].T


def slow_route(cfg, scores, bias):
    """One token's experts and weights with plain Python: group score = sum of the
    group's two best biased scores; the topk_group best groups compete; the k best
    biased scores among their experts win; weights = unbiased scores, normalised,
    times routed_scaling_factor."""
    biased = [float(s) + float(b) for s, b in zip(scores, bias)]
    size = cfg.num_experts // cfg.n_group
    group_score = []
    for g in range(cfg.n_group):
        members = sorted(biased[g * size:(g + 1) * size], reverse=True)
        group_score.append(members[0] + members[1])
    groups = sorted(range(cfg.n_group), key=lambda g: -group_score[g])[: cfg.topk_group]
    candidates = [e for g in groups for e in range(g * size, (g + 1) * size)]
    chosen = sorted(candidates, key=lambda e: -biased[e])[: cfg.num_experts_per_tok]
    raw = [float(scores[e]) for e in chosen]
    total = sum(raw) if len(raw) > 1 else 1.0
    return chosen, [r / total * cfg.routed_scaling_factor for r in raw]


def slow_moe(cfg, sd, prefix, m):
    out = torch.zeros_like(m)
    for t in range(m.shape[0]):
        scores = torch.sigmoid(m[t] @ sd[prefix + "gate.weight"].T)
        chosen, weights = slow_route(cfg, scores, sd[prefix + "gate.expert_bias"])
        for e, w in zip(chosen, weights):
            out[t] += w * _swiglu(m[t], sd, f"{prefix}experts.{e}.")
        if cfg.num_shared_experts is not None:
            out[t] += _swiglu(m[t], sd, prefix + "shared_experts.")
    return out


def slow_forward(model, ids, keep, pos):
    """Logits ``[W, V]`` of one row in float64 with per-query, per-head loops.
    ``keep[q, k]``: query q may attend to key k; ``pos``: position ids."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    H, KV, hd, d, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rotary_dim, cfg.rms_norm_eps
    W = ids.shape[0]
    x = sd["model.word_embeddings.weight"][ids]
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        a = _rms(x, sd[p + "input_layernorm.weight"], eps)
        qkv = a @ sd[p + "attention.query_key_value.weight"].T + sd[p + "attention.query_key_value.bias"]

        def head(t, j, kind):
            vec = qkv[t, j * hd:(j + 1) * hd]
            if kind == "v":
                return vec
            w = sd[p + ("attention.query_layernorm.weight" if kind == "q" else "attention.key_layernorm.weight")]
            return _rope_one(_rms(vec, w, eps), float(pos[t]), d, cfg.rope_theta)

        out = torch.zeros(W, H * hd, dtype=torch.float64)
        for t in range(W):
            keys = [s for s in range(W) if keep[t, s]]
            for h in range(H):
                j = h // (H // KV)  # GQA: consecutive query heads share a KV head
                q = head(t, h, "q")
                logits = torch.stack([q @ head(s, H + j, "k") for s in keys]) / math.sqrt(hd)
                w = torch.softmax(logits, 0)
                out[t, h * hd:(h + 1) * hd] = sum(wi * head(s, H + KV + j, "v") for wi, s in zip(w, keys))
        x = x + out @ sd[p + "attention.dense.weight"].T + sd[p + "attention.dense.bias"]
        m = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        x = x + (slow_moe(cfg, sd, p + "mlp.", m) if cfg.is_moe_layer(layer) else _swiglu(m, sd, p + "mlp."))
    logits = _rms(x, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T
    if cfg.pin_mask_logit:
        logits[:, cfg.mask_token_id] = -math.inf
    return logits


def test_forward_matches_slow_reference_block_causal():
    model = build(torch.float64)
    b, bl, nb = 2, 4, 3
    T = bl * nb
    x = tokens(b, T)
    mask = block_causal_mask(T, bl, dtype=torch.float64)
    out = model(x, attention_mask=mask).logits
    block = torch.arange(T) // bl
    keep = block[None, :] <= block[:, None]
    for row in range(b):
        ref = slow_forward(model, x[row], keep, torch.arange(T))
        torch.testing.assert_close(out[row].double(), ref, atol=2e-5, rtol=2e-5)
    # The mask matters: full attention gives other logits in the early blocks.
    full = model(x).logits[..., : V - 1]
    out = out[..., : V - 1]
    assert (full[:, :bl] - out[:, :bl]).abs().max() > 1e-2


def test_forward_matches_slow_reference_arbitrary_mask_and_positions():
    model = build(torch.float64, seed=3)
    W = 7
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(W, W, generator=g) < 0.5
    keep |= torch.eye(W, dtype=torch.bool)
    pos = torch.randint(0, 50, (W,), generator=g)
    x = tokens(1, W, seed=7)
    out = model(x, attention_mask=keep[None, None], position_ids=pos[None]).logits[0]
    torch.testing.assert_close(out.double(), slow_forward(model, x[0], keep, pos), atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------- masks


def test_mask_formats_agree():
    model = build(torch.float64)
    T, bl = 10, 4
    x = tokens(2, T)
    additive = block_causal_mask(T, bl, dtype=torch.float64)
    keep = additive == 0
    ref = model(x, attention_mask=additive).logits
    assert torch.equal(model(x, attention_mask=keep).logits, ref)
    # a bf16 mask (as the public LLaDA2.0 generate builds it) is cast to the model dtype
    assert torch.equal(model(x, attention_mask=additive.to(torch.bfloat16)).logits, ref)
    # extra key columns are ignored; a per-row [B, 1, W, K] mask is accepted
    wide = torch.cat([additive, torch.zeros(1, 1, T, 3, dtype=torch.float64)], dim=-1)
    assert torch.equal(model(x, attention_mask=wide).logits, ref)
    assert torch.equal(model(x, attention_mask=additive.expand(2, 1, T, T)).logits, ref)
    # None = full attention = an all-zero mask
    assert torch.equal(model(x).logits, model(x, attention_mask=torch.zeros(1, 1, T, T, dtype=torch.float64)).logits)
    # 2-D = key padding over full attention
    pad = torch.ones(2, T, dtype=torch.long)
    pad[1, :3] = 0
    four = torch.zeros(2, 1, T, T, dtype=torch.float64).masked_fill(pad[:, None, None, :] == 0, -math.inf)
    assert torch.equal(model(x, attention_mask=pad).logits, model(x, attention_mask=four).logits)


def test_rows_are_independent():
    model = build(torch.float64)
    x = tokens(3, 8)
    mask = block_causal_mask(8, 4, dtype=torch.float64)
    batch = model(x, attention_mask=mask, position_ids=torch.arange(8)[None]).logits
    for r in range(3):
        torch.testing.assert_close(model(x[r:r + 1], attention_mask=mask).logits, batch[r:r + 1], atol=1e-12, rtol=0)


def test_padding_keys_do_not_leak():
    model = build(torch.float64)
    x = tokens(1, 8)
    y = x.clone()
    y[0, :3] = torch.tensor([5, 6, 7])
    pad = torch.ones(1, 8, dtype=torch.long)
    pad[0, :3] = 0
    a = model(x, attention_mask=pad).logits[:, 3:]
    b = model(y, attention_mask=pad).logits[:, 3:]
    assert torch.equal(a, b)


def test_bad_masks_and_positions_raise():
    model = build()
    x = tokens(2, 6)
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, attention_mask=torch.zeros(1, 1, 5, 6))
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, attention_mask=torch.ones(2, 6, 6))
    with pytest.raises(ValueError, match="position_ids"):
        model(x, position_ids=torch.arange(5)[None])


# ----------------------------------------------------------------------------- GQA, rotary


def test_gqa_equals_multi_head_with_shared_kv_weights():
    """A GQA model equals a multi-head model whose K/V heads 2j and 2j+1 both copy
    GQA head j (query head h reads KV head h // 2)."""
    gqa = build(torch.float64)
    mha = build(torch.float64, num_key_value_heads=4)
    state = gqa.state_dict()
    hd, H = 16, 4
    for layer in range(2):
        for kind in ("weight", "bias"):
            name = f"model.layers.{layer}.attention.query_key_value.{kind}"
            w = state[name]
            q, k, v = w[: H * hd], w[H * hd: (H + 2) * hd], w[(H + 2) * hd:]
            dup = lambda t: t.reshape(2, hd, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * hd, *t.shape[1:])
            state[name] = torch.cat([q, dup(k), dup(v)])
    mha.load_state_dict(state)
    x = tokens(2, 9)
    mask = block_causal_mask(9, 3, dtype=torch.float64)
    torch.testing.assert_close(gqa(x, attention_mask=mask).logits, mha(x, attention_mask=mask).logits,
                               atol=1e-9, rtol=1e-9)
    # and the pairing is not the other one (h % KV): swapping KV heads changes the output
    name = "model.layers.0.attention.query_key_value.weight"
    swapped = dict(state)
    w = state[name].clone()
    k = w[H * hd:(H + 4) * hd].reshape(4, hd, -1)
    w[H * hd:(H + 4) * hd] = k[[0, 2, 1, 3]].reshape(4 * hd, -1)
    swapped[name] = w
    mha.load_state_dict(swapped)
    diff = gqa(x, attention_mask=mask).logits - mha(x, attention_mask=mask).logits
    assert diff[..., : V - 1].abs().max() > 1e-3


def test_partial_rotary_embedding():
    theta, d, hd = 600000.0, 8, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, hd, generator=g, dtype=torch.float64)
    pos = torch.tensor([[0, 3, 17, 250, 4000]])
    cos, sin = _rotary_cos_sin(pos, d, theta, torch.float64)
    y = _rotate_partial(x, cos, sin)
    assert torch.equal(y[..., d:], x[..., d:])  # the channels past the rotary dim pass through
    for t in range(5):
        for h in range(2):
            ref = _rope_one(x[0, h, t], float(pos[0, t]), d, theta)
            torch.testing.assert_close(y[0, h, t], ref, atol=1e-4, rtol=1e-4)  # cos/sin are float32 math
    # the model's attention only sees relative positions: shifting every position changes little
    model = build(torch.float64)
    ids = tokens(1, 6)
    a = model(ids, position_ids=torch.arange(6)[None]).logits[..., : V - 1]
    b = model(ids, position_ids=torch.arange(6)[None] + 5).logits[..., : V - 1]
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    flipped = model(ids, position_ids=torch.arange(6).flip(0)[None]).logits[..., : V - 1]
    assert (flipped - a).abs().max() > 1e-2


# ----------------------------------------------------------------------------- MoE


def test_moe_routing_matches_slow_per_token_loop():
    model = build(torch.float64, seed=2)
    cfg = model.config
    moe = model.model.layers[1].mlp
    g = torch.Generator().manual_seed(3)
    m = torch.randn(2, 20, 32, generator=g, dtype=torch.float64)
    sd = {k[len("model.layers.1.mlp."):]: v.double() for k, v in model.state_dict().items()
          if k.startswith("model.layers.1.mlp.")}
    ref = slow_moe(cfg, sd, "", m.reshape(40, 32))
    torch.testing.assert_close(moe(m).reshape(40, 32), ref, atol=1e-5, rtol=1e-5)

    # The test has power: group limitation, the bias and the weighting all matter here.
    chosen, weight = moe.gate(m.reshape(40, 32))
    assert chosen.dtype == torch.int64 and weight.dtype == torch.float32 and chosen.shape == (40, 2)
    scores = torch.sigmoid(m.reshape(40, 32).float() @ moe.gate.weight.float().T)
    biased = scores + moe.gate.expert_bias.float()
    assert (biased.topk(2).indices.sort().values != chosen.sort().values).any(dim=-1).any()  # groups bite
    assert (scores.topk(2).indices.sort().values != chosen.sort().values).any(dim=-1).any()  # bias routes
    unbiased_weights = scores.gather(1, chosen)
    torch.testing.assert_close(weight, unbiased_weights / unbiased_weights.sum(-1, keepdim=True) * 2.5)


def test_moe_without_shared_experts_and_single_expert_per_token():
    model = build(torch.float64, seed=4, num_shared_experts=None, num_experts_per_tok=1)
    assert model.model.layers[1].mlp.shared_experts is None
    prefix = "model.layers.1.mlp."
    sd = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    m = torch.randn(9, 32, dtype=torch.float64)
    torch.testing.assert_close(model.model.layers[1].mlp(m[None])[0], slow_moe(model.config, sd, "", m),
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("bl", [3, 4])
def test_dynamic_cache_block_equals_uncached_float64(bl):
    """A block computed against a DynamicCache holding the earlier blocks equals the
    same block in the uncached window and in the whole canvas, bit for bit in float64
    (torch.equal: here no BLAS kernel changes the summation order with the row count)."""
    model = build(torch.float64)
    nb = 4
    T = bl * nb
    x = tokens(2, T)
    mask = block_causal_mask(T, bl, dtype=torch.float64)
    whole = model(x, attention_mask=mask, output_hidden_states=True, use_cache=False)
    for cur in range(1, nb):
        s, e = cur * bl, (cur + 1) * bl
        cache = DynamicCache()
        model(x[:, :s], attention_mask=mask[..., :s, :s], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == s
        step = model(x[:, s:e], attention_mask=mask[..., s:e, :e], past_key_values=cache, use_cache=True,
                     output_hidden_states=True)
        assert step.past_key_values is cache and cache.get_seq_length() == e
        window = model(x[:, :e], attention_mask=mask[..., :e, :e], use_cache=False, output_hidden_states=True)
        for ref in (window, whole):
            assert torch.equal(step.hidden_states[-1], ref.hidden_states[-1][:, s:e])  # float64 hidden
            assert torch.equal(step.logits, ref.logits[:, s:e])
        # the same with the cache grown one block per call, as a block sampler does
        grown = DynamicCache()
        for blk in range(cur):
            a, b_ = blk * bl, (blk + 1) * bl
            model(x[:, a:b_], attention_mask=mask[..., a:b_, :b_], past_key_values=grown, use_cache=True)
        again = model(x[:, s:e], attention_mask=mask[..., s:e, :e], past_key_values=grown, use_cache=True)
        assert torch.equal(again.logits, step.logits)
        # default positions continue after the cache; attention_mask=None sees everything cached
        cache2 = DynamicCache()
        model(x[:, :s], attention_mask=mask[..., :s, :s], past_key_values=cache2, use_cache=True)
        assert torch.equal(model(x[:, s:e], past_key_values=cache2).logits, step.logits)


def test_custom_cache_sees_post_rotary_keys_with_layer_index():
    calls = []

    class Spy(DynamicCache):
        def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
            calls.append((layer_idx, key_states.shape, sorted(cache_kwargs)))
            return super().update(key_states, value_states, layer_idx, cache_kwargs)

    model = build()
    model(tokens(2, 5), past_key_values=Spy(), use_cache=True)
    assert calls == [(0, (2, 2, 5, 16), ["cos", "sin"]), (1, (2, 2, 5, 16), ["cos", "sin"])]


def test_use_cache_default_and_off():
    model = build()
    x = tokens(1, 4)
    assert isinstance(model(x).past_key_values, DynamicCache)  # config.use_cache = True, as public
    assert model(x, use_cache=False).past_key_values is None


# ----------------------------------------------------------------------------- dtypes, shapes, logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_and_shapes(dtype):
    model = build(dtype)
    x = tokens(3, 8)
    mask = block_causal_mask(8, 4, dtype=dtype)
    out = model(x, attention_mask=mask, output_hidden_states=True)
    assert out.logits.shape == (3, 8, V) and out.logits.dtype == torch.float32
    assert all(h.dtype == dtype and h.shape == (3, 8, 32) for h in out.hidden_states)
    assert len(out.hidden_states) == 3
    finite = out.logits[..., : V - 1]
    assert torch.isfinite(finite).all()
    assert (out.logits[..., V - 1] == -math.inf).all()  # the pinned mask logit
    ref = build(torch.float32)(x, attention_mask=mask.float()).logits[..., : V - 1]
    if dtype == torch.float64:
        torch.testing.assert_close(finite, ref, atol=1e-4, rtol=1e-4)
    elif dtype == torch.bfloat16:  # bf16 rounding flips some MoE routes: most logits stay close
        assert float(((finite - ref).abs() < 0.5).float().mean()) > 0.9


def test_logits_to_keep_and_outputs():
    model = build(torch.float64)
    x = tokens(2, 9)
    full = model(x).logits
    assert torch.equal(model(x, logits_to_keep=3).logits, full[:, -3:])
    assert torch.equal(model(x, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])
    assert torch.equal(model(x, logits_to_keep=0).logits, full)
    tup = model(x, return_dict=False, use_cache=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], full)


def test_logit_spread_and_unpinned_mask():
    model = build(pin_mask_logit=False)
    logits = model(tokens(4, 16)).logits
    assert torch.isfinite(logits).all()
    assert 2.0 < float(logits.std(-1).mean()) < 8.0  # logit_std 4
    top = logits.softmax(-1).max(-1).values
    assert float(top.min()) < 0.3 and float(top.max()) > 0.5  # confidences spread around thresholds


def test_forward_makes_no_host_sync():
    model = build()
    x = tokens(2, 8)
    mask = block_causal_mask(8, 4)
    cache = DynamicCache()
    model(x[:, :4], attention_mask=mask[..., :4, :4], past_key_values=cache)
    with forbid_host_sync(), step_scope():
        model(x[:, 4:], attention_mask=mask[..., 4:, :], position_ids=torch.arange(4, 8)[None],
              past_key_values=cache, use_cache=True, logits_to_keep=2)
        model(x, attention_mask=mask == 0)
        model(x, attention_mask=torch.ones(2, 8, dtype=torch.long))
    with forbid_host_sync(), step_scope(), pytest.raises(HostSyncError):  # the guard is live
        x.sum().item()


# ----------------------------------------------------------------------------- config, names, registration


def test_config_accepts_public_fields_and_defaults():
    cfg = LLaDA2Config()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (30592, 1024, 24, 16)
    assert cfg.num_key_value_heads == 16 and cfg.head_dim == 64  # 0 -> heads (LLaDA2.1), None -> hidden // heads
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group) == (16, 2, 8, 4)
    assert (cfg.routed_scaling_factor, cfg.partial_rotary_factor, cfg.num_shared_experts) == (2.5, 0.5, 0)
    assert cfg.use_qk_norm and cfg.use_bias and not cfg.use_qkv_bias and cfg.use_cache and not cfg.pin_mask_logit
    hub = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, num_experts=8, num_shared_experts=1, num_experts_per_tok=2,
               n_group=4, topk_group=2, moe_intermediate_size=16, first_k_dense_replace=1, rope_theta=600000,
               pad_token_id=V - 2, norm_topk_prob=True, score_function="sigmoid", router_dtype="fp32",
               moe_router_enable_expert_bias=True, use_sliding_window=False, rope_scaling=None,
               model_type="llada2_moe", architectures=["LLaDA2MoeModelLM"])
    cfg = LLaDA2Config(**hub)
    assert cfg.norm_topk_prob is True and cfg.rotary_dim == 8
    LLaDA2ForBlockDiffusion(cfg)
    tiny = llada2_tiny_config()
    assert (tiny.vocab_size, tiny.mask_token_id, tiny.eos_token_id, tiny.pad_token_id) == (512, 511, 510, 510)
    like = llada2_like_config()
    assert (like.vocab_size, like.mask_token_id, like.eos_token_id) == (LLADA2_VOCAB_SIZE, LLADA2_MASK_ID,
                                                                         LLADA2_EOS_ID)
    assert like.hidden_size == 32 and like.pin_mask_logit


@pytest.mark.parametrize("overrides, words", [
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(partial_rotary_factor=0.1), "rotary dim"),
    (dict(num_experts=6), "n_group"),
    (dict(n_group=8), "n_group"),
    (dict(topk_group=5), "topk_group"),
    (dict(num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(moe_intermediate_size=None), "moe_intermediate_size"),
    (dict(intermediate_size=None), "intermediate_size"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(mask_token_id=None), "pin_mask_logit"),
])
def test_bad_configs_raise(overrides, words):
    with pytest.raises(ValueError, match=words):
        LLaDA2ForBlockDiffusion(llada2_tiny_config(**overrides))


def test_parameter_names_follow_the_hub_checkpoint():
    names = set(build().state_dict())
    expected = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
    for layer in range(2):
        p = f"model.layers.{layer}."
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                     p + "attention.query_key_value.weight", p + "attention.query_key_value.bias",
                     p + "attention.query_layernorm.weight", p + "attention.key_layernorm.weight",
                     p + "attention.dense.weight", p + "attention.dense.bias"}
    expected |= {f"model.layers.0.mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    expected |= {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.expert_bias"}
    expected |= {f"model.layers.1.mlp.experts.{e}.{n}_proj.weight" for e in range(8) for n in ("gate", "up", "down")}
    expected |= {f"model.layers.1.mlp.shared_experts.{n}_proj.weight" for n in ("gate", "up", "down")}
    assert names == expected


def test_auto_classes_and_save_load(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is LLaDA2Config
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LLaDA2ForBlockDiffusion
    x = tokens(1, 6)
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert type(AutoModel.from_config(llada2_tiny_config())) is LLaDA2ForBlockDiffusion


def test_like_config_forward():
    torch.manual_seed(0)
    model = LLaDA2ForBlockDiffusion(llada2_like_config()).eval()
    x = torch.randint(0, LLADA2_EOS_ID, (1, 6))
    logits = model(x, logits_to_keep=2).logits
    assert logits.shape == (1, 2, LLADA2_VOCAB_SIZE)
    assert (logits[..., LLADA2_MASK_ID] == -math.inf).all() and torch.isfinite(logits[..., :LLADA2_MASK_ID]).all()
    assert model.model.word_embeddings.padding_idx == LLADA2_EOS_ID
