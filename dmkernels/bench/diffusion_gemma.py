"""DiffusionGemma benchmarks (issue 15): dmkernels' denoising step against
transformers' own, on the same logits, and whole ``generate`` calls patched
against unpatched.

``python -m dmkernels.bench --diffusion-gemma`` runs them (``--quick``: tiny
shapes, seconds; ``--filter`` selects by case name); the full speed run (no job
flag) runs them after the op and end-to-end cases.

Three groups, all at DiffusionGemma's vocabulary V = 262144 and canvas C = 256
(the quick variant: V = 4096, C = 32):

* ``dg_step/B{B}/{f32,bf16}``: one denoising step. The upstream side is
  ``DiffusionGemmaGenerationMixin._denoising_step`` itself (transformers' code,
  called as an unbound function), ours is
  :func:`dmkernels.compat.diffusion_gemma.denoising_step`; both get the same
  keyword arguments and a stub ``decoder_forward`` that returns one fixed
  ``[B, C, V]`` logits tensor (``randn * 4`` in the case's dtype, built before
  the measurement, so neither side's figures include it). ``self`` is a small
  namespace with the two attributes the steps read (the vocabulary size and the
  embedding weight's dtype, bfloat16 as in the released checkpoint; a model at
  V = 262144 would add nothing else to the step). Settings are ``generate``'s
  defaults: ``entropy_bound=0.1``, ``t_min=0.4, t_max=0.8``, 48 steps, stopping
  with ``stability_threshold=1, confidence_threshold=0.005``; the step measured
  is step 47 of 48 (no finished rows). Ours is measured twice: the steady state
  (steps 2..N of a canvas: the self-conditioning buffer exists and is
  overwritten in place) and a first step (a fresh sampler, so the buffer is
  allocated inside the step). Checks: both sides return the same argmax canvas
  and bit-identical self-conditioning logits (``(logits / T).to(bfloat16)``);
  tokens in [0, V); the accept masks are compared and reported (they can
  differ only at the documented boundary cases: upstream takes entropies in the
  logits' dtype, bf16 for bf16 logits, where ties are common).
* ``dg_generate/B{B}/N{N}``: ``model.generate`` on a tiny-width random
  DiffusionGemma (hidden 64, 2 layers, a tiny vision tower, float32 weights)
  at the real vocabulary, one canvas (``max_new_tokens=C``), N denoising steps,
  ``torch.manual_seed(0)`` before each side, unpatched then after
  :func:`~dmkernels.compat.diffusion_gemma.patch`. The decoder calls are timed
  through an instance ``forward`` wrapper (``generate`` calls ``self.forward``),
  so each side splits into decoder time and the rest (steps, encoder, setup).
  Random weights never stop early: both sides make N decoder calls and
  report the same ``tokens_per_forward``; the tokens differ (other random
  streams), so the check is shapes, ranges and the number of passes.
* ``dg_sc_input/B1/H{H}``: item 5 of the issue, the model's self-conditioning
  input path that the step feeds (``DiffusionGemmaDecoderModel``: ``softmax(sc,
  dtype=float32)``, ``.to(bfloat16)``, ``@ embed_tokens.weight``): the bytes of
  its ``[B, C, V]`` temporaries and the time of each piece, at hidden size 2816
  (an assumed width for the 26B-A4B checkpoint, not checked against its config
  here; transformers' ``DiffusionGemmaTextConfig`` default is 2304). The bytes
  of the temporaries do not depend on it; the table's size and the matmul's time
  do. That is what a fused "probabilities times embedding table" kernel would
  save; it is not built.

Memory: ``peak extra`` is the process's peak resident set during one call minus
the resident set before it (:func:`dmkernels.bench.measure.peak_extra_bytes`'s
method on Linux: glibc's mmap threshold lowered to 64 KiB so every large
allocation is fresh and returned on free, the peak reset through
``/proc/self/clear_refs``; glibc maps blocks over 32 MiB fresh anyway, so the
large cases' times are as without it), taken on the same call that is timed for calls over
2 s (so the slow upstream steps run once), on a separate call otherwise. Time:
the median of repeats after warm-up for calls under 2 s, else that one call.
"""
from __future__ import annotations

