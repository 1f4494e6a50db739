"""Bad input to the sampler API (generate, infill, the drop-ins, the policies) gets a
clear error naming the argument and the function the user called, before any model
call; never a crash deep inside or a silently different generation."""
from __future__ import annotations

import math
import types

import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.compat import dream, fast_dllm, llada
from dmkernels.learned import LearnedPolicy, MLPScorer
from dmkernels.testing import forbid_host_sync

V = 37
MASK = V - 1


class Toy(torch.nn.Module):
    """Records its calls; ``vocab_size`` set gives it a config (the vocabulary known up front)."""

    def __init__(self, vocab_size=None, out=None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, 8, generator=g))
        self.head = torch.nn.Parameter(torch.randn(8, V, generator=g))
        if vocab_size is not None:
            self.config = types.SimpleNamespace(vocab_size=vocab_size)
        self.out = out  # replaces the logits: a function of them
        self.calls = 0

    def forward(self, x, attention_mask=None, tok_idx=None):
        self.calls += 1
        h = self.emb[x]  # an id outside [0, V) fails here, as in any embedding
        logits = (h + h.mean(1, keepdim=True)) @ self.head
        return logits if self.out is None else self.out(logits)


def ids(B=2, P_len=3):
    return torch.arange(B * P_len).reshape(B, P_len) % (MASK - 1)


KW = dict(gen_length=4, block_length=4, steps=2, policy=P.LowConfidence(), mask_id=MASK)

# (keyword overrides, exception, words the message must contain)
BAD_GENERATE = [
    (dict(cfg_scale=math.inf), ValueError, ["cfg_scale", "inf"]),
    (dict(cfg_scale=math.nan), ValueError, ["cfg_scale", "nan"]),
    (dict(cfg_scale=-0.5), ValueError, ["cfg_scale"]),
    (dict(cfg_scale="1.5"), TypeError, ["cfg_scale", "str"]),
    (dict(temperature="0.5"), TypeError, ["temperature", "str"]),
    (dict(temperature=True), TypeError, ["temperature", "bool"]),
    (dict(temperature=math.nan), ValueError, ["temperature", "nan"]),
    (dict(temperature=math.inf), ValueError, ["temperature", "inf"]),
    (dict(temperature=-0.1), ValueError, ["temperature"]),
    (dict(temperature=1e-40), ValueError, ["temperature", "2**-100"]),  # 1 / T overflows float32
    (dict(seed=1.5), TypeError, ["seed", "float"]),
    (dict(seed="7"), TypeError, ["seed", "str"]),
    (dict(seed=True), TypeError, ["seed", "bool"]),
    (dict(seed=-1), ValueError, ["seed", "-1"]),
    (dict(seed=2**64), ValueError, ["seed"]),
    (dict(eos_token_id=-1), ValueError, ["eos_token_id"]),
    (dict(eos_token_id=3.0), TypeError, ["eos_token_id", "float"]),
    (dict(eos_token_id=MASK), ValueError, ["eos_token_id", "mask_id"]),
    (dict(mask_id=float(MASK)), TypeError, ["mask_id", "must be an int", "float"]),
    (dict(mask_id=-1), ValueError, ["mask_id"]),
    (dict(backend="cuda"), ValueError, ["backend", "cuda"]),
    (dict(cache="triple"), ValueError, ["cache", "triple"]),
]


@pytest.mark.parametrize("index", range(len(BAD_GENERATE)))
def test_generate_refuses_bad_arguments_before_any_model_call(index):
    overrides, kind, words = BAD_GENERATE[index]
    model = Toy()
    with pytest.raises(kind) as info:
        dmkernels.generate(model, ids(), **dict(KW, **overrides))
    message = str(info.value)
    assert message.startswith("dmkernels.generate: "), message
    for word in words:
        assert word in message, (word, message)
    assert model.calls == 0


@pytest.mark.parametrize("overrides,words", [
    (dict(eos_token_id=V), ["eos_token_id", f"[0, {V})"]),
    (dict(mask_id=V), ["mask_id", f"[0, {V})"]),
])
def test_ids_outside_a_known_vocabulary_are_refused(overrides, words):
    model = Toy(vocab_size=V)
    with pytest.raises(ValueError) as info:
        dmkernels.generate(model, ids(), **dict(KW, **overrides))
    assert all(w in str(info.value) for w in ["dmkernels.generate"] + words), str(info.value)
    assert model.calls == 0


@pytest.mark.parametrize("bad", [V + 5, -3])
def test_input_ids_outside_a_known_vocabulary_are_refused_before_the_model(bad):
    model = Toy(vocab_size=V)
    x = ids()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=rf"^dmkernels\.generate: input_ids holds id {bad}, outside the vocabulary"):
        dmkernels.generate(model, x, **KW)
    assert model.calls == 0


