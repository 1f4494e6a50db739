"""End-to-end benchmarks: the drop-in samplers of :mod:`dmkernels.compat` against
their eager counterparts in :mod:`dmkernels.bench.eager`, on the shipped model.

Each case runs one whole generation with ours and with the eager sampler on the
same model and prompt, at temperature 0, and checks that both return the same
tokens (and make the same number of model calls). The model is wrapped in a
:class:`TimedModel` proxy that adds up the wall time spent inside model calls, so
each side's time splits into

* model time: inside ``model(...)`` (the same calls on both sides);
* sampler time: everything else (total - model time): token choice, scores,
  selection, commits, bookkeeping, host syncs.

Cases (``large`` ones are the reported shapes):

* ``DiffusionLM(llada_like_config())`` (LLaDA's vocabulary V = 126464, mask
  126336, a small body; float32; ``torch.manual_seed(0)`` before building), B = 1,
  a random prompt of 32 tokens, ``gen_length=256, block_length=32``: LLaDA
  ``low_confidence`` (steps 64), Fast-dLLM ``threshold=0.9`` without cache, with
  the prefix cache and with the dual cache, Dream ``maskgit_plus``
  (``max_new_tokens=256``, one block, steps 64; Dream's model is shifted, here both
  sides simply run the shipped model).
* Small ones for smoke tests: the same five on ``tiny_config(vocab_size=4096)``,
  a 16-token prompt, ``gen_length=32, block_length=16`` (two blocks).
* The block-diffusion drop-ins (LLaDA2.0 / 2.1, SDAR, diffusers' scheduler) against
  their public counterparts (names ``e2e/block/...``; :class:`BlockE2ECase`): see
  "Block diffusion" below.

Besides the times, :class:`TimedModel` counts the positions each side feeds the
model (``positions``: input tokens over all calls, batch rows included) and the
rows of logits the model returns (``logit_rows``): the compute a KV cache saves
shows there, apart from the sampler's time.

Block diffusion (:class:`BlockE2ECase`, ``--filter e2e/block/``): the drop-ins of
issue 14 against their public counterparts, same checks and split as above. The
positions fed and the logit rows show what the exact block KV cache saves (ours:
the current block per step, the LM head on its rows; public LLaDA2: the window
``[0, block end)`` every step, the LM head on all of it).

Baselines: the public code's algorithm (the public modeling code does not import
with transformers 5, so both sides run dmkernels' own models, which match the
public forward, see :mod:`dmkernels.models.llada2`):

* ``llada2``: ``dmkernels.bench.eager.llada2.generate``, the eager reference of
  LLaDA2.0's ``generate`` (recomputes the window every step, batch 1; a batch of
  B runs as B calls, one row after another), against
  ``dmkernels.compat.llada2.generate`` (one batched call, block cache).
* ``llada2_v21``: the same for LLaDA2.1 (``generate_v21``, token editing).
* ``sdar``: ``dmkernels.bench.eager.sdar.block_diffusion_generate`` (SDAR's
  public algorithm: a ``DynamicCache``, one extra ``store_kv`` call per block,
  one row per call) against ``dmkernels.compat.sdar.block_diffusion_generate``.
  Both sides cache, so here the cache saves little; the calls differ by one per
  block (ours folds the ``store_kv`` pass into the next block's first call).
* ``diffusers``: diffusers' ``LLaDA2Pipeline`` with diffusers'
  ``BlockRefinementScheduler`` against the same pipeline after
  ``pipe.scheduler = dmkernels.compat.diffusers.BlockRefinementScheduler.from_config(...)``.
  The pipeline runs the model (the whole window every step) on both sides: only
  the scheduler differs, so only the sampler time can.

Settings (the public defaults unless said):

* LLaDA2.0: ``block_length=32, steps=32, threshold=0.95, minimal_topk=1``,
  ``eos_early_stop=False`` (``generate``'s defaults), ``gen_length`` 256 and 1024.
* LLaDA2.1: ``generate_v21``'s defaults (``threshold=0.95,
  editing_threshold=0.9, max_post_steps=16, num_to_transfer=1``), block 32.
* SDAR: ``block_length=32, denoising_steps=32`` (one step per position, as its
  defaults: 8 steps for 8-token blocks), ``remasking_strategy="low_confidence_dynamic"``,
  ``confidence_threshold=0.85`` (the function's default), stopping on the
  model's EOS id.
* diffusers: the pipeline's defaults (``threshold=0.7, editing_threshold=0.5,
  max_post_steps=16, eos_early_stop=True``), ``num_inference_steps=32``,
  ``block_length=32``, ``output_type="seq"``.

Models: ``LLaDA2ForBlockDiffusion(llada2_like_config())`` (LLaDA2's vocabulary
V = 157184, mask 156895, EOS 156892, the tiny MoE body: hidden 32, 2 layers) and
``SDARForBlockDiffusion(sdar_like_config())`` (V = 151936, hidden 64, 2 layers),
float32, ``torch.manual_seed(0)`` before building; a random prompt of 32 tokens
per row (``torch.Generator().manual_seed(0)``). The quick cases use the same
code on ``vocab_size=4096`` tiny configs, a 13-token prompt (not a block
multiple), ``gen_length=32, block_length=16``, B = 1 and 2.

Which cases (large): LLaDA2.0 at gen 256 B = 1, gen 1024 B = 1, gen 256 B = 8;
LLaDA2.1 gen 256 B = 1; SDAR gen 256 B = 1, gen 1024 B = 1, gen 256 B = 8;
diffusers gen 256 B = 1. LLaDA2 gen 1024 B = 8 is left out: the public side
(8 calls of about 4-5 minutes each on one CPU thread) alone would take more
than half an hour.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import torch

from dmkernels.bench import measure
from dmkernels.bench.cases import Case

__all__ = [
    "TimedModel", "E2ECase", "SideResult",
    "all_e2e_cases", "select_e2e_cases", "run_e2e_case", "run_cli",
    "BlockE2ECase", "block_e2e_cases",
]

SMALL_VOCAB = 4096


class TimedModel:
    """Wraps a model: calls pass through with all their arguments (positional and
    keyword: ``attention_mask``, ``past_key_values``, ``use_cache``,
    ``replace_position``, ...), every other attribute (``.device``, ``.config``,
    ``.forward``, ...) is the model's. Adds up the wall time spent inside calls
    (``model_s``) and counts them (``calls``), the positions fed (``positions``:
    the element count of the input ids, the first positional argument or
    ``input_ids=``) and the rows of logits returned (``logit_rows``: all dims of
    ``out.logits`` / ``out[0]`` but the last; shapes only, no device read). On
    CUDA it synchronises before and after each call, so the time is the model's
    work, not its launch.

    The proxy also owns the lifetime of the model's output: it keeps the last output
    alive and drops it at the start of the next call, inside the timed region. Freeing
    a [B, L, V] logits buffer costs about as much as a small sampler step on the CPU
    (the kernel unmaps it), and that cost belongs to the model's allocation, not to
    whichever side happens to drop the last reference; both sides are treated alike.
    The previous output is dropped before the new one is allocated, so peaks are
    unchanged."""

    def __init__(self, model, device: torch.device | str | None = None):
        self.model = model
        self.sync = torch.device(device).type == "cuda" if device is not None else False
        self.model_s = 0.0
        self.calls = 0
        self.positions = 0
        self.logit_rows = 0
        self._previous = None

    def release(self) -> None:
        self._previous = None

    def __call__(self, *args, **kwargs):
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self._previous = None
        out = self.model(*args, **kwargs)
        self._previous = out
        if self.sync:
            torch.cuda.synchronize()
        self.model_s += time.perf_counter() - start
        self.calls += 1
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            self.positions += ids.numel()
        logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            logits = out[0]
        if isinstance(logits, torch.Tensor) and logits.dim() >= 1:
            self.logit_rows += logits.numel() // max(logits.shape[-1], 1)
        return out

    def __getattr__(self, name):
        # Only called for attributes not set in __init__.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


@dataclass
class SideResult:
    """One timed generation of one side."""

    sequences: torch.Tensor
    total_s: float
    model_s: float
    calls: int
    nfe: int | None  # what the sampler itself reports (Fast-dLLM), else None
    positions: int = 0  # input positions fed to the model over all calls (TimedModel.positions)
    logit_rows: int = 0  # rows of logits the model returned (TimedModel.logit_rows)

    @property
    def sampler_s(self) -> float:
        return self.total_s - self.model_s


@dataclass
class E2ECase(Case):
    """One drop-in against its eager counterpart on one model and prompt.

    ``shape`` is ``[B, prompt + gen_length, V]`` (the canvas logits of a full
    forward). ``run_ours()`` / ``run_baseline()`` run one timed generation and
    return the canvas; :meth:`run_timed` also returns the times. ``mismatch(side,
    out)`` compares a side's canvas with the other side's (running the other side
    untimed if it has not run yet)."""

    sampler: str = "llada"  # llada | fast_dllm | fast_dllm_prefix | fast_dllm_dual | dream
    model_preset: str = "llada_like"  # llada_like | tiny
    prompt_length: int = 32
    gen_length: int = 256
    block_length: int = 32
    steps: int = 64
    threshold: float | None = None
    alg: str | None = None
    outputs: dict = field(default_factory=dict, repr=False, compare=False)
    last: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def vocab(self) -> int:
        return self.shape[-1]

    def describe(self) -> str:
        parts = [f"B={self.batch}", f"prompt={self.prompt_length}", f"V={self.vocab}"]
        if self.sampler == "dream":
            parts += [f"max_new_tokens={self.gen_length}", f"steps={self.steps}", f"alg={self.alg}"]
        else:
            parts += [f"gen_length={self.gen_length}", f"block_length={self.block_length}"]
            parts += [f"threshold={self.threshold}"] if self.threshold is not None else [f"steps={self.steps}"]
        return ", ".join(parts)

    # -- setup ------------------------------------------------------------------------------------
    def _build(self, device):
        from dmkernels.models import DiffusionLM, llada_like_config, tiny_config

        torch.manual_seed(0)
        config = llada_like_config() if self.model_preset == "llada_like" else tiny_config(vocab_size=self.vocab)
        if config.vocab_size != self.vocab:
            raise ValueError(f"{self.name}: model vocabulary {config.vocab_size}, case says {self.vocab}")
        model = DiffusionLM(config).eval().to(device=device, dtype=torch.float32)
        mask_id = int(config.mask_token_id)
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, mask_id, (self.batch, self.prompt_length), generator=gen).to(device)
        self.outputs, self.last = {}, {}
        return {"model": model, "prompt": prompt, "mask_id": mask_id, "device": device}

    def teardown(self) -> None:
        super().teardown()
        self.outputs, self.last = {}, {}

    # -- one generation ---------------------------------------------------------------------------
    def _generate(self, side: str, model, *, gen_length=None, block_length=None, steps=None):
        """Runs one generation; returns (canvas, nfe or None)."""
        from dmkernels.bench.eager import dream as eager_dream
        from dmkernels.bench.eager import fast_dllm as eager_fast_dllm
        from dmkernels.bench.eager import llada as eager_llada
        from dmkernels.compat import dream, fast_dllm, llada

        i = self.inputs
        prompt, mask_id = i["prompt"], i["mask_id"]
        gen_length = gen_length or self.gen_length
        block_length = block_length or self.block_length
        steps = steps or self.steps
        if self.sampler == "llada":
            fn = llada.generate if side == "ours" else eager_llada.generate
            x = fn(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=0.0, remasking="low_confidence", mask_id=mask_id)
            return x, None
        if self.sampler.startswith("fast_dllm"):
            name = {"fast_dllm": "generate", "fast_dllm_prefix": "generate_with_prefix_cache",
                    "fast_dllm_dual": "generate_with_dual_cache"}[self.sampler]
            fn = getattr(fast_dllm if side == "ours" else eager_fast_dllm, name)
            x, nfe = fn(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                        temperature=0.0, remasking="low_confidence", mask_id=mask_id, threshold=self.threshold)
            return x, int(nfe)
        if self.sampler == "dream":
            fn = dream.diffusion_generate if side == "ours" else eager_dream.diffusion_generate
            x = fn(model, prompt, mask_token_id=mask_id, steps=steps, max_new_tokens=gen_length, alg=self.alg,
                   temperature=0.0)
            return x, None
        raise ValueError(f"unknown sampler {self.sampler!r}")

    def run_timed(self, side: str) -> SideResult:
        """One timed generation of ``side`` ("ours" or "baseline"/"eager")."""
        side = "ours" if side == "ours" else "baseline"
        device = self.inputs["device"]
        model = TimedModel(self.inputs["model"], device)
        measure._sync(device)
        start = time.perf_counter()
        x, nfe = self._generate(side, model)
        measure._sync(device)
        total = time.perf_counter() - start
        result = SideResult(x, total, model.model_s, model.calls, nfe, model.positions, model.logit_rows)
        self.last[side] = result
        return result

    def warm_up(self) -> None:
        """A tiny generation on each side (one block of 8, 2 steps): loads kernels and
        warms the allocator and the ops' first-use paths before timing."""
        model = self.inputs["model"]
        for side in ("ours", "baseline"):
            self._generate(side, model, gen_length=8, block_length=8, steps=2)

    def run_ours(self):
        return self.run_timed("ours").sequences

    def run_baseline(self):
        return self.run_timed("baseline").sequences

    # -- what run_e2e_case asks of a case (BlockE2ECase overrides them) ---------------------------
    same_calls = True  # both sides make the same model calls (checked)

    def masks_left(self, sequences: torch.Tensor) -> int:
        """Mask ids left in the generated part of ``sequences`` (ours)."""
        return int((sequences[:, self.prompt_length:] == self.inputs["mask_id"]).sum())

    def model_label(self) -> str:
        return "DiffusionLM(" + ("llada_like_config()" if self.model_preset == "llada_like"
                                 else f"tiny_config(vocab_size={self.vocab})") + "), float32, torch.manual_seed(0)"

    def record_extra(self) -> dict:
        """Case-specific fields added to the record."""
        return {}

    def mismatch(self, side, out) -> str | None:
        side = "ours" if side == "ours" else "baseline"
        other = "baseline" if side == "ours" else "ours"
        self.outputs[side] = out
        if other not in self.outputs:
            self.outputs[other] = self.run_timed(other).sequences
        return _compare_tokens(self.outputs["ours"], self.outputs["baseline"], self.inputs["mask_id"])


