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
]

SMALL_VOCAB = 4096


class TimedModel:
    """Wraps a model: calls pass through with all their arguments (positional and
    keyword: ``attention_mask``, ``past_key_values``, ``use_cache``,
    ``replace_position``, ...), every other attribute (``.device``, ``.config``,
    ``.forward``, ...) is the model's. Adds up the wall time spent inside calls
    (``model_s``) and counts them (``calls``). On CUDA it synchronises before and
    after each call, so the time is the model's work, not its launch.

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
        result = SideResult(x, total, model.model_s, model.calls, nfe)
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

    def mismatch(self, side, out) -> str | None:
        side = "ours" if side == "ours" else "baseline"
        other = "baseline" if side == "ours" else "ours"
        self.outputs[side] = out
        if other not in self.outputs:
            self.outputs[other] = self.run_timed(other).sequences
        return _compare_tokens(self.outputs["ours"], self.outputs["baseline"], self.inputs["mask_id"])


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
    """Every end-to-end case, small ones first (fresh objects, nothing built)."""
    from dmkernels.models.config import LLADA_VOCAB_SIZE

    small = _five(preset="tiny", vocab=SMALL_VOCAB, prompt_length=16, gen_length=32, block_length=16, steps=8,
                  dream_steps=8, large=False)
    large = _five(preset="llada_like", vocab=LLADA_VOCAB_SIZE, prompt_length=32, gen_length=256, block_length=32,
                  steps=64, dream_steps=64, large=True)
    return small + large


def select_e2e_cases(*, quick: bool = False, name_filter: str | None = None) -> list[E2ECase]:
    """The small cases when ``quick``, else the large (reported) ones; only names
    containing ``name_filter`` when given."""
    return [c for c in all_e2e_cases() if c.large != quick and (not name_filter or name_filter in c.name)]


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
        if ours_run.calls != eager_run.calls:
            problems.append(f"model calls: ours {ours_run.calls}, eager {eager_run.calls}")
        for side, run in (("ours", ours_run), ("eager", eager_run)):
            if run.nfe is not None and run.nfe != run.calls:
                problems.append(f"{side} reports nfe {run.nfe} but made {run.calls} model calls")
        masks_left = int((ours_run.sequences[:, case.prompt_length:] == mask_id).sum())
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
        "model": "DiffusionLM(" + ("llada_like_config()" if case.model_preset == "llada_like"
                                   else f"tiny_config(vocab_size={case.vocab})") + "), float32, torch.manual_seed(0)",
        "ours": ours,
        "eager": eager,
        "sampler_ratio": eager["sampler_s"] / ours["sampler_s"] if ours["sampler_s"] > 0 else None,
        "per_token_ratio": eager["s_per_token"] / ours["s_per_token"],
        "identical": not any(p.startswith(("tokens", "canvas")) for p in problems),
        "masks_left": masks_left,
        "check": "; ".join(problems) or "ok",
    }


_COLUMNS = (
    ("case", 50), ("side", 5), ("calls", 6), ("total s", 9), ("model s", 9), ("sampler s", 10), ("tok/s", 8),
    ("peak MB", 9), ("sampler x", 10), ("s/tok x", 8), ("check", 8),
)


def _row(cells) -> str:
    widths = [w for _, w in _COLUMNS]
    return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.2f}" if seconds < 100 else f"{seconds:.1f}"


def _mb(peak) -> str:
    return "n/a" if peak is None else f"{peak / 1e6:.0f}"


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
    print("model s: wall time inside model calls; sampler s = total - model; tok/s = generated tokens / total; "
          "sampler x = eager / ours sampler time; s/tok x = eager / ours total time per token; "
          "peak = extra memory of one generation")
    print(_row(c for c, _ in _COLUMNS))
    records, started = [], time.perf_counter()
    for case in cases:
        # Quick cases take well under a second: median of 5. Large ones run once.
        record = run_e2e_case(case, device, repeats=5 if quick else 3)
        record.update(meta)
        records.append(record)
        o, e = record["ours"], record["eager"]
        status = "ok" if record["check"] == "ok" else ("MISMATCH" if not record["identical"] else "FAIL")
        print(_row((case.name, "ours", o["model_calls"], _s(o["total_s"]), _s(o["model_s"]), _s(o["sampler_s"]),
                    f"{o['tokens_per_s']:.1f}", _mb(o["peak_extra_bytes"]), _ratio(record["sampler_ratio"]),
                    _ratio(record["per_token_ratio"]), status)))
        print(_row(("", "eager", e["model_calls"], _s(e["total_s"]), _s(e["model_s"]),
                    _s(e["sampler_s"]), f"{e['tokens_per_s']:.1f}", _mb(e["peak_extra_bytes"]), "", "", "")))
        print(f"    {case.describe()}", flush=True)
    for r in records:
        if r["check"] != "ok":
            what = "OUTPUTS DIFFER" if not r["identical"] else "FAIL"
            print(f"{what} {r['case']}: {r['check']}", flush=True)
    print(f"{len(records)} end-to-end cases in {time.perf_counter() - started:.0f} s")
    return records