import gc
import time
import types

import torch

from dmkernels.bench import measure
from dmkernels.bench.cases import DIFFUSION_GEMMA_VOCAB, SEED, random_logits

CANVAS = 256
QUICK_VOCAB, QUICK_CANVAS = 4096, 32
HIDDEN_26B = 2816  # assumed 26B-A4B width (not verified; the config default is 2304): table size and matmul time only
EMB_DTYPE = torch.bfloat16  # the released checkpoint's dtype (the model's logits are float32)
# generate's defaults (DiffusionGemmaGenerationConfig / _get_default_generation_params).
ENTROPY_BOUND, T_MIN, T_MAX, STEPS = 0.1, 0.4, 0.8, 48
STABILITY, CONFIDENCE = 1, 0.005

_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16"}


def _upstream():
    from transformers.models.diffusion_gemma import generation_diffusion_gemma as gen

    return gen


def available() -> bool:
    """Whether the installed transformers has DiffusionGemma."""
    try:
        _upstream()
    except ImportError:
        return False
    return True


def tiny_model(vocab_size: int, canvas_length: int, *, hidden_size: int = 64, seed: int = 0):
    """A random-weight ``DiffusionGemmaForBlockDiffusion`` of tiny width (2 layers,
    float32) at ``vocab_size``. The vision tower is given tiny: left unset,
    transformers builds the full Gemma-4 one (167 M parameters)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=32,
                sliding_window=32, layer_types=["sliding_attention", "full_attention"],
                max_position_embeddings=1024, num_experts=4, top_k_experts=2, moe_intermediate_size=hidden_size)
    vision = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=16, position_embedding_size=64)
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                  boi_token_id=vocab_size - 4, eoi_token_id=vocab_size - 3,
                                  image_token_id=vocab_size - 2)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    torch.random.set_rng_state(state)
    return model


# ----------------------------------------------------------------------------- measuring


def _rss(field: str) -> int:
    return measure._proc_status_bytes(field)  # noqa: SLF001 (the same counters as peak_extra_bytes)


def measure_call(fn, *, budget_s: float = 2.0, once_above_s: float = 2.0) -> dict:
    """Time and peak extra memory of ``fn()``. The first call is timed and its
    peak measured (RSS peak minus RSS before); when it took over ``once_above_s``
    that is the only call, else the time is the median of repeats after warm-up
    (:func:`measure.time_call`). Returns seconds, repeats, peak_extra_bytes (None
    where the RSS peak cannot be read) and the first call's output."""
    device = torch.device("cpu")
    peaks = measure.enable_rss_peaks()
    gc.collect()
    if peaks:
        measure._reset_rss_peak()  # noqa: SLF001
        before = _rss("VmRSS")
    start = time.perf_counter()
    out = fn()
    first_s = time.perf_counter() - start
    peak = max(0, _rss("VmHWM") - before) if peaks else None
    if first_s > once_above_s:
        return dict(seconds=first_s, repeats=1, peak_extra_bytes=peak, out=out)
    timing, _ = measure.time_call(fn, device, budget_s=budget_s, once_above_s=once_above_s)
    return dict(seconds=timing.median_s, repeats=timing.repeats, peak_extra_bytes=peak, out=out)


# ----------------------------------------------------------------------------- the step


