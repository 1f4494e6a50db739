"""Eager reference samplers: slow, obviously-correct re-implementations of what
the public diffusion-LM samplers do, written in our own words.

They mirror the public algorithms step for step (per-row Python loops, the
same dtypes for softmax and Gumbel noise, the same model calls), so that the
fast drop-ins in ``dmkernels.compat`` and ``dmkernels.generate`` can be tested
token for token against them (greedy) or in distribution (sampling). Where the
public code has a bug, the module docstring says so and the reference
implements the documented intent instead.

They ship in the package (not with the tests) because ``python -m
dmkernels.bench --e2e`` times the drop-ins against them.

- :mod:`dmkernels.bench.eager.llada`: LLaDA ``generate``.
- :mod:`dmkernels.bench.eager.fast_dllm`: Fast-dLLM ``generate`` / prefix cache / dual cache.
- :mod:`dmkernels.bench.eager.dream`: Dream ``diffusion_generate``.
- :mod:`dmkernels.bench.eager.policies`: EB-Sampler and dilated unmasking (DUS) on a generic blockwise loop.
- :mod:`dmkernels.bench.eager.llada2`: LLaDA2.0 ``generate`` and LLaDA2.1 ``generate_v21`` (block diffusion, editing).
- :mod:`dmkernels.bench.eager.sdar`: SDAR ``block_diffusion_generate`` (block diffusion, KV cache with ``store_kv``).
"""