def _agreement(ours: torch.Tensor, eager: torch.Tensor) -> float | None:
    """Fraction of equal tokens over the shapes' common part (None when the
    batch sizes differ or nothing overlaps)."""
    if ours.dim() != eager.dim() or ours.shape[:-1] != eager.shape[:-1]:
        return None
    n = min(ours.shape[-1], eager.shape[-1])
    if n == 0 or ours[..., :n].numel() == 0:
        return None
    return float((ours[..., :n] == eager[..., :n]).double().mean())


def _compare_tokens(ours: torch.Tensor, eager: torch.Tensor, mask_id: int) -> str | None:
    if ours.shape != eager.shape:
        return f"canvas shape: ours {list(ours.shape)}, eager {list(eager.shape)}"
    differ = ours != eager
    wrong = int(differ.sum())
    if not wrong:
        return None
    first = [int(i) for i in differ.nonzero()[0]]
    return (f"tokens: {wrong} of {ours.numel()} differ (first at {first}: ours {int(ours[tuple(first)])}, "
            f"eager {int(eager[tuple(first)])}; masks left: ours {int((ours == mask_id).sum())}, "
            f"eager {int((eager == mask_id).sum())})")


_LABELS = {
    "llada": ("compat.llada.generate", "bench.eager_llada.generate"),
    "fast_dllm": ("compat.fast_dllm.generate", "bench.eager.fast_dllm.generate"),
    "fast_dllm_prefix": ("compat.fast_dllm.generate_with_prefix_cache",
                         "bench.eager.fast_dllm.generate_with_prefix_cache"),
    "fast_dllm_dual": ("compat.fast_dllm.generate_with_dual_cache", "bench.eager.fast_dllm.generate_with_dual_cache"),
    "dream": ("compat.dream.diffusion_generate", "bench.eager_dream.diffusion_generate"),
}