class _Stub:
    """``decoder_forward`` returning the same logits every call (the model's
    output is a fresh tensor the step owns; neither step writes into it)."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, **kwargs):
        return types.SimpleNamespace(logits=self.logits)


def _step_self(vocab: int):
    """What both steps read from ``self``: the vocabulary size and the embedding dtype."""
    return types.SimpleNamespace(
        config=types.SimpleNamespace(text_config=types.SimpleNamespace(vocab_size=vocab)),
        model=types.SimpleNamespace(decoder=types.SimpleNamespace(
            embed_tokens=types.SimpleNamespace(weight=torch.empty(0, dtype=EMB_DTYPE)))))


class StepCase:
    """One denoising step at [B, C, V], ours (steady state and first step) and transformers'."""

    def __init__(self, batch: int, dtype: torch.dtype, vocab: int = DIFFUSION_GEMMA_VOCAB, canvas: int = CANVAS):
        self.batch, self.dtype, self.vocab, self.canvas = batch, dtype, vocab, canvas
        self.name = f"dg_step/B{batch}/{_SHORT[dtype]}" + ("" if vocab == DIFFUSION_GEMMA_VOCAB else f"/V{vocab}")

    def describe(self) -> str:
        return (f"[B, C, V] = [{self.batch}, {self.canvas}, {self.vocab}] {_SHORT[self.dtype]} logits (randn * 4), "
                f"bf16 embedding, step 47 of {STEPS}, entropy_bound={ENTROPY_BOUND}, t_min={T_MIN}, t_max={T_MAX}, "
                f"stopping ({STABILITY}, {CONFIDENCE})")

    def _kwargs(self, gen, logits, sampler, sc, cur_step):
        B, C = self.batch, self.canvas
        g = torch.Generator().manual_seed(1)
        canvas = torch.randint(0, self.vocab, (B, C), generator=g)
        procs = gen.LogitsProcessorList([gen.LinearTemperatureScheduleLogitsProcessor(
            t_min=T_MIN, t_max=T_MAX, max_denoising_steps=STEPS)])
        return dict(decoder_forward=_Stub(logits), current_canvas=canvas, argmax_canvas=canvas.clone(),
                    input_ids=torch.zeros(B, 8, dtype=torch.int64), decoder_position_ids=None,
                    self_conditioning_logits=sc, mask_mapping=None, cache=None,
                    finished_denoising=torch.zeros(B, dtype=torch.bool), cur_step=cur_step, sampler=sampler,
                    logits_processor=procs,
                    diffusion_stopping_criteria=gen.StableAndConfidentStoppingCriteria(STABILITY, CONFIDENCE))

    def _sampler(self, gen):
        return gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=ENTROPY_BOUND),
                                       canvas_length=self.canvas, vocab_size=self.vocab, max_denoising_steps=STEPS)

    def run(self, *, budget_s: float) -> dict:
        from dmkernels.compat import diffusion_gemma as dg

        gen = _upstream()
        me = _step_self(self.vocab)
        logits = random_logits((self.batch, self.canvas, self.vocab), self.dtype, torch.device("cpu"))
        torch.manual_seed(SEED)  # ours draws its seed from torch's generator once per sampler

        # Ours, steady state: the first step of the canvas allocates the buffer, the
        # measured calls are later steps that overwrite it in place.
        sampler = self._sampler(gen)
        _, _, buf, _ = dg.denoising_step(me, **self._kwargs(gen, logits, sampler, None, STEPS))

        def ours_steady():
            return dg.denoising_step(me, **self._kwargs(gen, logits, sampler, buf, STEPS - 1))

        steady = measure_call(ours_steady, budget_s=budget_s)
        o_canvas, o_argmax, o_sc, o_fin = steady.pop("out")
        o_accept = sampler.accepted_token_mask.clone()
        assert o_sc is buf

        def ours_first():
            return dg.denoising_step(me, **self._kwargs(gen, logits, self._sampler(gen), None, STEPS - 1))

        first = measure_call(ours_first, budget_s=budget_s)
        first_sc = first.pop("out")[2]
        first_same = torch.equal(first_sc.view(torch.int16), buf.view(torch.int16))
        del first_sc

        up_sampler = self._sampler(gen)
        up = measure_call(lambda: gen.DiffusionGemmaGenerationMixin._denoising_step(
            me, **self._kwargs(gen, logits, up_sampler, None, STEPS - 1)), budget_s=budget_s)
        u_canvas, u_argmax, u_sc, u_fin = up.pop("out")
        u_accept = up_sampler.accepted_token_mask

        problems = []
        if not torch.equal(o_argmax, u_argmax):
            problems.append(f"argmax canvas: {int((o_argmax != u_argmax).sum())} positions differ")
        if u_sc.dtype != o_sc.dtype or not torch.equal(u_sc.view(torch.int16), o_sc.view(torch.int16)):
            problems.append("self-conditioning logits differ")
        if not first_same:
            problems.append("first step's self-conditioning logits differ from the steady state's")
        if not torch.equal(o_fin, u_fin):
            problems.append("finished_denoising differs")
        for side, c in (("ours", o_canvas), ("upstream", u_canvas)):
            bad = int(((c < 0) | (c >= self.vocab)).sum())
            if bad:
                problems.append(f"{side}: {bad} canvas tokens outside [0, V)")
        accept_rows_equal = int((o_accept == u_accept).all(-1).sum())
        logits_bytes = logits.numel() * logits.element_size()
        del logits, buf, o_sc, u_sc
        gc.collect()
        record = dict(
            case=self.name, group="diffusion_gemma_step", shape=[self.batch, self.canvas, self.vocab],
            dtype=_SHORT[self.dtype], embedding_dtype=_SHORT[EMB_DTYPE], logits_bytes=logits_bytes,
            baseline="transformers DiffusionGemmaGenerationMixin._denoising_step",
            ours_steady_s=steady["seconds"], ours_steady_repeats=steady["repeats"],
            ours_steady_peak_extra_bytes=steady["peak_extra_bytes"],
            ours_first_s=first["seconds"], ours_first_repeats=first["repeats"],
            ours_first_peak_extra_bytes=first["peak_extra_bytes"],
            upstream_s=up["seconds"], upstream_repeats=up["repeats"],
            upstream_peak_extra_bytes=up["peak_extra_bytes"],
            speedup_steady=up["seconds"] / steady["seconds"], speedup_first=up["seconds"] / first["seconds"],
            accepted_per_row_ours=o_accept.sum(-1).tolist(), accept_rows_equal=accept_rows_equal,
            settings=self.describe(), check="; ".join(problems) or "ok",
        )
        up_peak = up["peak_extra_bytes"]
        for key in ("steady", "first"):
            ours_peak = record[f"ours_{key}_peak_extra_bytes"]
            record[f"memory_fraction_{key}"] = ours_peak / up_peak if up_peak and ours_peak is not None else None
        return record


