"""A small bidirectional transformer (random weights) for tests and benchmarks
of masked-diffusion samplers, with Fast-dLLM's LLaDA KV-cache protocol
(full / prefix cache / dual cache; see :mod:`dmkernels.models.transformer`).

    from dmkernels.models import DiffusionLM, tiny_config, llada_like_config
    model = DiffusionLM(llada_like_config()).eval()
    out = model(x, use_cache=True)            # out.logits [B, L, V], out.past_key_values

Importing this package registers the config and model with transformers'
``AutoConfig``, ``AutoModel`` and ``AutoModelForMaskedLM`` (model type
``"dmkernels_diffusion_lm"``).

:mod:`dmkernels.models.llada2` holds LLaDA2's MoE block-diffusion architecture
(``LLaDA2ForBlockDiffusion``, presets ``llada2_tiny_config`` / ``llada2_like_config``),
registered as ``"dmkernels_llada2_moe"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM`` (the Auto class the hub LLaDA2 checkpoints map) and
``AutoModelForMaskedLM``.

:mod:`dmkernels.models.sdar` holds SDAR's dense (Qwen3-style) block-diffusion
architecture with SDAR's ``store_kv`` cache semantics (``SDARForBlockDiffusion``,
presets ``sdar_tiny_config`` / ``sdar_like_config``), registered as
``"dmkernels_sdar"`` with ``AutoConfig``, ``AutoModel`` (the body) and
``AutoModelForCausalLM``.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from .config import DiffusionLMConfig, llada_like_config, tiny_config
from .transformer import DiffusionLM, DiffusionLMOutput
from .llada2 import LLaDA2Config, LLaDA2ForBlockDiffusion, LLaDA2Output, llada2_like_config, llada2_tiny_config
from .sdar import SDARConfig, SDARForBlockDiffusion, SDARModel, sdar_like_config, sdar_tiny_config

__all__ = ["DiffusionLMConfig", "DiffusionLM", "DiffusionLMOutput", "llada_like_config", "tiny_config"]
__all__ += ["LLaDA2Config", "LLaDA2ForBlockDiffusion", "LLaDA2Output", "llada2_like_config", "llada2_tiny_config"]
__all__ += ["SDARConfig", "SDARModel", "SDARForBlockDiffusion", "sdar_tiny_config", "sdar_like_config"]


def _register() -> None:
    AutoConfig.register(DiffusionLMConfig.model_type, DiffusionLMConfig, exist_ok=True)
    AutoModel.register(DiffusionLMConfig, DiffusionLM, exist_ok=True)
    AutoModelForMaskedLM.register(DiffusionLMConfig, DiffusionLM, exist_ok=True)
    AutoConfig.register(LLaDA2Config.model_type, LLaDA2Config, exist_ok=True)
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM):
        auto.register(LLaDA2Config, LLaDA2ForBlockDiffusion, exist_ok=True)
    AutoConfig.register(SDARConfig.model_type, SDARConfig, exist_ok=True)
    AutoModel.register(SDARConfig, SDARModel, exist_ok=True)  # the body, as the hub SDAR maps it
    AutoModelForCausalLM.register(SDARConfig, SDARForBlockDiffusion, exist_ok=True)


_register()
