"""``python -m dmkernels.bench.gpu_bench --out RECORDS.jsonl [--device cuda|cpu] [--quick] [--backends native,triton]``

The GPU benchmark stage of ``make gpu-check`` (dmkernels/bench/gpu_check.py),
one record per (case, backend), appended to ``--out`` as JSON lines as soon as it
is measured, so that a stage stopped at its time limit keeps what it measured.

- The sweep: on bf16 logits ``[rows, 126464]`` (LLaDA's vocabulary) for
  rows = B*L in 32, 256, 2048, 8192, at T = 0 and T = 1: ``token_stats``
  (against the float32 eager step, :func:`baselines.eager_float32_stats`, at
  T = 0) and LLaDA's whole step (against its float64 step,
  :func:`baselines.llada_step`). Each size also times a device-to-device
  ``copy_`` of the same bytes: ``copy_gbps`` counts the bytes read plus written,
  ``gbps`` the logits bytes the step reads, and ``bandwidth_fraction = gbps /
  copy_gbps`` says how close one pass over the logits comes to what the memory
  moves for a plain copy.
- Every case of dmkernels/bench/cases.py (the LLaDA float64 step, the float32
  eager and Dream steps, select + commit at ``[8, 1024]``), reused as they are.
- The sampling cost: ``token_stats`` on bf16 ``[2048, 126464]`` randn * 4 and
  peaked rows at T = 0, T = 1, T = 0.7 with tempered scores and T = 0.7 without
  (:func:`sampling_cases`), ours only: the summary reports T > 0 time over T = 0
  time per backend.
- One large copy (1 GiB) for the card's copy bandwidth.

Ours runs once per backend: the op wrappers read ``DMKERNELS_BACKEND`` at every
call, so the cases need no backend argument. Timing on CUDA: a first call
(compiles Triton kernels, warms the allocator), warm-up calls, then CUDA events
around each timed call with a 256 MiB buffer written in between, so every call
reads its inputs from device memory and not from L2; the median is reported.
Every output is checked (:meth:`Case.mismatch`) before it counts.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

import dmkernels
from dmkernels.bench import measure
from dmkernels.bench.cases import (Case, LLaDAStepCase, SamplingCostCase, TokenStatsCase, all_cases, select_cases)
from dmkernels.bench.cases import _name as cases_name
from dmkernels.bench.gpu_check import record_failed
from dmkernels.constants import LLADA_VOCAB_SIZE

SWEEP_ROWS = (32, 256, 2048, 8192)
SWEEP_TEMPERATURES = (0.0, 1.0)
QUICK_ROWS = (8, 16)  # the CPU dry run: the same pipeline on small inputs (LLaDA commits 4 a row)
FLUSH_BYTES = 256 << 20  # over four times an H100/H200's L2 (50/60 MB)
PEAK_COPY_BYTES = 1 << 30


def sweep_cases(rows=SWEEP_ROWS, temperatures=SWEEP_TEMPERATURES, vocab: int = LLADA_VOCAB_SIZE) -> list[Case]:
    """On bf16 ``[n, vocab]`` logits (built as ``[1, n, vocab]``, which the ops treat
    alike, so that :attr:`Case.logits_bytes` counts them): ``token_stats`` (against
    the float32 eager step), and LLaDA's whole step (``token_stats`` +
    ``select_topk`` + ``commit_`` against its float64 step, 4 commits)."""
    stats = [TokenStatsCase(f"sweep/token_stats/{n}x{vocab}/bf16/T{t:g}", "token_stats", "eager_float32_stats",
                            (1, n, vocab), torch.bfloat16, t)
             for t in temperatures for n in rows]
    llada = [LLaDAStepCase(f"sweep/llada_step/{n}x{vocab}/bf16/T{t:g}", "token_stats+select_topk+commit_",
                           "llada_step", (1, n, vocab), torch.bfloat16, t)
             for t in temperatures for n in rows]
    return stats + llada


SAMPLING_ROWS = 2048
SAMPLING_KINDS = ("randn4", "peaked")
#: (T, tempered scores): one distribution per element, then two (T != 1 untempered)
SAMPLING_MODES = ((1.0, False), (0.7, True), (0.7, False))


def sampling_cases(rows: int = SAMPLING_ROWS, vocab: int = LLADA_VOCAB_SIZE) -> list[Case]:
    """What sampling costs over the argmax on each backend (issue 17's ratio):
    ``token_stats`` on bf16 ``[rows, vocab]`` of each kind of rows at T = 0 and in
    each sampling mode, ours only; the summary divides each T > 0 time by the T = 0
    time of the same backend and rows."""
    shape = (1, rows, vocab)
    out: list[Case] = []
    for kind in SAMPLING_KINDS:
        out.append(TokenStatsCase(cases_name("sampling_T0", shape, torch.bfloat16, 0.0, kind), "token_stats",
                                  "token_stats_T0", shape, torch.bfloat16, 0.0, True, kind))
        for T, tempered in SAMPLING_MODES:
            kind_name = "sampling_cost_tempered" if tempered else "sampling_cost"
            out.append(SamplingCostCase(cases_name(kind_name, shape, torch.bfloat16, T, kind), "token_stats",
                                        "token_stats_T0", shape, torch.bfloat16, T, True, kind, tempered=tempered))
    return out


def plan(quick: bool = False) -> list[tuple[str, Case, bool]]:
    """(group, case, time the baseline?) in the order they run. The eager float32
    step computes the argmax, so it is a baseline for T = 0 only."""
    rows = QUICK_ROWS if quick else SWEEP_ROWS
    out = [("sweep", c, c.baseline == "llada_step" or c.temperature == 0) for c in sweep_cases(rows)]
    out += [("sampling", c, False) for c in sampling_cases(rows[-1] if quick else SAMPLING_ROWS)]
    if quick:
        # Small shapes, one case of each kind but Dream's (its sort takes a second a
        # call on one CPU core), and not LLaDA's float64 sampling (as slow).
        listed = [c for c in select_cases(quick=True) if c.baseline != "dream_step" and c.temperature == 0]
    else:
        listed = all_cases()
    return out + [("cases", c, True) for c in listed]


class Timer:
    """Median time of a call: CUDA events around each call on a GPU (with L2
    flushed in between), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device, budget_s: float = 0.25, min_repeats: int = 3, max_repeats: int = 100,
                 warmup: int = 2):
        self.device = device
        self.budget_s, self.min_repeats, self.max_repeats, self.warmup = budget_s, min_repeats, max_repeats, warmup
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, int, Any]:
        """(median microseconds, repeats, output of the first call)."""
        self._sync()
        first = fn()  # Triton compiles here; not timed
        self._sync()
        start = time.perf_counter()
        for _ in range(self.warmup):
            fn()
        self._sync()
        per_call = (time.perf_counter() - start) / max(1, self.warmup)
        if per_call > 1.0:
            repeats = 1
        else:
            repeats = int(min(self.max_repeats, max(self.min_repeats, self.budget_s / max(per_call, 1e-6))))
        samples = []
        if self.device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]
            for begin, end in events:
                self.flush.fill_(1)  # evict the inputs from L2; outside the timed region
                begin.record()
                fn()
                end.record()
            torch.cuda.synchronize(self.device)
            samples = [begin.elapsed_time(end) * 1e3 for begin, end in events]
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(samples), repeats, first