# ----------------------------------------------------------------------------- whole generate


class GenerateCase:
    """``model.generate`` unpatched and patched on a tiny-width model at the vocabulary."""

    def __init__(self, batch: int, steps: int, vocab: int = DIFFUSION_GEMMA_VOCAB, canvas: int = CANVAS,
                 prompt: int = 16):
        self.batch, self.steps, self.vocab, self.canvas, self.prompt = batch, steps, vocab, canvas, prompt
        self.name = f"dg_generate/B{batch}/N{steps}" + ("" if vocab == DIFFUSION_GEMMA_VOCAB else f"/V{vocab}")

    def describe(self) -> str:
        return (f"tiny DiffusionGemma (hidden 64, 2 layers, float32) V={self.vocab}, canvas {self.canvas}, "
                f"B={self.batch}, prompt {self.prompt}, max_new_tokens={self.canvas} (one canvas), "
                f"max_denoising_steps={self.steps}, "
                "other settings generate's defaults")

    def run(self) -> dict:
        from dmkernels.compat import diffusion_gemma as dg

        model = tiny_model(self.vocab, self.canvas)
        prompt = torch.randint(3, self.vocab - 8, (self.batch, self.prompt), generator=torch.Generator().manual_seed(0))
        decoder = {"calls": 0, "s": 0.0}
        forward = model.forward

        def timed_forward(*args, **kwargs):
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            decoder["s"] += time.perf_counter() - start
            decoder["calls"] += 1
            return out

        # generate calls self.forward for the decoder passes (the encoder is model.model.encoder).
        object.__setattr__(model, "forward", timed_forward)
        kwargs = dict(max_new_tokens=self.canvas, max_denoising_steps=self.steps)
        # Lazy initialisation (the first generate takes seconds more), on the cheap patched step.
        dg.patch(model)
        torch.manual_seed(0)
        model.generate(prompt[:1, :4], max_new_tokens=self.canvas, max_denoising_steps=1)
        dg.unpatch(model)
        sides = {}
        for side in ("unpatched", "patched"):
            if side == "patched":
                dg.patch(model)
            decoder.update(calls=0, s=0.0)
            torch.manual_seed(0)
            m = measure_call(lambda: model.generate(prompt, **kwargs), once_above_s=0.0)
            out = m.pop("out")
            seq = out.sequences
            sides[side] = dict(total_s=m["seconds"], decoder_s=decoder["s"], rest_s=m["seconds"] - decoder["s"],
                               decoder_calls=decoder["calls"], peak_extra_bytes=m["peak_extra_bytes"],
                               tokens_per_forward=out.tokens_per_forward.tolist(),
                               new_tokens=int(seq.shape[1] - self.prompt))
            problems = []
            if list(seq.shape) != [self.batch, self.prompt + self.canvas]:
                problems.append(f"sequences shape {list(seq.shape)}")
            if not torch.equal(seq[:, :self.prompt], prompt):
                problems.append("prompt changed")
            if int(((seq < 0) | (seq >= self.vocab)).sum()):
                problems.append("tokens outside [0, V)")
            sides[side]["check"] = "; ".join(problems) or "ok"
            del out, seq
        dg.unpatch(model)
        del model
        gc.collect()
        u, p = sides["unpatched"], sides["patched"]
        problems = [f"{s}: {sides[s]['check']}" for s in sides if sides[s]["check"] != "ok"]
        if u["decoder_calls"] != p["decoder_calls"]:
            problems.append(f"decoder calls {u['decoder_calls']} unpatched, {p['decoder_calls']} patched")
        return dict(case=self.name, group="diffusion_gemma_generate", shape=[self.batch, self.canvas, self.vocab],
                    steps=self.steps, baseline="transformers DiffusionGemmaForBlockDiffusion.generate (unpatched)",
                    unpatched=u, patched=p, speedup_total=u["total_s"] / p["total_s"],
                    speedup_rest=u["rest_s"] / p["rest_s"] if p["rest_s"] > 0 else None,
                    settings=self.describe(), check="; ".join(problems) or "ok")