def _case(sampler, *, preset, vocab, prompt_length, gen_length, block_length, steps, threshold=None, alg=None,
          large):
    setting = {"llada": "low_confidence", "dream": alg}.get(sampler) or f"threshold{threshold:g}"
    if sampler == "dream":
        block_length = gen_length  # one block over the whole generation
        shape_tag = f"g{gen_length}s{steps}"
    elif threshold is not None:
        shape_tag = f"g{gen_length}b{block_length}"
    else:
        shape_tag = f"g{gen_length}b{block_length}s{steps}"
    ours, eager = _LABELS[sampler]
    return E2ECase(
        name=f"e2e/{sampler}/{setting}/V{vocab}/{shape_tag}", op=ours, baseline=eager,
        shape=(1, prompt_length + gen_length, vocab), dtype=torch.float32, temperature=0.0, large=large,
        sampler=sampler, model_preset=preset, prompt_length=prompt_length, gen_length=gen_length,
        block_length=block_length, steps=steps, threshold=threshold, alg=alg,
    )


def _five(**common) -> list[E2ECase]:
    steps, dream_steps = common.pop("steps"), common.pop("dream_steps")
    return [
        _case("llada", steps=steps, **common),
        _case("fast_dllm", steps=steps, threshold=0.9, **common),
        _case("fast_dllm_prefix", steps=steps, threshold=0.9, **common),
        _case("fast_dllm_dual", steps=steps, threshold=0.9, **common),
        _case("dream", steps=dream_steps, alg="maskgit_plus", **common),
    ]


