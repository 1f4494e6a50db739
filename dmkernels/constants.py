"""Token ids and vocabulary sizes of the public models, defined once.

The drop-ins keep the public samplers' defaults (LLaDA's ``mask_id=126336``),
the benchmarks build logits of the real widths, and the eager baselines mirror
the public code: all of them read these names instead of re-typing the numbers.
"""

# LLaDA-8B (GSAI-ML/LLaDA-8B-Base / -Instruct tokenizer); Fast-dLLM v1 uses the same.
LLADA_VOCAB_SIZE = 126464
LLADA_MASK_ID = 126336     # [MASK]
LLADA_EOS_ID = 126081      # <|endoftext|>
LLADA_EOT_ID = 126348      # <|eot_id|>

# Dream-7B (Dream-org/Dream-v0-*-7B): the LM head's width (the tokenizer has fewer ids).
DREAM_VOCAB_SIZE = 152064

# SDAR (JetAstra/SDAR-*-Chat, Qwen3 tokenizer): config.json and generation_config.json.
SDAR_VOCAB_SIZE = 151936
SDAR_MASK_ID = 151669      # <|MASK|>
SDAR_IM_END_ID = 151645    # <|im_end|>
SDAR_EOS_ID = 151643       # <|endoftext|> (also bos and pad)
SDAR_EOS_IDS = (SDAR_IM_END_ID, SDAR_EOS_ID)  # generation_config eos_token_id, in its order

# LLaDA2.0 / LLaDA2.1 (inclusionAI/LLaDA2.0-mini, -flash; LLaDA2.1-*): the defaults of their
# `generate` methods and the LM head's width.
LLADA2_VOCAB_SIZE = 157184
LLADA2_MASK_ID = 156895    # <|mask|>
LLADA2_EOS_ID = 156892     # <|endoftext|>, also the pad id of the hub config