def test_negative_input_ids_are_refused_even_with_an_unknown_vocabulary():
    model = Toy()
    x = ids()
    x[0, 0] = -1
    with pytest.raises(ValueError, match=r"^dmkernels\.generate: input_ids holds id -1"):
        dmkernels.generate(model, x, **KW)
    assert model.calls == 0


def test_input_ids_past_an_unknown_vocabulary_name_input_ids_not_an_index_error():
    """Without model.config.vocab_size the model's embedding is the first to see the id."""
    model = Toy()
    x = ids()
    x[0, 1] = V + 100
    with pytest.raises(ValueError) as info:
        dmkernels.generate(model, x, **KW)
    message = str(info.value)
    assert message.startswith("dmkernels.generate: ") and f"input_ids holds id {V + 100}" in message, message
    assert isinstance(info.value.__cause__, IndexError)
    assert model.calls == 1


def test_ids_past_the_width_of_the_logits_are_refused_before_anything_is_committed():
    """A model whose logits are narrower than the ids (no embedding failure to catch):
    the first call's logits width is checked before the step commits."""
    narrow = Toy(out=lambda logits: logits[..., :20].contiguous())
    with pytest.raises(ValueError, match=r"^dmkernels\.generate: mask_id = 36 is outside the model's vocabulary "
                                         r"\[0, 20\)"):
        dmkernels.generate(narrow, ids() % 10, **KW)
    assert narrow.calls == 1
    with pytest.raises(ValueError, match=r"^dmkernels\.generate: input_ids holds id 25 .*\[0, 20\)"):
        dmkernels.generate(narrow, torch.full((1, 2), 25), **dict(KW, mask_id=5))


def test_an_empty_batch_is_refused_clearly():
    model = Toy()
    with pytest.raises(ValueError, match=r"^dmkernels\.generate: input_ids has no rows"):
        dmkernels.generate(model, ids()[:0], **KW)
    with pytest.raises(ValueError, match=r"^dmkernels\.infill: canvas has no rows"):
        dmkernels.infill(model, torch.full((0, 4), MASK), steps=2, policy=P.LowConfidence(), mask_id=MASK)
    assert model.calls == 0


@pytest.mark.parametrize("out,kind,words", [
    (lambda logits: logits[:, 0], ValueError, ["model's output", "[2, 37]", "[2, 7, V]"]),  # [B, V]
    (lambda logits: logits[:, 1:], ValueError, ["model's output", "[2, 6, 37]"]),  # a row short
    (lambda logits: logits.double(), TypeError, ["model's output", "float64"]),
])
def test_a_model_output_of_the_wrong_shape_or_dtype_is_named(out, kind, words):
    model = Toy(out=out)
    with pytest.raises(kind) as info:
        dmkernels.generate(model, ids(), **KW)
    message = str(info.value)
    assert message.startswith("dmkernels.generate: "), message
    assert all(w in message for w in words), message


def test_infill_errors_name_infill():
    model = Toy()
    canvas = torch.full((2, 5), MASK)
    canvas[:, 0] = 3
    kw = dict(steps=5, policy=P.LowConfidence(), mask_id=MASK)
    for overrides, word in [(dict(cfg_scale=math.inf), "cfg_scale"), (dict(temperature="1"), "temperature"),
                            (dict(seed=-2), "seed"), (dict(block_length=2), "block_length")]:
        with pytest.raises((TypeError, ValueError)) as info:
            dmkernels.infill(model, canvas, **dict(kw, **overrides))
        assert str(info.value).startswith("dmkernels.infill: ") and word in str(info.value), str(info.value)
    bad = canvas.clone()
    bad[1, 3] = -7
    with pytest.raises(ValueError, match=r"^dmkernels\.infill: canvas holds id -7"):
        dmkernels.infill(model, bad, **kw)
    with pytest.raises(ValueError, match=r"^dmkernels\.infill: the model's output logits"):
        dmkernels.infill(Toy(out=lambda logits: logits[:, 0]), canvas, **kw)
    assert model.calls == 0


def test_valid_edge_values_still_generate():
    """Ints for real arguments, seed 0, eos_token_id 0 and threshold 0 / 1 are fine,
    with the vocabulary known up front and no host sync inside a step."""
    model = Toy(vocab_size=V)
    with forbid_host_sync():
        out = dmkernels.generate(model, ids(), **dict(KW, temperature=1, cfg_scale=0, seed=0, eos_token_id=0))
    assert out.sequences.shape == (2, 7) and not (out.sequences == MASK).any()
    for policy in (P.Threshold(0.0), P.Threshold(1), P.Factor(0.0), P.EntropyBounded(0),
                   P.LowConfidence(alg_temp=0.0), P.Dilated(2, remask_threshold=1.0)):
        out = dmkernels.generate(model, ids(), **dict(KW, policy=policy))
        assert not (out.sequences == MASK).any(), policy