def all_e2e_cases() -> list[E2ECase]:
    """Every end-to-end case, small ones first (fresh objects, nothing built); the
    block-diffusion ones (:func:`block_e2e_cases`) after the others of their size."""
    from dmkernels.models.config import LLADA_VOCAB_SIZE

    small = _five(preset="tiny", vocab=SMALL_VOCAB, prompt_length=16, gen_length=32, block_length=16, steps=8,
                  dream_steps=8, large=False)
    large = _five(preset="llada_like", vocab=LLADA_VOCAB_SIZE, prompt_length=32, gen_length=256, block_length=32,
                  steps=64, dream_steps=64, large=True)
    block = block_e2e_cases()
    return small + [c for c in block if not c.large] + large + [c for c in block if c.large]


def select_e2e_cases(*, quick: bool = False, name_filter: str | None = None) -> list[E2ECase]:
    """The small cases when ``quick``, else the large (reported) ones; only names
    containing ``name_filter`` when given."""
    return [c for c in all_e2e_cases() if c.large != quick and (not name_filter or name_filter in c.name)]


# -- block diffusion (LLaDA2.0 / 2.1, SDAR, diffusers) ----------------------------------------------

_BLOCK_LABELS = {
    "llada2": ("compat.llada2.generate", "bench.eager.llada2.generate (public LLaDA2.0 generate, B calls)"),
    "llada2_v21": ("compat.llada2.generate_v21", "bench.eager.llada2.generate_v21 (public LLaDA2.1 generate, B calls)"),
    "sdar": ("compat.sdar.block_diffusion_generate",
             "bench.eager.sdar.block_diffusion_generate (public SDAR, B calls)"),
    "diffusers": ("LLaDA2Pipeline + compat.diffusers.BlockRefinementScheduler",
                  "LLaDA2Pipeline + diffusers.BlockRefinementScheduler"),
}


