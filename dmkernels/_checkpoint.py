"""Checks of checkpoint files before anything is built from them.

The loaders (``LearnedPolicy.load``, ``tasks.sudoku.load_denoiser``,
``tasks.pairs.load_denoiser``) read the
JSON configuration and the safetensors header (names, shapes, dtypes: no tensor
data), check every field's type and range, compute the parameter shapes the
configuration implies and compare them with the file's, and only then build
the module. A crafted file therefore fails with a message naming it instead of
allocating whatever its configuration asks for.
"""
from __future__ import annotations

import json
import math
import os

from . import _checks as check

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def header(op: str, path) -> tuple[dict, dict[str, tuple[tuple[int, ...], str]]]:
    """(metadata, {name: (shape, dtype)}) of a safetensors file, reading only its header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            slices = {name: f.get_slice(name) for name in f.keys()}
            tensors = {name: (tuple(t.get_shape()), t.get_dtype()) for name, t in slices.items()}
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as exc:
        check.fail(op, f"{path} is not a readable safetensors file ({exc})")
    return meta, tensors


def json_object(op: str, where: str, text: str) -> dict:
    """The JSON object in ``text``; ``where`` names its file in the errors."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        check.fail(op, f"{where} is not valid JSON ({exc})")
    if not isinstance(value, dict):
        check.fail(op, f"{where} must hold a JSON object, got {type(value).__name__}")
    return value


def read_json_file(op: str, path, max_bytes: int = 1 << 20) -> dict:
    """The JSON object of a small sidecar file (refused past ``max_bytes``, unread)."""
    size = os.path.getsize(path)
    if size > max_bytes:
        check.fail(op, f"{path} is {size} bytes; a checkpoint's JSON is at most {max_bytes}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        check.fail(op, f"{path} is not UTF-8 text ({exc})")
    return json_object(op, str(path), text)


def keys(op: str, where: str, obj: dict, allowed, required=()) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        check.fail(op, f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    missing = [k for k in required if k not in obj]
    if missing:
        check.fail(op, f"{where}: missing keys {missing}")


def integer(op: str, where: str, name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        check.fail(op, f"{where}: {name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        check.fail(op, f"{where}: {name} must be in [{lo}, {hi}], got {value}")
    return value


def real(op: str, where: str, name: str, value, lo: float, hi: float) -> float:
    """A finite number in (lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        check.fail(op, f"{where}: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and lo < value <= hi):
        check.fail(op, f"{where}: {name} must be a finite number in ({lo:g}, {hi:g}], got {value!r}")
    return float(value)


def choice(op: str, where: str, name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        check.fail(op, f"{where}: {name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def match(op: str, path, expected: dict[str, tuple[int, ...]], found: dict, max_parameters: int) -> None:
    """The file holds exactly the floating-point tensors ``expected`` (name -> shape)."""
    total = sum(math.prod(shape) for shape in expected.values())
    if total > max_parameters:
        check.fail(op, f"{path}: the configuration implies {total} parameters, more than the cap {max_parameters}")
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        check.fail(op, f"{path}: the tensors do not match the configuration: missing {missing[:8]}, "
                       f"unexpected {extra[:8]}")
    for name, shape in expected.items():
        got, dtype = found[name]
        if got != shape:
            check.fail(op, f"{path}: tensor {name} has shape {list(got)}, the configuration implies {list(shape)}")
        if dtype not in FLOAT_DTYPES:
            check.fail(op, f"{path}: tensor {name} has dtype {dtype}, expected one of {FLOAT_DTYPES}")


# -- a task's DiffusionLM denoiser (tasks.sudoku / tasks.pairs .load_denoiser) ------------------

# Each in (0, cap]: far above any trained value, and finite.
DENOISER_REALS = dict(rope_theta=1e12, rms_norm_eps=1.0, logit_std=1e3)


def denoiser_fields() -> dict:
    """DiffusionLMConfig's named fields and their defaults."""
    import inspect

    from .models import DiffusionLMConfig

    params = inspect.signature(DiffusionLMConfig.__init__).parameters
    return {n: p.default for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def denoiser_config(op: str, meta_file, *, vocab_size: int, mask_token_id: int, sizes: dict[str, tuple[int, int]],
                    positions: tuple[int, int], learned_positions: int = 1, mask_optional: bool = False,
                    special_tokens: bool = True) -> dict:
    """The ``config`` of a task denoiser's JSON (``{"config": ..., "training": ...}``),
    every field's type and range checked (missing fields take DiffusionLMConfig's
    defaults). What a task fixes: ``vocab_size`` and ``mask_token_id`` exactly
    (``mask_optional``: null is also accepted), ``sizes`` ({field: (lo, hi)} for
    the layer sizes), ``positions`` (the range of max_position_embeddings) and
    ``learned_positions`` (its minimum with learned positions), and whether
    eos/pad may name a token (``special_tokens``) or must be null."""
    meta = read_json_file(op, meta_file)
    keys(op, str(meta_file), meta, ("config", "training"), required=("config",))
    for name in ("training", "config"):
        if name in meta and not isinstance(meta[name], dict):
            check.fail(op, f"{meta_file}: {name} must be a JSON object, got {type(meta[name]).__name__}")
    config = meta["config"]
    fields = denoiser_fields()
    where = f"{meta_file} config"
    # Unknown keys would become attributes of the config (DiffusionLMConfig takes **kwargs).
    keys(op, where, config, fields)
    c = {**fields, **config}
    integer(op, where, "vocab_size", c["vocab_size"], vocab_size, vocab_size)
    if c["mask_token_id"] is not None or not mask_optional:
        integer(op, where, "mask_token_id", c["mask_token_id"], mask_token_id, mask_token_id)
    for name in ("eos_token_id", "pad_token_id"):
        if c[name] is not None:
            if not special_tokens:
                check.fail(op, f"{where}: {name} must be null, got {c[name]!r}")
            integer(op, where, name, c[name], 0, vocab_size - 1)
    for name, (lo, hi) in {**sizes, "max_position_embeddings": positions}.items():
        integer(op, where, name, c[name], lo, hi)
    for name, hi in DENOISER_REALS.items():
        real(op, where, name, c[name], 0.0, hi)
    choice(op, where, "position_embedding", c["position_embedding"], ("rope", "rope+learned"))
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    if hidden % heads or (hidden // heads) % 2:
        check.fail(op, f"{where}: hidden_size ({hidden}) must be num_attention_heads ({heads}) times an even "
                       "head dim")
    if c["position_embedding"] == "rope+learned" and c["max_position_embeddings"] < learned_positions:
        check.fail(op, f"{where}: max_position_embeddings must be >= {learned_positions} with learned positions, "
                       f"got {c['max_position_embeddings']}")
    return config


def denoiser_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter shapes (state_dict names) of the DiffusionLM ``config`` describes,
    computed without building it."""
    c = {**denoiser_fields(), **config}
    V, H, M = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    shapes = {"embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "norm.weight": (H,)}
    if c["position_embedding"] == "rope+learned":
        shapes["embed_positions.weight"] = (c["max_position_embeddings"], H)
    for i in range(c["num_hidden_layers"]):
        layer = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[layer + f"attn.{proj}.weight"] = (H, H)
        shapes.update({layer + "attn_norm.weight": (H,), layer + "mlp_norm.weight": (H,),
                       layer + "mlp.gate_proj.weight": (M, H), layer + "mlp.up_proj.weight": (M, H),
                       layer + "mlp.down_proj.weight": (H, M)})
    return shapes