# ----------------------------------------------------------------------------- drop-ins

def test_llada_drop_in_names_itself_and_its_prompt():
    model = Toy()
    with pytest.raises(TypeError, match=r"^dmkernels\.compat\.llada\.generate: temperature"):
        llada.generate(model, ids(), steps=2, gen_length=4, block_length=4, temperature="0.5", mask_id=MASK)
    with pytest.raises(ValueError, match=r"^dmkernels\.compat\.llada\.generate: cfg_scale"):
        llada.generate(model, ids(), steps=2, gen_length=4, block_length=4, cfg_scale=math.nan, mask_id=MASK)
    with pytest.raises(ValueError, match=r"^dmkernels\.compat\.llada\.generate: prompt holds id -4"):
        llada.generate(model, ids() - 4, steps=2, gen_length=4, block_length=4, mask_id=MASK)
    with pytest.raises(ValueError, match=r"^dmkernels\.compat\.llada\.generate: prompt has no rows"):
        llada.generate(model, ids()[:0], steps=2, gen_length=4, block_length=4, mask_id=MASK)
    assert model.calls == 0


def test_llada_logits_eos_inf_needs_the_eos_id_in_the_vocabulary():
    kw = dict(steps=2, gen_length=4, block_length=4, mask_id=MASK, logits_eos_inf=True)
    known = Toy(vocab_size=V)  # the config says so: refused before any call
    with pytest.raises(ValueError, match=r"^dmkernels\.compat\.llada\.generate: logits_eos_inf .* 126081"):
        llada.generate(known, ids(), **kw)
    assert known.calls == 0
    unknown = Toy()  # no config: refused at the first call, before anything is committed
    with pytest.raises(ValueError, match=r"^dmkernels\.compat\.llada\.generate: logits_eos_inf .* returned"):
        llada.generate(unknown, ids(), **kw)


@pytest.mark.parametrize("fn", [fast_dllm.generate, fast_dllm.generate_with_prefix_cache,
                                fast_dllm.generate_with_dual_cache])
def test_fast_dllm_drop_ins_name_themselves(fn):
    model = Toy()
    where = rf"^dmkernels\.compat\.fast_dllm\.{fn.__name__}: "
    with pytest.raises(ValueError, match=where + r"threshold must be a finite number in \[0, 1\], got nan"):
        fn(model, ids(), steps=2, gen_length=4, block_length=4, mask_id=MASK, threshold=math.nan)
    with pytest.raises(ValueError, match=where + r"factor must be a finite number >= 0, got -1"):
        fn(model, ids(), steps=2, gen_length=4, block_length=4, mask_id=MASK, factor=-1.0)
    with pytest.raises(TypeError, match=where + r"mask_id must be an int"):
        fn(model, ids(), steps=2, gen_length=4, block_length=4, mask_id=36.0)
    with pytest.raises(ValueError, match=where + r"prompt holds id -1"):
        fn(model, ids() - 1, steps=2, gen_length=4, block_length=4, mask_id=MASK)
    assert model.calls == 0


def test_dream_drop_in_names_itself_and_its_arguments():
    model = Toy()
    kw = dict(mask_token_id=MASK, steps=2, max_new_tokens=4)
    where = r"^dmkernels\.compat\.dream\.diffusion_generate: "
    with pytest.raises(ValueError, match=where + r"alg_temp must be a finite number >= 0, got -1"):
        dream.diffusion_generate(model, ids(), alg="maskgit_plus", alg_temp=-1.0, **kw)
    with pytest.raises(TypeError, match=where + r"mask_token_id must be an int"):
        dream.diffusion_generate(model, ids(), **dict(kw, mask_token_id=36.0))
    with pytest.raises(TypeError, match=where + r"temperature must be a real number"):
        dream.diffusion_generate(model, ids(), temperature="0.2", **kw)
    with pytest.raises(ValueError, match=where + r"inputs holds id -2"):
        dream.diffusion_generate(model, ids() - 2, **kw)
    with pytest.raises(TypeError, match=where + r"inputs must be a 2-D tensor"):
        dream.diffusion_generate(model, [[1, 2, 3]], **kw)
    with pytest.raises(ValueError, match=where + r"top_k must be >= 1, got 0"):
        dream.diffusion_generate(model, ids(), temperature=0.5, top_k=0, **kw)
    with pytest.raises(TypeError, match=where + r"top_k must be a Python int, got float"):
        dream.diffusion_generate(model, ids(), temperature=0.5, top_k=5.0, **kw)
    with pytest.raises(ValueError, match=where + r"top_p must be a finite number, got nan"):
        dream.diffusion_generate(model, ids(), temperature=0.5, top_p=math.nan, **kw)
    with pytest.raises(ValueError, match=where + r"eps must be a finite number in \[0, 1\], got -0.1"):
        dream.diffusion_generate(model, ids(), eps=-0.1, **kw)
    assert model.calls == 0


