"""dmkernels.models.sdar: SDAR's architecture (Qwen3-style, block-causal
attention) against a slow per-query reference, its mask formats, GQA, the
store_kv cache semantics, exact cached-vs-uncached float64 logits, dtypes,
transformers integration and host-sync freedom."""
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from dmkernels.constants import SDAR_EOS_ID, SDAR_MASK_ID, SDAR_VOCAB_SIZE
from dmkernels.models import SDARConfig, SDARForBlockDiffusion, SDARModel, sdar_like_config, sdar_tiny_config
from dmkernels.testing import forbid_host_sync, step_scope
from parity_harness import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 512


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def build(dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    return SDARForBlockDiffusion(sdar_tiny_config(V, **overrides)).eval().to(dtype)


def tokens(b, length, seed=1):
    return torch.randint(0, V - 1, (b, length), generator=torch.Generator().manual_seed(seed))


def block_causal(total, bl, rows=None):
    """bool [rows, total]: query i sees key j iff block(j) <= block(i); ``rows``
    are the last rows of the square (the current queries)."""
    blocks = torch.arange(total) // bl
    full = blocks[None, :] <= blocks[:, None]
    return full if rows is None else full[total - rows:]


# ----------------------------------------------------------------------------- slow reference


def rms(x, weight, eps):
    xf = x.double()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def slow_forward(model, ids, visible, positions=None):
    """Float64 logits of ``model`` with attention written as explicit loops over
    queries and heads: query ``i`` of head ``h`` attends to the keys ``j`` with
    ``visible[i, j]``, through key/value head ``h // (H / KV)``. Independent of
    the model's rope, GQA and mask code (same weights)."""
    cfg = model.config
    H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    L = ids.shape[0]
    pos = torch.arange(L) if positions is None else positions
    # Angles, cos and sin in float32, as the public model computes them.
    inv_freq = 1.0 / torch.tensor([cfg.rope_theta ** (2 * i / hd) for i in range(hd // 2)], dtype=torch.float32)
    angle = pos.float()[:, None] * inv_freq
    cos, sin = angle.cos().double(), angle.sin().double()

    def rope(v):  # v [L, hd]: rotate the pairs (i, i + hd/2) by the angle of frequency i
        a, b = v[:, : hd // 2], v[:, hd // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def lin(layer, x):
        y = x @ layer.weight.double().T
        return y if layer.bias is None else y + layer.bias.double()

    x = model.model.embed_tokens.weight.double()[ids]
    for layer in model.model.layers:
        att = layer.self_attn
        h = rms(x, layer.input_layernorm.weight, cfg.rms_norm_eps)
        q, k, v = lin(att.q_proj, h), lin(att.k_proj, h), lin(att.v_proj, h)
        out = torch.zeros(L, H * hd, dtype=torch.float64)
        for head in range(H):
            g = head // (H // KV)
            qh = rope(rms(q[:, head * hd:(head + 1) * hd], att.q_norm.weight, cfg.rms_norm_eps))
            kh = rope(rms(k[:, g * hd:(g + 1) * hd], att.k_norm.weight, cfg.rms_norm_eps))
            vh = v[:, g * hd:(g + 1) * hd]
            for i in range(L):
                keys = visible[i].nonzero().flatten()
                w = torch.softmax((kh[keys] @ qh[i]) / math.sqrt(hd), dim=0)
                out[i, head * hd:(head + 1) * hd] = w @ vh[keys]
        x = x + lin(att.o_proj, out)
        h = rms(x, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
        mlp = layer.mlp
        x = x + lin(mlp.down_proj, torch.nn.functional.silu(lin(mlp.gate_proj, h)) * lin(mlp.up_proj, h))
    x = rms(x, model.model.norm.weight, cfg.rms_norm_eps)
    logits = x @ model.lm_head.weight.double().T
    if cfg.suppress_mask_logit:
        logits[:, cfg.mask_token_id] = -math.inf
    return logits


@pytest.mark.parametrize("bl,kv_heads,bias", [(4, 2, False), (3, 4, True), (5, 1, False)])
def test_block_causal_forward_matches_slow_reference(bl, kv_heads, bias):
    model = build(torch.float64, num_key_value_heads=kv_heads, attention_bias=bias)
    ids = tokens(1, 11)
    visible = block_causal(11, bl)
    ours = model(ids, attention_mask=visible[None]).logits[0]
    ref = slow_forward(model, ids[0], visible)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    # The mask matters: full attention gives other logits.
    full = model(ids).logits[0]
    assert (full - ours)[:-bl, :-1].abs().max() > 1e-3


def test_positions_are_used():
    model = build(torch.float64)
    ids = tokens(1, 6)
    visible = torch.ones(6, 6, dtype=torch.bool)
    positions = torch.tensor([3, 4, 5, 9, 10, 11])
    ours = model(ids, attention_mask=visible[None], position_ids=positions[None]).logits[0]
    torch.testing.assert_close(ours, slow_forward(model, ids[0], visible, positions), atol=1e-10, rtol=1e-10)
    # A common shift of every position changes nothing (RoPE is relative).
    # (up to the float32 rounding of the rotary angles, as in the public model).
    shifted = model(ids, position_ids=positions[None] + 100).logits[0]
    torch.testing.assert_close(shifted, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(ids, position_ids=positions[None].flip(-1)).logits[0], ours)


def test_attention_bias_is_used():
    model = build(torch.float64, attention_bias=True)
    ids = tokens(1, 5)
    before = model(ids).logits
    model.model.layers[1].self_attn.k_proj.bias.add_(0.5)
    assert not torch.allclose(model(ids).logits, before)


# ----------------------------------------------------------------------------- masks


def test_mask_formats_agree():
    """SDAR's 3-D float 0/1 keep mask, bool 3-D/4-D, additive 0/-inf and
    0/finfo.min masks and an int mask give the same logits."""
    model = build(torch.float64)
    ids = tokens(2, 12)
    keep = block_causal(12, 4)
    want = model(ids, attention_mask=keep[None]).logits
    forms = [
        keep.float()[None],                                   # SDAR: float32 0/1, 3-D, batch 1
        keep.double()[None, None].expand(2, 1, 12, 12),       # 4-D keep, batch 2
        keep.long()[None],
        torch.zeros(12, 12).masked_fill(~keep, -math.inf)[None],
        torch.zeros(12, 12, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)[None, None],
    ]
    for mask in forms:
        assert torch.equal(model(ids, attention_mask=mask).logits, want), mask.dtype
    # An all-zero float mask is additive (nothing masked), i.e. full attention.
    assert torch.equal(model(ids, attention_mask=torch.zeros(1, 12, 12)).logits, model(ids).logits)


def test_key_padding_and_empty_rows():
    model = build()
    ids = tokens(2, 8)
    pad = torch.ones(2, 8, dtype=torch.bool)
    pad[1, :3] = False
    out = model(ids, attention_mask=pad).logits
    # Row 1 with its pads hidden equals row 1 without its pads (positions shifted alike).
    alone = model(ids[1:, 3:], position_ids=torch.arange(3, 8)[None]).logits
    torch.testing.assert_close(out[1, 3:], alone[0], atol=1e-5, rtol=1e-5)
    # A query that sees no key gives finite output, not NaN.
    blind = torch.ones(1, 8, 8, dtype=torch.bool)
    blind[0, 2] = False
    assert torch.isfinite(model(ids, attention_mask=blind).logits[..., :-1]).all()


def test_mask_shape_errors():
    model = build()
    ids = tokens(1, 6)
    with pytest.raises(ValueError, match="attention_mask covers 5 keys"):
        model(ids, attention_mask=torch.ones(1, 6, 5))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, attention_mask=torch.ones(1, 4, 6))
    with pytest.raises(ValueError, match="attention_mask must be 2-D, 3-D or 4-D"):
        model(ids, attention_mask=torch.ones(6))
    with pytest.raises(TypeError, match="past_key_values must be a transformers Cache"):
        model(ids, past_key_values=((torch.zeros(1), torch.zeros(1)),))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


# ----------------------------------------------------------------------------- cache


def test_store_kv_semantics():
    model = build(torch.float64)
    ids = tokens(1, 12)
    mask = block_causal(12, 4).double()
    cache = DynamicCache()
    out = model(ids[:, :8], attention_mask=mask[None, :8, :8], past_key_values=cache, use_cache=True, store_kv=True)
    assert out.past_key_values is cache and cache.get_seq_length() == 8
    k0, k1 = cache.layers[0].keys.clone(), cache.layers[1].keys.clone()
    # store_kv=False: attends to the cache and stores nothing.
    step = model(ids[:, 8:], attention_mask=mask[None, 8:], past_key_values=cache, use_cache=True, store_kv=False)
    assert cache.get_seq_length() == 8 and torch.equal(cache.layers[0].keys, k0)
    # store_kv=True on the same block: same logits, and the cache grows by 4.
    again = model(ids[:, 8:], attention_mask=mask[None, 8:], past_key_values=cache, use_cache=True, store_kv=True)
    assert torch.equal(again.logits, step.logits)
    assert cache.get_seq_length() == 12 and torch.equal(cache.layers[1].keys[:, :, :8], k1)
    # Default positions continue after the cache: explicit positions give the same logits.
    cache2 = DynamicCache()
    model(ids[:, :8], attention_mask=mask[None, :8, :8], past_key_values=cache2, store_kv=True)
    explicit = model(ids[:, 8:], attention_mask=mask[None, 8:], position_ids=torch.arange(8, 12)[None],
                     past_key_values=cache2)
    assert torch.equal(explicit.logits, step.logits)
    # use_cache=False (the presets' config.use_cache, like SDAR-4B-Chat's config.json):
    # no cache in the output; a new cache is created when asked for.
    assert model(ids).past_key_values is None
    fresh = model(ids, use_cache=True, store_kv=True).past_key_values
    assert isinstance(fresh, DynamicCache) and fresh.get_seq_length() == 12


def test_cache_without_store_and_empty_cache():
    model = build(torch.float64)
    ids = tokens(1, 4)
    # An empty cache (and store_kv=False) is the same as no cache.
    assert torch.equal(model(ids, past_key_values=DynamicCache()).logits, model(ids).logits)


@pytest.mark.parametrize("bl,prompt_blocks", [(4, 2), (3, 1), (4, 0)])
def test_cached_block_logits_equal_uncached_float64(bl, prompt_blocks):
    """Exact block cache: each block's logits computed from the cache (keys of
    earlier blocks stored by store_kv) equal the rows of one uncached
    block-causal forward over the whole canvas, to atol 1e-12 (rtol 0), with
    the same argmax. Not torch.equal: float64 GEMM on this CPU sums in an
    order that depends on the number of rows (F.linear on rows [s, e) of an
    M-row input differs in the last ulp from F.linear on those rows alone),
    and SDPA's sums change with the number of (masked) keys; the differences
    seen are ~1e-14."""
    model = build(torch.float64, num_key_value_heads=2, attention_bias=True)
    n_blocks = prompt_blocks + 3
    total = n_blocks * bl
    ids = tokens(2, total)
    mask = block_causal(total, bl).double()[None]
    full = model(ids, attention_mask=mask).logits
    cache = DynamicCache()
    if prompt_blocks:
        p = prompt_blocks * bl
        model(ids[:, :p], attention_mask=mask[:, :p, :p], past_key_values=cache, use_cache=True, store_kv=True)
    for block in range(prompt_blocks, n_blocks):
        s, e = block * bl, (block + 1) * bl
        step = model(ids[:, s:e], attention_mask=mask[:, s:e, :e], position_ids=torch.arange(s, e)[None],
                     past_key_values=cache, use_cache=True, store_kv=False).logits
        torch.testing.assert_close(step, full[:, s:e], atol=1e-12, rtol=0)
        assert torch.equal(step.argmax(-1), full[:, s:e].argmax(-1))
        model(ids[:, s:e], attention_mask=mask[:, s:e, :e], position_ids=torch.arange(s, e)[None],
              past_key_values=cache, use_cache=True, store_kv=True)
    assert cache.get_seq_length() == total


# ----------------------------------------------------------------------------- logits, dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_and_logits_to_keep(dtype):
    model = build(dtype)
    ids = tokens(3, 9)
    mask = block_causal(9, 3)[None]
    out = model(ids, attention_mask=mask)
    assert out.logits.shape == (3, 9, V) and out.logits.dtype == dtype
    assert torch.isfinite(out.logits[..., :-1]).all()
    last = model(ids, attention_mask=mask, logits_to_keep=3).logits
    picked = model(ids, attention_mask=mask, logits_to_keep=torch.tensor([0, 4])).logits
    tol = dict(atol=0.05, rtol=0.02) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    assert last.shape == (3, 3, V) and picked.shape == (3, 2, V)
    torch.testing.assert_close(last, out.logits[:, -3:], **tol)
    torch.testing.assert_close(picked, out.logits[:, [0, 4]], **tol)
    if dtype != torch.bfloat16:  # bf16 agrees with float32 only loosely; the rest must be close
        ref = build(torch.float64)(ids, attention_mask=mask).logits
        torch.testing.assert_close(out.logits.double(), ref, atol=1e-4, rtol=1e-4)


def test_mask_logit_suppression_and_spread():
    on = build()
    off = build(suppress_mask_logit=False)
    ids = tokens(2, 10)
    a, b = on(ids).logits, off(ids).logits
    assert (a[..., V - 1] == -math.inf).all() and torch.isfinite(b).all()
    assert torch.equal(a[..., :-1], b[..., :-1])
    # logit_std: logits spread enough for confident and unconfident positions.
    assert 3.0 < b.std() < 5.0
    top = torch.softmax(b, -1).max(-1).values
    assert top.max() > 0.5 and top.min() < 0.3
    # The public initialisation (logit_std=None) gives nearly uniform logits.
    public = build(logit_std=None, suppress_mask_logit=False)
    assert public(ids).logits.std() < 0.5


def test_forward_has_no_host_sync():
    model = build()
    ids = tokens(2, 8)
    mask = block_causal(8, 4).float()[None]
    cache = DynamicCache()
    with forbid_host_sync(), step_scope():
        model(ids[:, :4], attention_mask=mask[:, :4, :4], past_key_values=cache, store_kv=True)
        model(ids[:, 4:], attention_mask=mask[:, 4:], past_key_values=cache, store_kv=False, logits_to_keep=2)
        model(ids, attention_mask=mask, logits_to_keep=torch.tensor([1, 5]))


# ----------------------------------------------------------------------------- config, transformers


def test_configs():
    cfg = sdar_tiny_config()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (
        512, 32, 4, 2, 8)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.block_size, cfg.suppress_mask_logit) == (511, 510, 4, True)
    like = sdar_like_config()
    assert (like.vocab_size, like.mask_token_id, like.eos_token_id) == (SDAR_VOCAB_SIZE, SDAR_MASK_ID, SDAR_EOS_ID)
    # The public class's defaults.
    default = SDARConfig()
    got = (default.vocab_size, default.hidden_size, default.num_key_value_heads, default.head_dim,
           default.rope_theta, default.rms_norm_eps, default.attention_bias)
    assert got == (SDAR_VOCAB_SIZE, 4096, 32, 128, 1e4, 1e-6, False)
    assert SDARConfig(num_attention_heads=8, num_key_value_heads=None).num_key_value_heads == 8
    with pytest.raises(ValueError, match="num_key_value_heads"):
        SDARConfig(num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="head_dim"):
        SDARConfig(head_dim=7)
    with pytest.raises(ValueError, match="rope"):
        SDARConfig(rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="mask_token_id"):
        SDARConfig(vocab_size=10, mask_token_id=10)
    with pytest.raises(ValueError, match="suppress_mask_logit"):
        SDARConfig(suppress_mask_logit=True)


def test_hub_config_dict_is_accepted():
    """The keys of SDAR-4B-Chat's config.json (sizes shrunk) build our model."""
    hub = {
        "architectures": ["SDARForCausalLM"], "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig"},
        "attention_bias": False, "attention_dropout": 0.0, "attn_implementation": "flex_attention",
        "bos_token_id": SDAR_EOS_ID, "debug": False, "eos_token_id": SDAR_EOS_ID, "block_size": 4,
        "mask_token_id": SDAR_MASK_ID, "ep_size": 1, "fuse_cross_entropy": True, "head_dim": 8, "hidden_act": "silu",
        "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 32768,
        "max_window_layers": 36, "micro_forward": False, "model_type": "sdar", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000, "skip_checkpoint": False, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": False, "use_deepep": False, "use_sliding_window": False,
        "vocab_size": SDAR_VOCAB_SIZE,
    }
    cfg = SDARConfig(**hub)
    assert cfg.model_type == "dmkernels_sdar" and cfg.mask_token_id == SDAR_MASK_ID and cfg.use_cache is False
    model = SDARForBlockDiffusion(cfg).eval()
    out = model(torch.tensor([[1, 2, 3, 4]]), logits_to_keep=1)
    assert out.logits.shape == (1, 1, SDAR_VOCAB_SIZE) and out.past_key_values is None


def test_transformers_integration(tmp_path):
    cfg = sdar_tiny_config()
    assert isinstance(AutoConfig.for_model(**cfg.to_dict()), SDARConfig)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), SDARForBlockDiffusion)
    assert isinstance(AutoModel.from_config(cfg), SDARModel)
    model = build()
    names = set(model.state_dict())
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight",
            "model.layers.1.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight",
            "model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"} <= names
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = tokens(1, 6)
    assert torch.equal(again(ids).logits, model(ids).logits)
    tied = SDARForBlockDiffusion(sdar_tiny_config(tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert model(ids, return_dict=False)[0].shape == (1, 6, V)
