"""``python -m dmkernels.bench.gpu_sanitize [--device cuda|cpu] [--backends native,triton]``

Calls every op of ``torch.ops.dmkernels`` (and, with the triton backend, of
``torch.ops.dmkernels_triton``) on small odd shapes that reach each kernel
variant once: every logits dtype, T = 0 and T > 0, ``positions``, a device
``rng``, a vocabulary split over several blocks, a row stride larger than V,
rows longer than a block of threads, [L] and [B, L] groups, int32 and int64
canvases, column-major inputs. ``make gpu-check`` runs it under
``compute-sanitizer --tool memcheck`` with PyTorch's caching allocator off
(``PYTORCH_NO_CUDA_MEMORY_CACHING=1``), so that an access past a tensor is past
its allocation and memcheck sees it. The registry's sample inputs of every op
(dmkernels/_registry.py) are called too.

Prints one line per call and exits 1 when a call raised or an op registered in
``torch.ops.dmkernels`` was never called (a new op is called on its registry
samples; add calls to ``own_calls`` for the variants those do not reach).
On ``--device cpu`` it checks the script itself against the CPU kernels (and
Triton under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback

import torch

import dmkernels  # noqa: F401  (loads dmkernels._C: registers torch.ops.dmkernels.*)
from dmkernels import triton as dm_triton
from dmkernels._registry import OPS


def registered_ops() -> set[str]:
    """Names of the ops in the ``dmkernels`` namespace, from the dispatcher (from
    the registry where this PyTorch lacks the private listing)."""
    if not hasattr(torch._C, "_dispatch_get_all_op_names"):
        return set(OPS)
    names = set()
    for full in torch._C._dispatch_get_all_op_names():
        namespace, _, rest = full.partition("::")
        if namespace == "dmkernels":
            names.add(rest.split(".")[0])
    return names


def _gen():
    return torch.Generator().manual_seed(13)


def _logits(shape, dtype, g, device):
    x = torch.randn(shape, generator=g).mul_(4.0)
    return x.to(device=device, dtype=dtype)


def own_calls(device: torch.device) -> list[tuple[str, str, tuple]]:
    """(op, label, raw arguments) reaching every kernel variant; inputs on ``device``."""
    g = _gen()
    calls = []

    def on(t):
        return t.to(device)

    # token_stats / token_stats_partial: one tuple kernel per dtype and slice mode,
    # then the merge (or finish) kernel. V = 9001 > 32 * 256 columns gives two
    # vocabulary splits per row on the CUDA kernel.
    base = _logits((3, 5, 37), torch.float32, g, device)
    base[0, 0, 3] = -math.inf
    base[1, 2, 7] = math.nan  # a row without a distribution: token -1
    wide = _logits((2, 3, 9001), torch.bfloat16, g, device)
    long_rows = _logits((7, 1031), torch.float16, g, device)
    positions = on(torch.rand(2, 3, generator=g) < 0.6)
    positions_long = on(torch.rand(7, generator=g) < 0.6)
    rng = on(torch.tensor([5, 2]))
    strided = base[:, :, :30]  # row stride 37, V = 30
    calls += [
        ("token_stats", "f32 T=0 [3,5,37] -inf and NaN", (base, 0.0, 0, 0, False, None)),
        ("token_stats", "bf16 T=0.7 tempered positions [2,3,9001]", (wide, 0.7, 3, 2, True, positions)),
        ("token_stats", "f16 T=1 rng positions [7,1031]", (long_rows, 1.0, 0, 0, False, positions_long, rng)),
        ("token_stats", "f32 T=1 row stride 37 [3,5,30]", (strided, 1.0, 1, 0, False, None)),
        ("token_stats", "bf16 T=0 no rows [0,11]", (_logits((0, 11), torch.bfloat16, g, device), 0.0, 0, 0, False,
                                                    None)),
        ("token_stats_partial", "f32 T=0 [3,5,37]", (base, 0.0, 0, 0, False, None, None, 0, 0)),
        # Sampling slices start on a noise group (a multiple of 32); argmax slices anywhere.
        ("token_stats_partial", "bf16 T=0.7 tempered positions start 64 rows+7 [2,3,9001]",
         (wide, 0.7, 3, 2, True, positions, None, 64, 7)),
        ("token_stats_partial", "bf16 T=0 start 45 rows+7 [2,3,9001]", (wide, 0.0, 3, 2, False, positions, None, 45, 7)),
        ("token_stats_partial", "f16 T=0.5 rng start 96 [7,1031]", (long_rows, 0.5, 2, 1, False, None, rng, 96, 0)),
        ("token_stats_partial", "f32 T=1 row stride 37 start 64", (strided, 1.0, 1, 0, False, None, None, 64, 3)),
    ]

    # Selection ops: L = 1031 is longer than a block of 256 threads; [3, 7] is
    # shorter than a warp; column-major inputs have a unit row stride.
    B, L = 5, 1031
    scores = on(torch.rand(B, L, generator=g))
    entropy = on(torch.rand(B, L, generator=g).mul_(3.0))
    eligible = on(torch.rand(B, L, generator=g) < 0.5)
    small = on(torch.rand(3, 7, generator=g))
    small_eligible = on(torch.rand(3, 7, generator=g) < 0.6)
    col_major = on(torch.rand(300, 6, generator=g)).t()  # [6, 300], strides (1, 6)
    col_eligible = on(torch.rand(300, 6, generator=g) < 0.5).t()
    calls += [
        ("select_topk", "f32 [5,1031] k over L", (scores, on(torch.tensor([0, 3, 1031, 2000, 17])), eligible)),
        ("select_topk", "bf16 [3,7] int32 k", (small.bfloat16(), on(torch.tensor([1, 7, 2], dtype=torch.int32)),
                                               small_eligible)),
        ("select_topk", "f64 column-major [6,300]", (col_major.double(), on(torch.tensor([1, 2, 3, 4, 5, 300])),
                                                     col_eligible)),
        ("select_threshold", "f32 [5,1031]", (scores, eligible, 0.5)),
        ("select_threshold", "f16 [3,7] -inf", (small.half(), small_eligible, -math.inf)),
        ("select_threshold", "f32 column-major [6,300]", (col_major, col_eligible, 0.9)),
        ("select_factor", "f32 [5,1031]", (scores, eligible, 1.0)),
        ("select_factor", "bf16 [3,7]", (small.bfloat16(), small_eligible, 0.0)),
        ("select_factor", "f32 column-major [6,300]", (col_major, col_eligible, 2.0)),
        ("select_entropy_bounded", "f32 [5,1031]", (scores, entropy, eligible, 0.2)),
        ("select_entropy_bounded", "f64/bf16 [3,7] inf", (small.double(), small.bfloat16(), small_eligible,
                                                          math.inf)),
        ("select_entropy_bounded", "f32 column-major [6,300]", (col_major, col_major * 2, col_eligible, 1.0)),
        ("select_group", "[L] int64 groups, scalar step", (eligible, on(torch.arange(L) % 7), on(torch.tensor(2)))),
        ("select_group", "[B,L] int32 groups, [B] step",
         (small_eligible, on((torch.arange(21) % 4).reshape(3, 7).int()),
          on(torch.tensor([0, 2, 5], dtype=torch.int32)))),
    ]

    # commit_: int64 and int32 canvases, a column-major one; tokens include -1
    # (never written).
    mask_id = 9
    for dtype, shape in ((torch.int64, (B, L)), (torch.int32, (3, 7))):
        select = torch.rand(shape, generator=g) < 0.5
        x = torch.randint(0, 9, shape, generator=g, dtype=dtype)
        x[select] = mask_id
        token = torch.randint(-1, 12, shape, generator=g, dtype=dtype)
        calls.append(("commit_", f"{str(dtype).replace('torch.', '')} {list(shape)}", (on(x), on(token), on(select),
                                                                                       mask_id)))
    x = on(torch.full((300, 6), mask_id, dtype=torch.int64)).t()
    calls.append(("commit_", "int64 column-major [6,300]", (x, on(torch.randint(0, 9, (300, 6), generator=g)).t(),
                                                            col_eligible, mask_id)))
    return calls


def registry_calls(device: torch.device) -> list[tuple[str, str, tuple]]:
    """The registry's sample inputs of every op, moved to ``device``."""
    out = []
    for name, spec in OPS.items():
        for i, args in enumerate(spec.samples()):
            moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
            out.append((name, f"registry sample {i}", moved))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(device: torch.device, backends: list[str]) -> tuple[list[str], set[str]]:
    """Call everything on every backend; returns (failures, ops called natively)."""
    failures, called = [], set()
    for backend in backends:
        if backend == "triton":
            if not dm_triton.AVAILABLE:
                print(f"skip triton: {dm_triton.REASON}")
                continue
            if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
                print("skip triton: CPU tensors need TRITON_INTERPRET=1 (set before triton is imported)")
                continue
            dm_triton.load()
            namespace = torch.ops.dmkernels_triton
        elif backend == "native":
            namespace = torch.ops.dmkernels
        else:
            failures.append(f"unknown backend {backend!r}")
            continue
        for op, label, args in own_calls(device) + registry_calls(device):
            try:
                getattr(namespace, op)(*args)
                _sync(device)  # an asynchronous fault shows up at this call, not a later one
            except Exception as exc:
                failures.append(f"{backend} {op} ({label}): {type(exc).__name__}: {exc}")
                print(f"FAIL {backend:<7} {op:<23} {label}")
                traceback.print_exc()
                _sync_quietly(device)
                continue
            if backend == "native":
                called.add(op)
            print(f"ok   {backend:<7} {op:<23} {label}", flush=True)
    return failures, called


def _sync_quietly(device: torch.device) -> None:
    try:
        _sync(device)
    except Exception:  # the fault was already reported
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmkernels.bench.gpu_sanitize",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--backends", default="native,triton", help="comma-separated (default native,triton)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this PyTorch sees no CUDA device")
    backends = [b for b in args.backends.split(",") if b]
    failures, called = run(device, backends)
    if "native" in backends:
        missed = sorted(registered_ops() - called)
        if missed:
            failures.append(f"ops in torch.ops.dmkernels never called successfully: {', '.join(missed)}")
    for f in failures:
        print(f"FAIL {f}")
    status = "ok" if not failures else f"{len(failures)} failures"
    print(f"gpu_sanitize: {status}: {len(called)} ops called on {device.type} ({', '.join(backends)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