@dataclass
class BlockE2ECase(E2ECase):
    """One block-diffusion drop-in against its public counterpart (see "Block
    diffusion" in the module docstring). ``sampler``: llada2 | llada2_v21 | sdar |
    diffusers; ``model_preset``: llada2_like | llada2_tiny | sdar_like | sdar_tiny;
    ``threshold``: LLaDA2's / the pipeline's ``threshold`` or SDAR's
    ``confidence_threshold``; ``steps``: ``steps`` / ``denoising_steps`` /
    ``num_inference_steps``."""

    sampler: str = "llada2"
    model_preset: str = "llada2_like"
    steps: int = 32
    threshold: float | None = 0.95

    @property
    def same_calls(self) -> bool:
        # Checked where both sides should make the same calls: diffusers (the same
        # pipeline loop) and LLaDA2 at B = 1. SDAR: ours makes one call fewer per
        # block (no separate store_kv pass); B > 1: the public side makes B calls
        # per step, ours one.
        return self.sampler == "diffusers" or (self.sampler != "sdar" and self.batch == 1)

    def describe(self) -> str:
        steps = {"sdar": "denoising_steps", "diffusers": "num_inference_steps"}.get(self.sampler, "steps")
        thr = "confidence_threshold" if self.sampler == "sdar" else "threshold"
        return (f"B={self.batch}, prompt={self.prompt_length}, V={self.vocab}, gen_length={self.gen_length}, "
                f"block_length={self.block_length}, {steps}={self.steps}, {thr}={self.threshold}"
                + (", editing_threshold=0.9, max_post_steps=16" if self.sampler == "llada2_v21" else "")
                + (", editing_threshold=0.5, max_post_steps=16" if self.sampler == "diffusers" else ""))

    def model_label(self) -> str:
        cls, cfg = {"llada2": ("LLaDA2ForBlockDiffusion", "llada2"), "sdar": ("SDARForBlockDiffusion", "sdar")}[
            self.model_preset.split("_")[0]]
        size = "like_config()" if self.model_preset.endswith("_like") else f"tiny_config(vocab_size={self.vocab})"
        return f"{cls}({cfg}_{size}), float32, torch.manual_seed(0)"

    def masks_left(self, sequences: torch.Tensor) -> int:
        # LLaDA2 / diffusers return the answer only; SDAR the whole canvas.
        start = self.prompt_length if self.sampler == "sdar" else 0
        return int((sequences[:, start:] == self.inputs["mask_id"]).sum())

    def record_extra(self) -> dict:
        return {
            "family": self.sampler,
            "settings": self._settings(self.gen_length, self.block_length, self.steps),
            "baseline_batch": "one call per row" if self.sampler != "diffusers" else "one batched pipeline call",
        }

    # -- setup ------------------------------------------------------------------------------------
    def _build(self, device):
        from dmkernels import models

        family, size = self.model_preset.split("_")
        torch.manual_seed(0)
        if family == "llada2":
            config = models.llada2_like_config() if size == "like" else models.llada2_tiny_config(self.vocab)
            model = models.LLaDA2ForBlockDiffusion(config)
        else:
            config = models.sdar_like_config() if size == "like" else models.sdar_tiny_config(self.vocab)
            model = models.SDARForBlockDiffusion(config)
        if config.vocab_size != self.vocab:
            raise ValueError(f"{self.name}: model vocabulary {config.vocab_size}, case says {self.vocab}")
        model = model.eval().to(device=device, dtype=torch.float32)
        mask_id, eos_id = int(config.mask_token_id), int(config.eos_token_id)
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, min(mask_id, eos_id), (self.batch, self.prompt_length), generator=gen).to(device)
        self.outputs, self.last = {}, {}
        return {"model": model, "prompt": prompt, "mask_id": mask_id, "eos_id": eos_id, "device": device}

    def _settings(self, gen_length, block_length, steps) -> dict:
        i = self.inputs
        if self.sampler == "llada2":
            return dict(temperature=0.0, block_length=block_length, steps=steps, gen_length=gen_length,
                        threshold=self.threshold, minimal_topk=1, eos_early_stop=False, eos_id=i.get("eos_id"),
                        mask_id=i.get("mask_id"))
        if self.sampler == "llada2_v21":
            return dict(temperature=0.0, block_length=block_length, steps=steps, gen_length=gen_length,
                        threshold=self.threshold, editing_threshold=0.9, max_post_steps=16, num_to_transfer=1,
                        eos_id=i.get("eos_id"), mask_id=i.get("mask_id"))
        if self.sampler == "sdar":
            return dict(mask_id=i.get("mask_id"), gen_length=gen_length, block_length=block_length,
                        denoising_steps=steps, temperature=0.0, remasking_strategy="low_confidence_dynamic",
                        confidence_threshold=self.threshold, stopping_criteria_idx=[i.get("eos_id")])
        if self.sampler == "diffusers":
            return dict(gen_length=gen_length, block_length=block_length, num_inference_steps=steps, temperature=0.0,
                        threshold=self.threshold, editing_threshold=0.5, max_post_steps=16, eos_early_stop=True,
                        eos_token_id=i.get("eos_id"), mask_token_id=i.get("mask_id"), output_type="seq")
        raise ValueError(f"unknown sampler {self.sampler!r}")

    # -- one generation ---------------------------------------------------------------------------
    def _generate(self, side: str, model, *, gen_length=None, block_length=None, steps=None):
        from dmkernels.bench.eager import llada2 as eager_llada2
        from dmkernels.bench.eager import sdar as eager_sdar
        from dmkernels.compat import llada2, sdar

        prompt = self.inputs["prompt"]
        kw = self._settings(gen_length or self.gen_length, block_length or self.block_length, steps or self.steps)
        ours = side == "ours"
        if self.sampler == "llada2":
            return (llada2.generate if ours else eager_llada2.generate)(model, prompt, **kw), None
        if self.sampler == "llada2_v21":
            return (llada2.generate_v21 if ours else eager_llada2.generate_v21)(model, prompt, **kw), None
        if self.sampler == "sdar":
            fn = sdar.block_diffusion_generate if ours else eager_sdar.block_diffusion_generate
            return fn(model, {"input_ids": prompt}, **kw), None
        if self.sampler == "diffusers":
            from diffusers import BlockRefinementScheduler as Public
            from diffusers import LLaDA2Pipeline

            from dmkernels.compat.diffusers import BlockRefinementScheduler as Ours

            scheduler = Public(block_length=kw["block_length"])
            if ours:
                scheduler = Ours.from_config(scheduler.config)  # the documented one-line swap
            pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=None)
            pipe.set_progress_bar_config(disable=True)
            return pipe(input_ids=prompt, **kw).sequences, None
        raise ValueError(f"unknown sampler {self.sampler!r}")