# ----------------------------------------------------------------------------- policies

BAD_POLICIES = [
    # (constructor, exception, words the message must contain)
    (lambda: P.LowConfidence(alg_temp=-1.0), ValueError, ["policies.LowConfidence", "alg_temp"]),
    (lambda: P.Margin(alg_temp=math.nan), ValueError, ["policies.Margin", "alg_temp", "nan"]),
    (lambda: P.Entropy(alg_temp=math.inf), ValueError, ["policies.Entropy", "alg_temp", "inf"]),
    (lambda: P.LowConfidence(alg_temp="0.5"), TypeError, ["policies.LowConfidence", "alg_temp", "str"]),
    (lambda: P.LowConfidence(0.9), TypeError, ["LowConfidence", "schedule", "float"]),
    (lambda: P.Threshold(math.nan), ValueError, ["policies.Threshold", "threshold", "nan"]),
    (lambda: P.Threshold(90), ValueError, ["policies.Threshold", "threshold", "[0, 1]"]),  # a percentage
    (lambda: P.Threshold(-0.1), ValueError, ["policies.Threshold", "threshold"]),
    (lambda: P.Threshold("0.9"), TypeError, ["policies.Threshold", "threshold", "str"]),
    (lambda: P.Factor(-1.0), ValueError, ["policies.Factor", "factor"]),
    (lambda: P.Factor(math.inf), ValueError, ["policies.Factor", "factor", "inf"]),
    (lambda: P.Factor(True), TypeError, ["policies.Factor", "factor", "bool"]),
    (lambda: P.EntropyBounded(-0.1), ValueError, ["policies.EntropyBounded", "gamma"]),
    (lambda: P.EntropyBounded(math.nan), ValueError, ["policies.EntropyBounded", "gamma", "nan"]),
    (lambda: P.EntropyBounded(0.1, error="perplexity"), ValueError, ["policies.EntropyBounded", "error"]),
    (lambda: P.Dilated(2.5), TypeError, ["policies.Dilated", "base", "float"]),
    (lambda: P.Dilated(1), ValueError, ["policies.Dilated", "base"]),
    (lambda: P.Dilated(2, remask_threshold=1.5), ValueError, ["policies.Dilated", "remask_threshold"]),
    (lambda: P.Dilated(2, remask_threshold=math.nan), ValueError, ["policies.Dilated", "remask_threshold"]),
    (lambda: LearnedPolicy(MLPScorer(), explore=0.0), ValueError, ["learned.LearnedPolicy", "explore", "> 0"]),
    (lambda: LearnedPolicy(MLPScorer(), explore=-1.0), ValueError, ["learned.LearnedPolicy", "explore"]),
    (lambda: LearnedPolicy(MLPScorer(), explore=math.nan), ValueError, ["learned.LearnedPolicy", "explore", "nan"]),
    (lambda: LearnedPolicy(MLPScorer(), explore="1"), TypeError, ["learned.LearnedPolicy", "explore", "str"]),
]


@pytest.mark.parametrize("index", range(len(BAD_POLICIES)))
def test_policy_constructors_name_the_class_and_argument(index):
    make, kind, words = BAD_POLICIES[index]
    with pytest.raises(kind) as info:
        make()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_learned_policy_checks_explore_when_it_is_set_later():
    """Users may set ``explore`` on an existing policy (the trainers no longer do)."""
    policy = LearnedPolicy(MLPScorer(), explore=1.0)
    policy.explore = None
    policy.explore = 0.5
    assert policy.explore == 0.5
    with pytest.raises(ValueError, match=r"LearnedPolicy: explore"):
        policy.explore = -0.5
    assert policy.explore == 0.5


@pytest.mark.parametrize("step,kind", [(1.5, TypeError), ("7", TypeError), (True, TypeError), (-1, ValueError)])
def test_select_group_step_is_a_group_index(step, kind):
    eligible = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(kind, match=r"^dmkernels\.select_group: step"):
        dmkernels.select_group(eligible, dmkernels.dilated_groups(5), step)
