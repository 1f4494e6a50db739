"""Drop-in replacements for the public samplers: change one import.

* :mod:`dmkernels.compat.llada` -- LLaDA's ``generate``
* :mod:`dmkernels.compat.fast_dllm` -- Fast-dLLM's ``generate``,
  ``generate_with_prefix_cache``, ``generate_with_dual_cache``
* :mod:`dmkernels.compat.dream` -- Dream's ``diffusion_generate`` and ``patch(model)``
* :mod:`dmkernels.compat.llada2` -- LLaDA2.0's and LLaDA2.1's ``generate`` (batched,
  exact block KV cache), ``patch(model)``
* :mod:`dmkernels.compat.diffusers` -- diffusers' ``BlockRefinementScheduler``
  (the scheduler of ``LLaDA2Pipeline``): ``pipe.scheduler =
  BlockRefinementScheduler.from_config(pipe.scheduler.config)``
* :mod:`dmkernels.compat.sdar` -- SDAR's ``block_diffusion_generate`` (batched,
  exact block KV cache)
* :mod:`dmkernels.compat.diffusion_gemma` -- transformers' DiffusionGemma:
  ``patch(model)`` replaces the denoising step inside its own ``generate``
  (uniform-state diffusion: one pass over the vocabulary, entropy-bound
  acceptance, re-noising in place), ``unpatch(model)``

Each keeps the public signature, defaults and return value, and gives the same
tokens at temperature 0 (the same distribution when sampling). Where the public
code has a known bug, the adapter follows the documented intent and its
docstring says so.
"""


def build_policy(caller: str, policy_class, *args, **kwargs):
    """``policy_class(*args, **kwargs)``, its argument errors renamed to the drop-in
    the user called (``dmkernels.<caller>: ...``) instead of the policy class."""
    try:
        return policy_class(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"dmkernels.{caller}: {str(e).split(': ', 1)[-1]}") from None
