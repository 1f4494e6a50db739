"""LearnedPolicy.load and tasks.sudoku.load_denoiser check a checkpoint's JSON and
its tensors' shapes (read from the safetensors header) before building anything:
crafted files fail fast with an error naming the file, and allocate nothing."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
from safetensors.torch import save_file

import dmkernels.models
from dmkernels.policies import learned  # the implementation (dmkernels.learned re-exports it)
from dmkernels.learned import LearnedPolicy, MLPScorer, TransformerScorer
from dmkernels.models import DiffusionLM
from dmkernels.tasks import sudoku


# -- the shapes the loaders compute are those of the real modules -------------------------------

@pytest.mark.parametrize("scorer", [
    MLPScorer(), MLPScorer(hidden=5, hidden_size=12, hidden_features=3),
    TransformerScorer(d_model=16, heads=2, ff=24, max_positions=9),
    TransformerScorer(d_model=16, heads=4, ff=8, max_positions=3, hidden_size=7, hidden_features=2),
])
def test_scorer_shapes_are_the_modules(scorer):
    want = {k: tuple(v.shape) for k, v in scorer.state_dict().items()}
    assert learned._scorer_shapes(scorer.config) == want


@pytest.mark.parametrize("position_embedding", ["rope", "rope+learned"])
def test_denoiser_shapes_are_the_modules(position_embedding):
    config = sudoku.sudoku_config(hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=12,
                                  position_embedding=position_embedding)
    want = {k: tuple(v.shape) for k, v in DiffusionLM(config).state_dict().items()}
    fields = {k: getattr(config, k) for k in sudoku._config_fields()}
    assert sudoku._denoiser_shapes(fields) == want


# -- LearnedPolicy.load --------------------------------------------------------------------------

def _policy_file(tmp_path, meta, tensors=None, name="p.safetensors"):
    """A safetensors file with ``tensors`` (default: a small MLPScorer's) and the
    'dmkernels' metadata ``meta`` (a dict, dumped to JSON, or a raw string)."""
    if tensors is None:
        tensors = {k: v.contiguous() for k, v in MLPScorer(hidden=4).state_dict().items()}
    path = tmp_path / name
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={"dmkernels": raw})
    return str(path)


def _mlp_meta(**scorer):
    config = dict(kind="mlp", num_features=7, hidden=4, hidden_size=None, hidden_features=8)
    config.update(scorer)
    return dict(scorer=config, selection="topk")


class _Built(Exception):
    pass


@pytest.fixture
def no_scorer_is_built(monkeypatch):
    """Any scorer construction raises: a check that passes must come before it."""
    def refuse(**kw):
        raise _Built(kw)
    monkeypatch.setattr(learned, "SCORERS", {"mlp": refuse, "transformer": refuse})


def test_a_valid_file_reaches_the_build(tmp_path, no_scorer_is_built):
    # The fixture does refuse builds: the refusals below come from the checks.
    with pytest.raises(_Built):
        LearnedPolicy.load(_policy_file(tmp_path, _mlp_meta()))


@pytest.mark.parametrize("hidden", [2**24, 2**33])
def test_a_huge_configuration_fails_fast_without_allocating(tmp_path, hidden, no_scorer_is_built):
    path = _policy_file(tmp_path, _mlp_meta(hidden=hidden))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"LearnedPolicy.load: .*p.safetensors.*scorer.hidden must be in \[1, 4096\]"):
        LearnedPolicy.load(path)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("meta,message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, got list"),
    (dict(scorer=_mlp_meta()["scorer"], selection="topk", extra=1), r"unknown keys \['extra'\]"),
    (dict(scorer=_mlp_meta()["scorer"]), r"missing keys \['selection'\]"),
    (dict(scorer=_mlp_meta()["scorer"], selection="best"), "selection must be one of"),
    (dict(scorer=[1], selection="topk"), "scorer must be a JSON object"),
    (_mlp_meta(kind="cnn"), "scorer.kind must be one of"),
    (_mlp_meta(depth=3), r"unknown keys \['depth'\]"),
    (_mlp_meta(hidden="4"), "scorer.hidden must be an int"),
    (_mlp_meta(hidden=4.0), "scorer.hidden must be an int"),
    (_mlp_meta(hidden=True), "scorer.hidden must be an int"),
    (_mlp_meta(hidden=0), r"scorer.hidden must be in \[1, 4096\]"),
    (_mlp_meta(num_features=8), r"scorer.num_features must be in \[7, 7\]"),
    (_mlp_meta(hidden_size=2**40), "scorer.hidden_size must be in"),
    (_mlp_meta(hidden=64), r"tensor net.0.weight has shape \[4, 7\], the configuration implies \[64, 7\]"),
    (_mlp_meta(hidden_size=5), r"missing \['hidden_proj.bias', 'hidden_proj.weight'\]"),
    (dict(scorer=dict(kind="transformer", d_model=30, heads=4), selection="topk"), "multiple of scorer.heads"),
    (dict(scorer=dict(kind="transformer", d_model=4096, ff=16384, max_positions=65536), selection="topk"),
     "more than the cap"),
])
def test_bad_metadata_is_refused_before_building(tmp_path, no_scorer_is_built, meta, message):
    path = _policy_file(tmp_path, meta)
    with pytest.raises(ValueError, match=message) as info:
        LearnedPolicy.load(path)
    assert str(info.value).startswith(f"dmkernels.learned.LearnedPolicy.load: {path}")


def test_tensors_that_do_not_match_are_refused(tmp_path, no_scorer_is_built):
    good = {k: v.contiguous() for k, v in MLPScorer(hidden=4).state_dict().items()}
    extra = _policy_file(tmp_path, _mlp_meta(), {**good, "stray": torch.zeros(1)}, "extra.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \['stray'\]"):
        LearnedPolicy.load(extra)
    ints = _policy_file(tmp_path, _mlp_meta(), {**good, "net.2.bias": torch.zeros(1, dtype=torch.int64)},
                        "ints.safetensors")
    with pytest.raises(ValueError, match="net.2.bias has dtype I64"):
        LearnedPolicy.load(ints)


def test_files_that_are_not_policies(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{]")
    with pytest.raises(ValueError, match="garbage.safetensors is not a readable safetensors file"):
        LearnedPolicy.load(str(garbage))
    with pytest.raises(FileNotFoundError):
        LearnedPolicy.load(str(tmp_path / "absent.safetensors"))


def test_saved_and_shipped_policies_still_load(tmp_path):
    for scorer in (MLPScorer(hidden=6, hidden_size=5, hidden_features=3),
                   TransformerScorer(d_model=16, heads=2, ff=8, max_positions=12, hidden_size=5)):
        path = str(tmp_path / "round.safetensors")
        LearnedPolicy(scorer, selection="threshold").save(path)
        loaded = LearnedPolicy.load(path)
        for k, v in scorer.state_dict().items():
            assert torch.equal(loaded.scorer.state_dict()[k], v)
    shipped = sorted(sudoku.checkpoint_dir().glob("policy_*.safetensors"))
    assert shipped
    for path in shipped:
        LearnedPolicy.load(str(path))


# -- tasks.sudoku.load_denoiser -----------------------------------------------------------------

def _small_denoiser(tmp_path, edit=None, raw=None, tensors=None):
    """A small Sudoku denoiser written as load_denoiser reads it; ``edit(meta)``
    changes the JSON, ``raw`` replaces it with any text."""
    config = sudoku.sudoku_config(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8)
    fields = {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                              "num_attention_heads", "intermediate_size", "max_position_embeddings",
                                              "rope_theta", "rms_norm_eps", "mask_token_id", "logit_std",
                                              "position_embedding")}
    weights = tmp_path / "sudoku_small.safetensors"
    if tensors is None:
        tensors = {k: v.to(torch.float16).contiguous() for k, v in DiffusionLM(config).state_dict().items()}
    save_file(tensors, str(weights))
    meta = {"config": fields, "training": {"steps": 1}}
    if edit is not None:
        edit(meta)
    weights.with_suffix(".json").write_text(raw if raw is not None else json.dumps(meta))
    return weights


def _set(**kv):
    def edit(meta):
        meta["config"].update(kv)
    return edit


@pytest.fixture
def no_denoiser_is_built(monkeypatch):
    def refuse(config):
        raise _Built(config)
    monkeypatch.setattr(dmkernels.models, "DiffusionLM", refuse)


def test_a_valid_denoiser_reaches_the_build(tmp_path, no_denoiser_is_built):
    with pytest.raises(_Built):
        sudoku.load_denoiser(path=_small_denoiser(tmp_path))


J, W = ".json", ".safetensors"  # the file an error must name


@pytest.mark.parametrize("edit,raw,named,message", [
    (None, "{\"config\": ", J, "is not valid JSON"),
    (None, "\"config\"", J, "must hold a JSON object, got str"),
    (lambda m: m.update(notes="x"), None, J, r"unknown keys \['notes'\]"),
    (lambda m: m.pop("config"), None, J, r"missing keys \['config'\]"),
    (lambda m: m.update(config=[1]), None, J, "config must be a JSON object"),
    (lambda m: m.update(training=3), None, J, "training must be a JSON object"),
    (_set(dropout=0.1), None, J, r"unknown keys \['dropout'\]"),
    (_set(vocab_size=2**31), None, J, r"vocab_size must be in \[10, 10\], got 2147483648"),
    (_set(mask_token_id=3), None, J, r"mask_token_id must be in \[9, 9\]"),
    (_set(eos_token_id=10), None, J, r"eos_token_id must be in \[0, 9\]"),
    (_set(hidden_size=2**33), None, J, r"hidden_size must be in \[2, 4096\]"),
    (_set(hidden_size="8"), None, J, "hidden_size must be an int"),
    (_set(num_hidden_layers=True), None, J, "num_hidden_layers must be an int"),
    (_set(max_position_embeddings=2**40), None, J, "max_position_embeddings must be in"),
    (_set(max_position_embeddings=80), None, J, "max_position_embeddings must be >= 81"),
    (_set(rope_theta=float("nan")), None, J, "rope_theta must be a finite number"),
    (_set(rms_norm_eps=-1.0), None, J, "rms_norm_eps must be a finite number"),
    (_set(position_embedding="alibi"), None, J, "position_embedding must be one of"),
    (_set(hidden_size=12, num_attention_heads=4), None, J, "an even head dim"),
    (_set(hidden_size=16), None, W,
     r"tensor embed_tokens.weight has shape \[10, 8\], the configuration implies \[10, 16\]"),
    (_set(num_hidden_layers=3), None, W, r"missing \['layers.2"),
    (_set(position_embedding="rope"), None, W, r"unexpected \['embed_positions.weight'\]"),
    (_set(hidden_size=4096, intermediate_size=16384, num_hidden_layers=256), None, W, "more than the cap"),
])
def test_bad_denoiser_json_is_refused_before_building(tmp_path, no_denoiser_is_built, edit, raw, named, message):
    weights = _small_denoiser(tmp_path, edit, raw)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as info:
        sudoku.load_denoiser(path=weights)
    assert time.perf_counter() - start < 2.0
    assert str(info.value).startswith(f"dmkernels.tasks.sudoku.load_denoiser: {weights.with_suffix(named)}")


def test_denoiser_weights_that_are_not_floats_or_not_safetensors(tmp_path, no_denoiser_is_built):
    config = sudoku.sudoku_config(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8)
    state = {k: v.to(torch.float16).contiguous() for k, v in DiffusionLM(config).state_dict().items()}
    state["norm.weight"] = state["norm.weight"].to(torch.int32)
    weights = _small_denoiser(tmp_path, tensors=state)
    with pytest.raises(ValueError, match="norm.weight has dtype I32"):
        sudoku.load_denoiser(path=weights)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        sudoku.load_denoiser(path=weights)


def test_an_oversized_json_is_refused_unread(tmp_path, no_denoiser_is_built):
    weights = _small_denoiser(tmp_path, lambda m: m["training"].update(log="x" * (1 << 20)))
    with pytest.raises(ValueError, match="a checkpoint's JSON is at most"):
        sudoku.load_denoiser(path=weights)


def test_small_and_shipped_denoisers_load(tmp_path):
    model = sudoku.load_denoiser(path=_small_denoiser(tmp_path))
    assert model.config.hidden_size == 8 and not hasattr(model.config, "notes")
    for budget in sudoku.BUDGETS:
        model = sudoku.load_denoiser(budget)
        n = sum(p.numel() for p in model.parameters())
        assert math.isclose(n, 170880)
