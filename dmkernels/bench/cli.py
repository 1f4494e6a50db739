"""The benchmark job behind ``python -m dmkernels.bench`` (the module
:mod:`dmkernels.bench.__main__` only calls :func:`main`): :func:`run_case` times
one op case, :func:`main` parses the command line and runs the jobs. Library
code lives here so that the job modules (e2e, distributed, quality) and other
tools can import it without importing ``__main__``.

Usage: ``python -m dmkernels.bench [quality] [--quick] [--e2e] [--distributed] [--diffusion-gemma]
[--json PATH] [--filter SUBSTR] [--device cpu|cuda]``

Times every case of dmkernels/bench/cases.py (ours and its baseline), measures
the peak memory each side allocates and, for cases with logits, one plain read
of them (``bandwidth_fraction``: ours against that read, same run), checks both
outputs, and prints one row per case; then the end-to-end cases of dmkernels/bench/e2e.py (whole generations of
the drop-in samplers against their eager counterparts), then DiffusionGemma's step and
generate against transformers' (dmkernels/bench/diffusion_gemma.py; alone with
``--diffusion-gemma``). ``--distributed`` runs
only dmkernels/bench/distributed.py (vocabulary-parallel statistics against
gathering the logits, over gloo processes). Exits with status 1 when an output
is wrong.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

import dmkernels
from dmkernels.bench import measure
from dmkernels.bench.cases import Case, select_cases

# The --help description: the paragraph of this docstring that starts "Times every case".
_DESCRIPTION = next(p for p in __doc__.split("\n\n") if p.startswith("Times every case"))

_COLUMNS = (
    ("case", 44), ("ours ms", 10), ("base ms", 10), ("ratio", 8), ("GB/s", 7), ("read", 6), ("frac", 5),
    ("ours peak MB (%)", 18), ("base peak MB (%)", 18), ("check", 6),
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.1 else f"{seconds * 1e3:.1f}"


def _memory(peak: int | None, logits_bytes: int) -> str:
    if peak is None:
        return "n/a"
    text = f"{peak / 1e6:.1f}"
    return f"{text} ({100 * peak / logits_bytes:.0f}%)" if logits_bytes else text


def _row(cells) -> str:
    # Case names left-aligned, numbers right-aligned.
    widths = [w for _, w in _COLUMNS]
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def run_case(case: Case, device: torch.device, budget_s: float) -> dict:
    """Time and measure both sides of ``case`` on ``device``; returns its record."""
    case.setup(device)
    try:
        ours, ours_out = measure.time_call(case.run_ours, device, budget_s=budget_s)
        problems = [case.mismatch("ours", ours_out)]
        del ours_out
        # The read bandwidth of the same logits, measured next to ours.
        read = (measure.read_gbps(case.inputs["logits"], device, budget_s=min(budget_s, 0.5))
                if case.logits_bytes and "logits" in case.inputs else None)
        ours_peak = measure.peak_extra_bytes(case.run_ours, device)
        base, base_out = measure.time_call(case.run_baseline, device, budget_s=budget_s)
        problems.append(case.mismatch("baseline", base_out))
        del base_out
        base_peak = measure.peak_extra_bytes(case.run_baseline, device)
    finally:
        case.teardown()
        gc.collect()
    problems = [f"{side}: {p}" for side, p in zip(("ours", "baseline"), problems) if p]
    gbps = case.logits_bytes / ours.median_s / 1e9 if case.logits_bytes else None
    return {
        "case": case.name,
        "op": case.op,
        "baseline": case.baseline,
        "shape": list(case.shape),
        "dtype": str(case.dtype).removeprefix("torch."),
        "temperature": case.temperature,
        "median_us": ours.median_s * 1e6,
        "repeats": ours.repeats,
        "baseline_median_us": base.median_s * 1e6,
        "baseline_repeats": base.repeats,
        "ratio": base.median_s / ours.median_s,
        "gbps": gbps,
        "read_gbps": read,
        "bandwidth_fraction": gbps / read if read else None,
        "peak_extra_bytes": ours_peak,
        "baseline_peak_extra_bytes": base_peak,
        "logits_bytes": case.logits_bytes,
        "check": "; ".join(problems) or "ok",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmkernels.bench", description=_DESCRIPTION)
    parser.add_argument("job", nargs="?", choices=("speed", "quality"), default="speed",
                        help="speed (default): the op, end-to-end and distributed timings; quality: the Sudoku "
                             "policy benchmark (dmkernels/bench/quality.py)")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes only (a smoke test, well under a minute); no end-to-end cases "
                             "unless --e2e is given too (then the small ones)")
    parser.add_argument("--e2e", action="store_true",
                        help="only the end-to-end cases: drop-in samplers vs their eager counterparts "
                             "(LLaDA, Dream, Fast-dLLM at gen_length 256; the block-diffusion drop-ins LLaDA2, SDAR and "
                             "diffusers' scheduler at 256 and 1024; with --quick, tiny ones)")
    parser.add_argument("--distributed", action="store_true",
                        help="only the vocabulary-parallel cases: sharded token_stats vs gathering the logits, "
                             "2/4/8 gloo processes (with --quick, 2)")
    parser.add_argument("--diffusion-gemma", action="store_true",
                        help="only DiffusionGemma: dmkernels' step vs transformers' _denoising_step at V=262144, "
                             "generate patched vs unpatched, the self-conditioning input "
                             "(dmkernels/bench/diffusion_gemma.py, on the CPU; with --quick, tiny ones)")
    parser.add_argument("--json", metavar="PATH", help="also write the records to PATH as a JSON list")
    parser.add_argument("--filter", metavar="SUBSTR", help="only cases whose name contains SUBSTR")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--puzzles", type=int, help="quality: number of held-out puzzles (default 200, quick 24)")
    parser.add_argument("--out-dir", default="benchmarks/results",
                        help="quality: where sudoku_quality.json and .png go (default benchmarks/results)")
    parser.add_argument("--no-cost", action="store_true",
                        help="quality: skip timing a learned policy's choice at LLaDA's vocabulary "
                             "(learned_policy_cost_cpu.json; about 40 s on one core)")
    parser.add_argument("--orders", action="store_true",
                        help="quality: only the few-step orders benchmark (dmkernels/bench/orders.py: learned orders "
                             "against the heuristics at 4 and 8 calls on the Pairs task; orders_quality.json)")
    args = parser.parse_args(argv)
    if args.job == "quality" and args.orders:
        from dmkernels.bench import orders

        return orders.main(args)
    if args.job == "quality":
        from dmkernels.bench import quality

        return quality.main(args)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this PyTorch sees no CUDA device")
    threads = measure.use_one_thread()
    if device.type == "cpu":
        measure.enable_rss_peaks()  # before the first big allocation
    name = measure.device_name(device)
    only_group = args.e2e or args.distributed or args.diffusion_gemma
    cases = [] if only_group else select_cases(quick=args.quick, name_filter=args.filter)

    print(f"dmkernels {dmkernels.__version__} bench on {device.type} ({name}), torch {torch.__version__}, "
          f"{threads} intra-op thread (torch.set_num_threads(1)), backend: {dmkernels.backends()[device.type]}")
    records, failures = _run_op_cases(cases, device, name, threads, args.quick) if cases else ([], [])
    meta = dict(device=name, device_type=device.type, torch=torch.__version__, threads=threads)
    if args.distributed:
        from dmkernels.bench import distributed

        dist_records = distributed.run_cli(dict(meta, device=measure.device_name(torch.device("cpu")),
                                                device_type="cpu"), quick=args.quick)
        records += dist_records
        failures += [r for r in dist_records if r["check"] != "ok"]
    elif not args.diffusion_gemma and (args.e2e or not args.quick):
        from dmkernels.bench import e2e

        e2e_records = e2e.run_cli(device, quick=args.quick, name_filter=args.filter, meta=meta)
        if e2e_records:
            records += e2e_records
            failures += [r for r in e2e_records if r["check"] != "ok"]
    if args.diffusion_gemma or not (args.quick or args.e2e or args.distributed):
        from dmkernels.bench import diffusion_gemma

        dg_records = diffusion_gemma.run_cli(quick=args.quick, name_filter=args.filter, meta=meta)
        records += dg_records
        failures += [r for r in dg_records if r["check"] != "ok"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {args.json}")
    return 1 if failures else 0


def _run_op_cases(cases: list[Case], device: torch.device, name: str, threads: int, quick: bool):
    """The op cases: one row each; returns (records, failed records)."""
    print("time: median of N calls after warm-up (N = 1 for calls over 2 s); ratio = base / ours; "
          "GB/s = logits bytes / ours time; read = GB/s of one plain read of the same logits (sum or amax as "
          "float32, this run); frac = GB/s / read; peak = extra memory of one call (% of the logits)")
    print(_row(c for c, _ in _COLUMNS))
    records, started = [], time.perf_counter()
    for case in cases:
        record = run_case(case, device, budget_s=0.3 if quick else 2.0)
        record.update(device=name, device_type=device.type, torch=torch.__version__, threads=threads)
        records.append(record)
        print(_row((
            case.name,
            _ms(record["median_us"] / 1e6),
            _ms(record["baseline_median_us"] / 1e6),
            f"{record['ratio']:.1f}x",
            f"{record['gbps']:.2f}" if record["gbps"] is not None else "-",
            f"{record['read_gbps']:.1f}" if record["read_gbps"] is not None else "-",
            f"{record['bandwidth_fraction']:.2f}" if record["bandwidth_fraction"] is not None else "-",
            _memory(record["peak_extra_bytes"], case.logits_bytes),
            _memory(record["baseline_peak_extra_bytes"], case.logits_bytes),
            "ok" if record["check"] == "ok" else "FAIL",
        )), flush=True)
    failures = [r for r in records if r["check"] != "ok"]
    for r in failures:
        print(f"FAIL {r['case']}: {r['check']}")
    print(f"{len(records)} cases in {time.perf_counter() - started:.0f} s")
    return records, failures