def _block_case(sampler, *, preset, vocab, prompt_length, gen_length, block_length, steps, threshold, batch,
                large):
    ours, public = _BLOCK_LABELS[sampler]
    version = {"llada2": "v2.0", "llada2_v21": "v2.1"}.get(sampler)
    family = "llada2" if sampler.startswith("llada2") else sampler
    tag = f"{version}/" if version else ""
    return BlockE2ECase(
        name=f"e2e/block/{family}/{tag}V{vocab}/g{gen_length}b{block_length}s{steps}/B{batch}", op=ours,
        baseline=public, shape=(batch, prompt_length + gen_length, vocab), dtype=torch.float32, temperature=0.0,
        large=large, sampler=sampler, model_preset=preset, prompt_length=prompt_length, gen_length=gen_length,
        block_length=block_length, steps=steps, threshold=threshold,
    )


def block_e2e_cases() -> list[BlockE2ECase]:
    """The block-diffusion end-to-end cases, quick (small) ones first (fresh
    objects, nothing built); see the module docstring."""
    from dmkernels.constants import LLADA2_VOCAB_SIZE, SDAR_VOCAB_SIZE

    small = dict(vocab=SMALL_VOCAB, prompt_length=13, gen_length=32, block_length=16, steps=8, large=False)
    quick = [
        _block_case("llada2", preset="llada2_tiny", threshold=0.95, batch=1, **small),
        _block_case("llada2", preset="llada2_tiny", threshold=0.95, batch=2, **small),
        _block_case("llada2_v21", preset="llada2_tiny", threshold=0.95, batch=2, **small),
        _block_case("sdar", preset="sdar_tiny", threshold=0.85, batch=2, **small),
        _block_case("diffusers", preset="llada2_tiny", threshold=0.7, batch=2, **small),
    ]
    llada2 = dict(preset="llada2_like", vocab=LLADA2_VOCAB_SIZE, prompt_length=32, block_length=32, steps=32,
                  large=True)
    sdar = dict(preset="sdar_like", vocab=SDAR_VOCAB_SIZE, prompt_length=32, block_length=32, steps=32, large=True)
    large = [
        _block_case("llada2", gen_length=256, batch=1, threshold=0.95, **llada2),
        _block_case("llada2", gen_length=1024, batch=1, threshold=0.95, **llada2),
        _block_case("llada2", gen_length=256, batch=8, threshold=0.95, **llada2),
        _block_case("llada2_v21", gen_length=256, batch=1, threshold=0.95, **llada2),
        _block_case("sdar", gen_length=256, batch=1, threshold=0.85, **sdar),
        _block_case("sdar", gen_length=1024, batch=1, threshold=0.85, **sdar),
        _block_case("sdar", gen_length=256, batch=8, threshold=0.85, **sdar),
        _block_case("diffusers", gen_length=256, batch=1, threshold=0.7, **llada2),
    ]
    return quick + large