@contextlib.contextmanager
def backend(name: str):
    """Run the op wrappers on ``name`` (through DMKERNELS_BACKEND, read at every call)."""
    old = os.environ.get("DMKERNELS_BACKEND")
    os.environ["DMKERNELS_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DMKERNELS_BACKEND", None)
        else:
            os.environ["DMKERNELS_BACKEND"] = old


def backend_missing(name: str, device: torch.device) -> str | None:
    """Why ``name`` cannot run ops on ``device`` here, or None."""
    report = dmkernels.backends()
    if name == "native":
        state = report[device.type]
        return None if state == "available" else state
    if name == "triton":
        if report["triton"] != "available":
            return report["triton"]
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
        return None
    if name == "reference":
        return None
    return f"unknown backend {name!r}"


def copy_gbps(nbytes: int, device: torch.device, timer: Timer) -> float:
    """Bandwidth of a device-to-device ``copy_`` of ``nbytes``: bytes read plus
    written over the median time."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(7)  # not zeros: real traffic
    dst = torch.empty_like(src)
    us, _, _ = timer(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / (us * 1e-6) / 1e9


def _finite(value):
    return value if value is None or math.isfinite(value) else None


def measure_case(group: str, case: Case, with_baseline: bool, backends: list[str], device: torch.device,
                 timer: Timer, copies: dict[int, float], meta: dict) -> list[dict]:
    """One record per backend for ``case`` (the baseline timed once, shared)."""
    records = []
    case.setup(device)
    try:
        nbytes = case.logits_bytes
        if nbytes and nbytes not in copies:
            copies[nbytes] = copy_gbps(nbytes, device, timer)
        base = {}
        if with_baseline:
            us, repeats, out = timer(case.run_baseline)
            problem = case.mismatch("baseline", out)
            del out
            base = dict(baseline=case.baseline, baseline_median_us=us, baseline_repeats=repeats,
                        baseline_check=problem or "ok",
                        baseline_peak_extra_bytes=measure.peak_extra_bytes(case.run_baseline, device))
        for name in backends:
            record = dict(meta, group=group, case=case.name, op=case.op, backend=name, shape=_shape(case),
                          dtype=str(case.dtype).replace("torch.", ""), temperature=case.temperature,
                          logits_bytes=nbytes or None)
            missing = backend_missing(name, device)
            if missing:
                records.append(dict(record, check=f"skipped: {missing}"))
                continue
            try:
                with backend(name):
                    us, repeats, out = timer(case.run_ours)
                    problem = case.mismatch("ours", out)
                    del out
                    peak = measure.peak_extra_bytes(case.run_ours, device)
            except Exception as exc:  # one broken backend must not hide the others
                records.append(dict(record, check=f"error: {type(exc).__name__}: {exc}"))
                continue
            gbps = nbytes / (us * 1e-6) / 1e9 if nbytes else None
            record.update(median_us=us, repeats=repeats, gbps=gbps, copy_gbps=copies.get(nbytes),
                          bandwidth_fraction=gbps / copies[nbytes] if nbytes else None,
                          peak_extra_bytes=peak, check=problem or "ok", **base)
            if base:
                record["ratio"] = base["baseline_median_us"] / us
                if base["baseline_check"] != "ok":
                    record["check"] = f"baseline: {base['baseline_check']}"
            records.append(record)
    finally:
        case.teardown()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def _shape(case: Case) -> list[int]:
    # The sweep's [1, n, V] is reported as the [B*L, V] it stands for.
    shape = list(case.shape)
    return shape[1:] if case.name.startswith("sweep/") else shape


def run(device: torch.device, backends: list[str], out_path: str | None, *, quick: bool = False,
        budget_s: float | None = None, name_filter: str | None = None) -> list[dict]:
    """Measure every planned case; append each record to ``out_path`` (JSON lines)
    as it is made and print a line for it. Returns the records."""
    timer = Timer(device, budget_s=budget_s if budget_s is not None else (0.05 if quick else 0.25))
    meta = dict(device=measure.device_name(device), device_type=device.type)
    records: list[dict] = []
    copies: dict[int, float] = {}  # copy GB/s by byte count, measured once each
    out = open(out_path, "a") if out_path else None

    def emit(record: dict) -> None:
        record = {k: _finite(v) if isinstance(v, float) else v for k, v in record.items()}
        records.append(record)
        if out:
            out.write(json.dumps(record) + "\n")
            out.flush()
        print(_line(record), flush=True)

    try:
        peak_bytes = (64 << 20) if quick else PEAK_COPY_BYTES
        emit(dict(meta, group="copy", case=f"copy/{peak_bytes}B", op="copy_", backend="torch", shape=[peak_bytes],
                  dtype="uint8", gbps=copy_gbps(peak_bytes, device, timer), check="ok"))
        for group, case, with_baseline in plan(quick):
            if name_filter and name_filter not in case.name:
                continue
            try:
                for record in measure_case(group, case, with_baseline, backends, device, timer, copies, meta):
                    emit(record)
            except Exception as exc:  # a failing baseline or setup: record it, go on
                emit(dict(meta, group=group, case=case.name, op=case.op, backend="-", shape=_shape(case),
                          dtype=str(case.dtype).replace("torch.", ""), temperature=case.temperature,
                          check=f"error: {type(exc).__name__}: {exc}"))
    finally:
        if out:
            out.close()
    return records


def _line(r: dict) -> str:
    def num(key, fmt, width):
        return (format(r[key], fmt) if r.get(key) is not None else "-").rjust(width)

    return (f"{r['case']:<48} {r['backend']:<9} {num('median_us', '.1f', 10)} us {num('gbps', '.1f', 7)} GB/s "
            f"frac {num('bandwidth_fraction', '.2f', 4)} ratio {num('ratio', '.1f', 6)}  {r.get('check', '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmkernels.bench.gpu_bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", metavar="PATH", help="append the records to PATH, one JSON object a line")
    parser.add_argument("--quick", action="store_true", help="small shapes (the CPU dry run)")
    parser.add_argument("--backends", default="native,triton", help="comma-separated (default native,triton)")
    parser.add_argument("--filter", metavar="SUBSTR", help="only cases whose name contains SUBSTR")
    parser.add_argument("--budget", type=float, help="seconds of timed calls per side and case")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this PyTorch sees no CUDA device")
    if device.type == "cpu":
        measure.use_one_thread()  # a small copy with two threads on a shared machine: milliseconds of overhead
    records = run(device, [b for b in args.backends.split(",") if b], args.out, quick=args.quick,
                  budget_s=args.budget, name_filter=args.filter)
    bad = [r for r in records if record_failed(r)]
    for r in bad:
        print(f"FAIL {r['case']} [{r['backend']}]: {r['check']}")
    print(f"gpu_bench: {len(records)} records, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
