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