# -- the CLI runner ------------------------------------------------------------------------------

def _side_record(runs: list[SideResult], peak: int | None, gen_length: int, batch: int) -> tuple[dict, SideResult]:
    chosen = sorted(runs, key=lambda r: r.total_s)[len(runs) // 2]  # the median run by total time
    return {
        "total_s": chosen.total_s,
        "model_s": chosen.model_s,
        "sampler_s": chosen.sampler_s,
        "tokens_per_s": batch * gen_length / chosen.total_s,
        "s_per_token": chosen.total_s / (batch * gen_length),
        "model_calls": chosen.calls,
        "positions": chosen.positions,
        "logit_rows": chosen.logit_rows,
        "nfe": chosen.nfe,
        "peak_extra_bytes": peak,
        "repeats": len(runs),
        "total_s_all": [r.total_s for r in runs],
    }, chosen


def _measure_side(case: E2ECase, side: str, device, *, repeats: int, once_above_s: float):
    runs: list[SideResult] = []

    def one():
        result = case.run_timed(side)
        runs.append(result)
        return result.sequences

    peak = measure.peak_extra_bytes(one, device)  # the first timed run, memory measured around it
    if runs[0].total_s <= once_above_s:
        for _ in range(repeats - 1):
            one()
    return _side_record(runs, peak, case.gen_length, case.batch)


def run_e2e_case(case: E2ECase, device: torch.device, *, repeats: int = 3, once_above_s: float = 2.0) -> dict:
    """Warm up, time ours and the eager sampler (each: the median of ``repeats``
    generations, one when the first takes over ``once_above_s``), measure the
    peak extra memory of a generation, compare the outputs; returns the record."""
    case.setup(device)
    try:
        case.warm_up()
        ours, ours_run = _measure_side(case, "ours", device, repeats=repeats, once_above_s=once_above_s)
        eager, eager_run = _measure_side(case, "baseline", device, repeats=repeats, once_above_s=once_above_s)
        mask_id = case.inputs["mask_id"]
        problems = []
        tokens = _compare_tokens(ours_run.sequences, eager_run.sequences, mask_id)
        if tokens:
            problems.append(tokens)
        if case.same_calls and ours_run.calls != eager_run.calls:
            problems.append(f"model calls: ours {ours_run.calls}, eager {eager_run.calls}")
        for side, run in (("ours", ours_run), ("eager", eager_run)):
            if run.nfe is not None and run.nfe != run.calls:
                problems.append(f"{side} reports nfe {run.nfe} but made {run.calls} model calls")
        masks_left = case.masks_left(ours_run.sequences)
        agreement = _agreement(ours_run.sequences, eager_run.sequences)
        extra = case.record_extra()
    finally:
        case.teardown()
        gc.collect()
    return {
        "case": case.name,
        "e2e": True,
        "drop_in": case.op,
        "baseline": case.baseline,
        "setting": case.describe(),
        "shape": list(case.shape),
        "dtype": "float32",
        "temperature": 0.0,
        "batch": case.batch,
        "vocab": case.vocab,
        "prompt_length": case.prompt_length,
        "gen_length": case.gen_length,
        "block_length": case.block_length,
        "steps": case.steps,
        "threshold": case.threshold,
        "alg": case.alg,
        "model": case.model_label(),
        "ours": ours,
        "eager": eager,
        "sampler_ratio": eager["sampler_s"] / ours["sampler_s"] if ours["sampler_s"] > 0 else None,
        "model_ratio": eager["model_s"] / ours["model_s"] if ours["model_s"] > 0 else None,
        "total_ratio": eager["total_s"] / ours["total_s"],
        "per_token_ratio": eager["s_per_token"] / ours["s_per_token"],
        "positions_ratio": eager["positions"] / ours["positions"] if ours["positions"] else None,
        "logit_rows_ratio": eager["logit_rows"] / ours["logit_rows"] if ours["logit_rows"] else None,
        "identical": not any(p.startswith(("tokens", "canvas")) for p in problems),
        "token_agreement": agreement,
        "masks_left": masks_left,
        **extra,
        "check": "; ".join(problems) or "ok",
    }


_COLUMNS = (
    ("case", 50), ("side", 5), ("calls", 6), ("fed k", 8), ("total s", 9), ("model s", 9), ("sampler s", 10),
    ("tok/s", 8), ("peak MB", 9), ("model x", 8), ("sampler x", 10), ("s/tok x", 8), ("check", 8),
)


def _row(cells) -> str:
    widths = [w for _, w in _COLUMNS]
    return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.2f}" if seconds < 100 else f"{seconds:.1f}"


