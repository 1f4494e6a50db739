"""Wall time and peak extra memory of one call, on CPU or CUDA.

Time: warm-up, then the median of N repeats, N chosen from the warm-up time so
that big cases run once or twice and tiny ones hundreds of times. Memory: a
separate call, measured as the peak of allocated memory above what was allocated
before it (CUDA: the caching allocator's counters; Linux CPU: the process's peak
resident set, see :func:`enable_rss_peaks`).
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

# glibc's mallopt parameter number for M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3
_rss_peaks: bool | None = None  # None: not tried yet


def use_one_thread() -> int:
    """One intra-op thread: ratios stay stable on a small shared machine. Returns it."""
    torch.set_num_threads(1)
    return torch.get_num_threads()


def enable_rss_peaks() -> bool:
    """Make the CPU peak-memory measurement possible; call once, before allocating.

    Sets glibc's mmap threshold to 64 KiB so that every allocation of at least that
    size is a fresh ``mmap`` and returned on free (the default threshold adapts and
    may keep freed blocks in the heap, hiding later allocations from the resident
    set), and checks that ``/proc/self/clear_refs`` can reset the peak. Returns
    whether CPU peaks can be measured.
    """
    global _rss_peaks
    if _rss_peaks is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _rss_peaks = libc.mallopt(_M_MMAP_THRESHOLD, 65536) == 1
            _reset_rss_peak()
            _rss_peaks = _rss_peaks and _proc_status_bytes("VmHWM") is not None
        except OSError:  # not glibc / not Linux / no permission
            _rss_peaks = False
    return _rss_peaks


def _reset_rss_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5: reset the peak resident set size (VmHWM) to the current one


def _proc_status_bytes(field: str) -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Median seconds of ``repeats`` timed calls."""

    median_s: float
    repeats: int


def time_call(
    fn: Callable[[], Any], device: torch.device, *, budget_s: float = 2.0, max_repeats: int = 2000,
    once_above_s: float = 2.0,
) -> tuple[Timing, Any]:
    """Median wall time of ``fn()`` and the output of its first call.

    Parameters
    ----------
    fn : callable
        The call to time (no arguments).
    device : torch.device
        Where it runs: CUDA calls are timed with events around each call.
    budget_s : float
        Rough time to spend on the timed repeats.
    max_repeats : int
        Upper bound on repeats for tiny calls.
    once_above_s : float
        A first call slower than this is the only sample: at seconds per call
        there is no warm-up effect worth a second run (LLaDA's float64 step).

    Returns
    -------
    (Timing, output of the first call)
    """
    _sync(device)
    start = time.perf_counter()
    first = fn()
    _sync(device)
    first_s = time.perf_counter() - start
    if first_s > once_above_s:
        return Timing(first_s, 1), first
    repeats = max(1, min(max_repeats, int(budget_s / max(first_s, 1e-6))))
    for _ in range(min(3, repeats)):  # more warm-up for tiny calls (caches, allocator)
        fn()
    samples = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        samples = [begin.elapsed_time(end) / 1e3 for begin, end in events]
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), repeats), first


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory that one call of ``fn()`` allocates beyond what was allocated
    before it (its outputs included), or None where it cannot be measured.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``. Linux CPU:
    ``VmHWM`` after the call minus ``VmRSS`` before, with the peak reset through
    ``/proc/self/clear_refs`` (needs :func:`enable_rss_peaks`; allocations under
    64 KiB come from the heap and are not seen).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return peak
    if device.type != "cpu" or not enable_rss_peaks():
        return None
    _reset_rss_peak()
    before = _proc_status_bytes("VmRSS")
    out = fn()
    peak = _proc_status_bytes("VmHWM")
    del out
    return max(0, peak - before)


def read_gbps(tensor: torch.Tensor, device: torch.device, *, budget_s: float = 0.5) -> float:
    """One plain pass of reads over ``tensor``'s bytes, in GB/s: the faster of
    ``torch.sum`` and ``torch.amax`` over them viewed as float32 (bf16 / fp16 data
    too, so that the pass runs at float32 speed: their own reductions convert
    every element and are not bound by memory), each timed like the cases
    (:func:`time_call`, median). The denominator of the benchmarks'
    ``bandwidth_fraction``, measured in the same run as the case it divides."""
    flat = tensor.reshape(-1)
    if flat.is_contiguous() and (flat.numel() * flat.element_size()) % 4 == 0:
        flat = flat.view(torch.uint8).view(torch.float32)
    nbytes = tensor.numel() * tensor.element_size()
    best = min(time_call(fn, device, budget_s=budget_s)[0].median_s
               for fn in (lambda: torch.sum(flat), lambda: torch.amax(flat)))
    return nbytes / best / 1e9


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