# ----------------------------------------------------------------------------- item 5: the model's sc input


class SelfConditioningCase:
    """The decoder's self-conditioning input path on the step's output, piece by piece."""

    def __init__(self, batch: int, hidden: int, vocab: int = DIFFUSION_GEMMA_VOCAB, canvas: int = CANVAS):
        self.batch, self.hidden, self.vocab, self.canvas = batch, hidden, vocab, canvas
        self.name = f"dg_sc_input/B{batch}/H{hidden}" + ("" if vocab == DIFFUSION_GEMMA_VOCAB else f"/V{vocab}")

    def run(self, *, budget_s: float) -> dict:
        B, C, V, H = self.batch, self.canvas, self.vocab, self.hidden
        g = torch.Generator().manual_seed(0)
        sc = random_logits((B, C, V), torch.float32, torch.device("cpu")).to(EMB_DTYPE)
        table = torch.empty(V, H, dtype=EMB_DTYPE).normal_(0.0, 0.02, generator=g)
        probs = sc.softmax(dim=-1, dtype=torch.float32)
        cast = probs.to(EMB_DTYPE)
        pieces = {
            "softmax_f32": lambda: sc.softmax(dim=-1, dtype=torch.float32),
            "to_embedding_dtype": lambda: probs.to(EMB_DTYPE),
            "matmul_table": lambda: torch.matmul(cast, table),
            "whole_path": lambda: torch.matmul(sc.softmax(dim=-1, dtype=torch.float32).to(EMB_DTYPE), table),
        }
        timings = {k: measure_call(fn, budget_s=budget_s) for k, fn in pieces.items()}
        rows = B * C
        f32_bytes, emb_bytes = rows * V * 4, rows * V * torch.empty((), dtype=EMB_DTYPE).element_size()
        table_bytes = V * H * table.element_size()
        out_bytes = rows * H * table.element_size()
        path_peak = timings["whole_path"]["peak_extra_bytes"]
        del sc, table, probs, cast
        gc.collect()
        return dict(
            case=self.name, group="diffusion_gemma_self_conditioning", shape=[B, C, V], hidden=H,
            embedding_dtype=_SHORT[EMB_DTYPE],
            seconds={k: t["seconds"] for k, t in timings.items()},
            peak_extra_bytes={k: t["peak_extra_bytes"] for k, t in timings.items()},
            softmax_f32_bytes=f32_bytes, cast_bytes=emb_bytes, table_bytes=table_bytes, sc_bytes=emb_bytes,
            output_bytes=out_bytes,
            # Measured: softmax(sc, dtype=float32) on bf16 input also holds a float32
            # copy of sc next to its result, so the path peaks above the two named
            # temporaries. A fused kernel reads sc and the table and writes [B, C, H]:
            # it saves the path's peak less its output.
            path_peak_extra_bytes=path_peak,
            fused_saves_bytes=path_peak - out_bytes if path_peak is not None else f32_bytes + emb_bytes,
            # The named temporaries are each written once and read once at least.
            temporaries_traffic_bytes=2 * (f32_bytes + emb_bytes),
            # What the two separate passes cost now; a fused kernel still computes the
            # exponentials, inside the matmul's loop over V, so it saves at most this.
            separate_passes_s=timings["softmax_f32"]["seconds"] + timings["to_embedding_dtype"]["seconds"],
            settings=(f"sc [B, C, V] = [{B}, {C}, {V}] bf16, embed_tokens.weight [{V}, {H}] bf16: "
                      "softmax(sc, dtype=float32).to(bf16) @ weight, as DiffusionGemmaDecoderModel"),
            check="ok",
        )