def _mb(peak) -> str:
    return "n/a" if peak is None else f"{peak / 1e6:.0f}"


def _k(n: int) -> str:
    return f"{n / 1e3:.1f}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:.1f}x"


def run_cli(device: torch.device, *, quick: bool, name_filter: str | None, meta: dict) -> list[dict]:
    """Runs the selected end-to-end cases, printing a table; returns the records
    (each updated with ``meta``)."""
    cases = select_e2e_cases(quick=quick, name_filter=name_filter)
    if not cases:
        return []
    print()
    print("end to end: whole generations, drop-in (ours) vs eager counterpart (dmkernels.bench.eager), temperature 0, "
          "same model and prompt")
    print("fed k: thousands of positions fed to the model (all calls, all rows); model s: wall time inside model "
          "calls; sampler s = total - model; tok/s = generated tokens / total; model x, sampler x = eager / ours "
          "model, sampler time; s/tok x = eager / ours total time per token; peak = extra memory of one generation")
    print(_row(c for c, _ in _COLUMNS))
    records, started = [], time.perf_counter()
    for case in cases:
        # Quick cases take well under a second: median of 5. Large ones run once.
        record = run_e2e_case(case, device, repeats=5 if quick else 3)
        record.update(meta)
        records.append(record)
        o, e = record["ours"], record["eager"]
        status = "ok" if record["check"] == "ok" else ("MISMATCH" if not record["identical"] else "FAIL")
        print(_row((case.name, "ours", o["model_calls"], _k(o["positions"]), _s(o["total_s"]), _s(o["model_s"]),
                    _s(o["sampler_s"]), f"{o['tokens_per_s']:.1f}", _mb(o["peak_extra_bytes"]),
                    _ratio(record["model_ratio"]), _ratio(record["sampler_ratio"]), _ratio(record["per_token_ratio"]),
                    status)))
        print(_row(("", "eager", e["model_calls"], _k(e["positions"]), _s(e["total_s"]), _s(e["model_s"]),
                    _s(e["sampler_s"]), f"{e['tokens_per_s']:.1f}", _mb(e["peak_extra_bytes"]), "", "", "", "")))
        print(f"    {case.describe()}", flush=True)
    for r in records:
        if r["check"] != "ok":
            what = "OUTPUTS DIFFER" if not r["identical"] else "FAIL"
            print(f"{what} {r['case']}: {r['check']}", flush=True)
    print(f"{len(records)} end-to-end cases in {time.perf_counter() - started:.0f} s")
    return records

