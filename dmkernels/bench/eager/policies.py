"""Eager references of two adaptive unmasking rules on a generic blockwise loop:
the EB-Sampler (entropy bounded) and dilated unmasking (DUS).

The loop is LLaDA's without classifier-free guidance: the canvas is the
prompt followed by ``gen_length`` masks, a 2-D ``attention_mask`` is extended
with ones, blocks of ``block_length`` go left to right, and every step calls
``model(x, attention_mask=...)`` on the whole canvas. The token ``x0`` is the
argmax (T = 0) or LLaDA's float64 Gumbel-max sample. Scores come from the
noiseless ``softmax(logits)`` in float64: confidence = probability of ``x0``,
margin = top-1 minus top-2 probability, entropy in nats. Only the masked
positions of the current block are eligible, and a block runs until it has no
mask left (these rules commit at least one position of every row that has
one, so that takes at most ``block_length`` steps; a token equal to
``mask_id``, which an untrained model may predict, leaves its position masked,
so the loop also stops after ``block_length`` steps). Both return ``(x, nfe)``.

EB-Sampler (:func:`generate_entropy_bounded`): each step, a row orders its
eligible positions by an error proxy, ascending (``entropy``; ``confidence``:
minus the confidence; ``margin``: minus the margin), equal errors in increasing
position order, and commits the longest prefix whose entropies satisfy
``sum(H) - max(H) <= gamma``, at least the first one.

DUS (:func:`generate_dilated`): block offset ``o`` belongs to group ``g``, the
first of the strides ``B // base, B // base**2, ...`` (those > 1), then 1, that
divides ``o``. Step ``i`` (0-based) of a block selects the eligible positions
of groups ``<= i``; if there are none, those of the lowest group that still
has one. With ``remask_threshold`` tau only the selected positions with
confidence ``>= tau`` are committed, plus the most confident selected one
(ties to the lowest position); the others stay masked and are selected again
at the next steps. (The public DUS code leaves such remasked positions masked
when it finishes: a bug; this follows the intent.)
"""
from __future__ import annotations

import torch

from ._common import gumbel_argmax_float64, ranked


def _stats(logits, x0):
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    top2 = torch.topk(probs, 2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    entropy = -(probs * torch.log(probs)).nan_to_num(0.0).sum(-1)  # 0 log 0 = 0
    return confidence, margin, entropy


def _blockwise(model, prompt, attention_mask, gen_length, block_length, mask_id, temperature, choose):
    """Runs the loop; ``choose(step, row, eligible_row, confidence, margin, entropy)``
    (rows of ``[L]`` tensors) returns the positions that row commits."""
    B, P = prompt.shape
    device = prompt.device
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat(
            [attention_mask, torch.ones((B, gen_length), dtype=attention_mask.dtype, device=device)], dim=-1)
    assert gen_length % block_length == 0
    nfe = 0
    for block in range(gen_length // block_length):
        start = P + block * block_length
        end = start + block_length
        step = 0
        while step < block_length and bool((x[:, start:end] == mask_id).any()):
            logits = model(x, attention_mask=attention_mask).logits
            nfe += 1
            x0 = gumbel_argmax_float64(logits, temperature)
            confidence, margin, entropy = _stats(logits, x0)
            eligible = torch.zeros_like(x, dtype=torch.bool)
            eligible[:, start:end] = x[:, start:end] == mask_id
            for row in range(B):
                if not bool(eligible[row].any()):
                    continue
                for pos in choose(step, start, eligible[row], confidence[row], margin[row], entropy[row]):
                    x[row, pos] = x0[row, pos]
            step += 1
    return x, nfe


@torch.no_grad()
def generate_entropy_bounded(model, prompt, attention_mask=None, *, gen_length, block_length, gamma,
                             error='entropy', mask_id, temperature=0.0):
    def choose(step, start, eligible, confidence, margin, entropy):
        proxy = {'entropy': entropy, 'confidence': -confidence, 'margin': -margin}[error]
        order = ranked(proxy, eligible, descending=False)
        taken = [order[0]]
        total = float(entropy[order[0]])
        largest = total
        for pos in order[1:]:
            h = float(entropy[pos])
            if (total + h) - max(largest, h) > gamma:
                break
            total += h
            largest = max(largest, h)
            taken.append(pos)
        return taken

    return _blockwise(model, prompt, attention_mask, gen_length, block_length, mask_id, temperature, choose)


def dilated_strides(block_length: int, base: int = 2) -> list[int]:
    strides = []
    stride = block_length // base
    while stride > 1:
        strides.append(stride)
        stride //= base
    return strides + [1]


def dilated_groups(block_length: int, base: int = 2) -> list[int]:
    """Group of every block offset, coarse (0) to fine."""
    strides = dilated_strides(block_length, base)
    return [next(g for g, stride in enumerate(strides) if offset % stride == 0) for offset in range(block_length)]


@torch.no_grad()
def generate_dilated(model, prompt, attention_mask=None, *, gen_length, block_length, base=2,
                     remask_threshold=None, mask_id, temperature=0.0):
    groups = dilated_groups(block_length, base)

    def choose(step, start, eligible, confidence, margin, entropy):
        candidates = [int(p) for p in torch.arange(eligible.shape[0])[eligible]]
        selected = [p for p in candidates if groups[p - start] <= step]
        if not selected:
            first = min(groups[p - start] for p in candidates)
            selected = [p for p in candidates if groups[p - start] == first]
        if remask_threshold is None:
            return selected
        best = max(selected, key=lambda p: (float(confidence[p]), -p))
        return [p for p in selected if p == best or float(confidence[p]) >= remask_threshold]

    return _blockwise(model, prompt, attention_mask, gen_length, block_length, mask_id, temperature, choose)