# ----------------------------------------------------------------------------- selection and the CLI


def select_cases(*, quick: bool = False, name_filter: str | None = None) -> list:
    if quick:
        V, C = QUICK_VOCAB, QUICK_CANVAS
        cases = [StepCase(1, torch.float32, V, C), StepCase(2, torch.bfloat16, V, C),
                 GenerateCase(1, 2, V, C, prompt=5), GenerateCase(2, 2, V, C, prompt=5),
                 SelfConditioningCase(1, 64, V, C)]
    else:
        cases = [StepCase(1, torch.float32), StepCase(1, torch.bfloat16), StepCase(8, torch.bfloat16),
                 StepCase(8, torch.float32),  # upstream: about 10 GB and tens of seconds, once
                 SelfConditioningCase(1, HIDDEN_26B),
                 GenerateCase(1, 3), GenerateCase(8, 2)]
    return [c for c in cases if not name_filter or name_filter in c.name]


def _mb(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.2f}" if n < 10 * 2**20 else f"{n / 2**20:.0f}"


def _t(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _print(record: dict) -> None:
    group = record["group"]
    if group == "diffusion_gemma_step":
        r = record
        print(f"{r['case']:<22} upstream {_t(r['upstream_s']):>10} ({r['upstream_repeats']}x), peak extra "
              f"{_mb(r['upstream_peak_extra_bytes'])} MiB | ours steady {_t(r['ours_steady_s']):>10}, "
              f"{_mb(r['ours_steady_peak_extra_bytes'])} MiB ({_pct(r['memory_fraction_steady'])}), "
              f"{r['speedup_steady']:.0f}x | ours first step {_t(r['ours_first_s']):>10}, "
              f"{_mb(r['ours_first_peak_extra_bytes'])} MiB ({_pct(r['memory_fraction_first'])}), "
              f"{r['speedup_first']:.0f}x | logits {_mb(r['logits_bytes'])} MiB | accept rows equal "
              f"{r['accept_rows_equal']}/{r['shape'][0]} | {r['check']}")
    elif group == "diffusion_gemma_generate":
        r = record
        for side in ("unpatched", "patched"):
            s = r[side]
            print(f"{r['case'] if side == 'unpatched' else '':<22} {side:<9} total {_t(s['total_s']):>10}, decoder "
                  f"{_t(s['decoder_s']):>10} ({s['decoder_calls']} calls), rest {_t(s['rest_s']):>10}, peak extra "
                  f"{_mb(s['peak_extra_bytes'])} MiB, tokens/forward {s['tokens_per_forward']}")
        print(f"{'':<22} speedup total {r['speedup_total']:.1f}x, rest (steps + encoder) "
              f"{r['speedup_rest']:.1f}x | {r['check']}")
    else:
        r = record
        s = r["seconds"]
        print(f"{r['case']:<22} softmax(sc, f32) {_t(s['softmax_f32'])}, .to(bf16) {_t(s['to_embedding_dtype'])}, "
              f"@ table {_t(s['matmul_table'])}, whole {_t(s['whole_path'])} | temporaries: softmax out "
              f"{_mb(r['softmax_f32_bytes'])} + bf16 cast {_mb(r['cast_bytes'])} MiB, whole path peak extra "
              f"{_mb(r['path_peak_extra_bytes'])} MiB (softmax(sc, f32) alone "
              f"{_mb(r['peak_extra_bytes']['softmax_f32'])} MiB) | a fused kernel would save "
              f"{_mb(r['fused_saves_bytes'])} MiB, >= {_mb(r['temporaries_traffic_bytes'])} MiB of traffic and at "
              f"most {_t(r['separate_passes_s'])}; the {_mb(r['table_bytes'])} MiB table is read either way")
    print(f"    {record['settings']}", flush=True)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.{3 if x < 0.01 else 1}f}% of upstream"


