"""``python -m dmkernels.bench.gpu_profile [--rows 2048] [--vocab 126464] [--temperatures 0,1]``

One ``token_stats`` call per backend and temperature on bf16 ``[rows, vocab]``
logits, each between ``cudaProfilerStart`` and ``cudaProfilerStop`` after three
warm-up calls, so that Nsight Compute profiles exactly those launches::

    ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section Occupancy --section LaunchStats python -m dmkernels.bench.gpu_profile

That is how benchmarks/results/gpu_nvidia-h200_diagnosis.txt found the CUDA
kernel bound by L1 wavefronts rather than DRAM. Prints one line per profiled
call (ncu's report names the kernels); on a machine without CUDA it says why
and exits 0.
"""
from __future__ import annotations

import argparse

import torch

import dmkernels
from dmkernels.constants import LLADA_VOCAB_SIZE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmkernels.bench.gpu_profile", description=__doc__.split("\n\n")[1])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=LLADA_VOCAB_SIZE)
    parser.add_argument("--temperatures", default="0,1", help="comma-separated (default 0,1)")
    parser.add_argument("--backends", default="native,triton", help="comma-separated (default native,triton)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_profile: skipped: no CUDA device")
        return 0
    logits = torch.randn(args.rows, args.vocab, device="cuda").mul_(4.0).to(torch.bfloat16)
    for backend in args.backends.split(","):
        for temperature in (float(t) for t in args.temperatures.split(",")):
            for _ in range(3):  # compile / autotune / allocate outside the profiled range
                dmkernels.token_stats(logits, temperature=temperature, seed=1, backend=backend)
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            dmkernels.token_stats(logits, temperature=temperature, seed=1, backend=backend)
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
            print(f"gpu_profile: token_stats backend={backend} T={temperature:g} bf16 [{args.rows}, {args.vocab}]",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