def run_cli(*, quick: bool, name_filter: str | None, meta: dict) -> list[dict]:
    """Runs the selected cases on the CPU, printing one block each; returns the
    records (each updated with ``meta`` and the transformers version)."""
    if not available():
        print("diffusion_gemma: skipped (this transformers has no DiffusionGemma)")
        return []
    cases = select_cases(quick=quick, name_filter=name_filter)
    if not cases:
        return []
    import transformers

    measure.enable_rss_peaks()
    print()
    print("DiffusionGemma (issue 15): dmkernels' denoising step vs transformers' _denoising_step on the same logits; "
          "generate patched vs unpatched; the self-conditioning input path. peak extra = peak RSS during one call "
          "minus RSS before (MiB); calls over 2 s run once (dmkernels/bench/diffusion_gemma.py)")
    records, started = [], time.perf_counter()
    for case in cases:
        record = case.run() if isinstance(case, GenerateCase) else case.run(budget_s=0.3 if quick else 2.0)
        record.update(meta, transformers=transformers.__version__, device_type="cpu")
        records.append(record)
        _print(record)
    for r in records:
        if r["check"] != "ok":
            print(f"FAIL {r['case']}: {r['check']}")
    print(f"{len(records)} DiffusionGemma cases in {time.perf_counter() - started:.0f} s")
    return records
