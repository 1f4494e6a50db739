"""The block-diffusion sampler (LLaDA2.0 / LLaDA2.1 semantics) over dmkernels' ops,
for batches, with the exact block KV cache of :mod:`dmkernels.blockcache`.

It follows the step protocol of :mod:`dmkernels.sampler` (blocks, block start,
steps, block end) on the re-laid batch canvas of :class:`BlockLayout`:

1. **Blocks**: global blocks ``K .. num_blocks - 1`` (``K``: the first block any
   row generates; every row generates from there, see ``BlockLayout``).
2. **Block start**: per-row device state: ``live`` (the block lies in the row's
   canvas and the row is not done), LLaDA2.1's ``post`` (steps started without a
   mask) and ``block_done``; the attention mask of the block's window.
3. **Steps** (no host read inside, checked with ``forbid_host_sync``): one model
   call on the current block, :func:`dmkernels.token_stats` (T = 0: argmax and
   its softmax probability; T > 0: an exact sample of the top-k / top-p filtered
   ``softmax(logits / T)`` and its probability under that distribution), the
   commit rule "every masked position with confidence > threshold if there are at
   least n, else the n most confident (at most the masks left)" as
   ``high | select_topk(confidence, n, masked)`` (``select_topk``'s top n are all
   high when at least n are; ``high`` is a strict ``>`` in torch, where
   ``select_threshold`` is Fast-dLLM's ``>=`` plus the best one),
   :func:`dmkernels.commit_`, then LLaDA2.1's edit
   of the block's committed non-prompt positions. Between steps the host reads
   one flag (are all rows done with this block?) posted ``lag`` steps earlier
   (``_HostFlag``; lag 1 on CUDA so the GPU never waits for the host: the extra
   step is a no-op, since done rows change nothing).
4. **Block end**: rows whose answer is settled (an EOS in the generated part,
   see below) are done and change nothing after; the host reads "all rows
   done" and "did the last step change a token" once per block.

**Cache** (``cache=True``): each step runs the model on queries
``[frontier, block end)`` only, keys = cached ``[0, frontier)`` + fresh; the
LM head runs on the block's rows only (``logits_to_keep`` when the forward
takes it). After the call the frontier moves to the block start: the keys of
the prompt and of finished blocks are computed exactly once, from their final
tokens. A block's own keys become final at its end: if the last step changed
nothing (LLaDA2.1's loop ends on such a step), the keys of that last call are
the final ones and are committed as they are; otherwise (LLaDA2.0: the last
step commits after its call) the block is recomputed as part of the next
block's first call (queries ``[previous block, this block)``, block-causal
between them), so no extra model call is made. The prompt's full blocks are
folded into the first call the same way. With ``cache=False`` every step runs
the whole window ``[0, block end)`` (the public cost), still batched.

**EOS** (why rows may stop early without changing any answer): the answer is
the generated part through its first EOS. LLaDA2.0 never rewrites a committed
token, so once the first EOS of a row's generated part has no mask before it
the answer is settled: the row stops, mid-block. LLaDA2.1 rewrites only the
current block, so a row whose generated part holds an EOS at a block end is
settled. Either way ``eos_early_stop`` changes only the public code's work,
never its answer: here rows always stop as soon as their answer is settled.
"""
from __future__ import annotations

import inspect
import math
from collections import deque

import torch

from . import ops
from .blockcache import BlockKVCache, BlockLayout, mask_kind
from .sampler import _HostFlag
from .testing import step_scope

__all__ = ["BlockDiffusionSampler", "filter_top_k_top_p_", "edit_"]


def edit_(x, token, confidence, editable, threshold, *, backend=None):
    """``dmkernels.edit_`` when the op exists in this build, else its semantics in
    torch: write ``token`` where ``editable & (token != x) & (confidence > threshold)
    & (token >= 0)``; returns ``(changed, edits per row)``."""
    op = getattr(ops, "edit_", None)
    if op is not None:
        return op(x, token, confidence, editable, threshold, backend=backend)
    changed = editable & (token != x) & (confidence > threshold) & (token >= 0)
    x.copy_(torch.where(changed, token, x))
    return changed, changed.sum(-1)


def filter_top_k_top_p_(rows: torch.Tensor, temperature: float, top_k, top_p, chunk: int = 16) -> None:
    """LLaDA2's filters, in place on float ``rows [..., V]``: on ``rows / T``, top-k
    (logits below the k-th largest become -inf, ties with it kept; None, <= 0 or
    >= V: off) then top-p (sorted descending, every token after the one whose
    cumulative probability first exceeds p becomes -inf, so p <= 0 keeps the top
    token; None or >= 1: off). A few rows at a time so the temporaries stay small."""
    V = rows.shape[-1]
    use_k = top_k is not None and 0 < top_k < V
    use_p = top_p is not None and top_p < 1.0
    if not (use_k or use_p):
        return
    for lo, part in _row_chunks(rows, chunk):
        tempered = part.float() / temperature if temperature != 1.0 else part.float()
        if use_k:
            kth = torch.topk(tempered, int(top_k), dim=-1).values[:, -1:]
            tempered = tempered.masked_fill(tempered < kth, -math.inf)
        if use_p:
            ordered, order = torch.sort(tempered, dim=-1, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            drop = torch.zeros_like(cumulative, dtype=torch.bool)
            drop[:, 1:] = cumulative[:, :-1] > top_p  # the token that crosses p stays
            tempered = tempered.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), -math.inf)
        part.masked_fill_(tempered == -math.inf, -math.inf)


def _row_chunks(rows: torch.Tensor, chunk: int):
    """Views of at most ``chunk`` rows of ``rows [..., V]`` (unit stride on V), for
    in-place work: the leading dims are walked, not reshaped (a slice of the
    model's logits may not flatten into a view)."""
    if rows.dim() == 1:
        yield 0, rows[None]
    elif rows.dim() == 2:
        for lo in range(0, rows.shape[0], chunk):
            yield lo, rows[lo:lo + chunk]
    else:
        for sub in rows.unbind(0):
            yield from _row_chunks(sub, chunk)


def unpadded_prompts(caller: str, ids: torch.Tensor, keep, *, ids_name: str, mask_name: str, mask_id: int,
                     vocab_size) -> list[torch.Tensor]:
    """The rows of a left-padded ``ids [B, P]`` without their padding (``keep``: the
    attention mask, or None), after checking on the host, before any model call,
    that their ids lie in the vocabulary and hold no mask id. Shared by the drop-ins,
    which name the arguments as their public signatures do."""
    from . import _checks

    B, P = ids.shape
    if keep is not None:
        if not isinstance(keep, torch.Tensor) or tuple(keep.shape) != (B, P):
            _checks.fail(caller, f"{mask_name} must be a tensor of the shape of {ids_name} {[B, P]}")
        keep = keep.to(device=ids.device, dtype=torch.bool)
        prompts = [row[k] for row, k in zip(ids, keep)]
    else:
        prompts = list(ids)
    real = torch.cat(prompts) if prompts else ids.flatten()
    if real.numel():
        low, high = (int(v) for v in torch.aminmax(real))
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            where = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
            _checks.fail(caller, f"{ids_name} holds id {low if low < 0 else high}, outside the vocabulary {where}")
        if bool((real == mask_id).any()):
            _checks.fail(caller, f"{ids_name} holds mask_id {mask_id} among its prompt tokens")
    return prompts


def _accepts(model, name: str) -> bool:
    try:
        params = inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _model_dtype(model) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(model.parameters()).dtype


class BlockDiffusionSampler:
    """One batched generation; arguments already validated by the caller
    (:mod:`dmkernels.compat.llada2`).

    ``prompts``: the rows' unpadded prompts (1-D int64 on the model's device).
    ``version``: "2.0" (``schedule``: host list of per-step commit counts, empty =
    no step) or "2.1" (``num_to_transfer`` per step, editing above
    ``editing_threshold`` (None = off), ``max_post_steps``, ``max_block_calls``:
    a block still changing after that many steps raises RuntimeError, where the
    public loop would hang). ``filler``: the id put on pads and past a row's
    canvas (never ``mask_id``). ``seed``: the token noise (T > 0).

    SDAR (:mod:`dmkernels.compat.sdar`) runs the "2.0" loop with three hooks:
    ``select_fn(stats, masked, n) -> bool [B, bl]`` replaces the commit rule
    (called inside the step: no host read); ``stop_ids`` (int64 tensor, or an
    empty one) replaces the EOS rule: rows stop only at a block end, once their
    generated part holds one of the ids (``eos_id`` is then unused); with
    ``masks_left_error`` a block that still holds masks of a live row after its
    steps raises RuntimeError. ``model_kwargs`` go to every model call (SDAR's
    ``store_kv=True``: with :class:`BlockKVCache` it writes the fresh keys at the
    frontier, which only :meth:`BlockKVCache.commit` advances). Logits of a dtype
    token_stats does not take (float64) are cast to float32 for the block.
    """

    def __init__(self, model, prompts, *, gen_length, block_length, temperature, top_k, top_p, threshold, mask_id,
                 eos_id, version, schedule=(), num_to_transfer=1, editing_threshold=None, max_post_steps=0,
                 max_block_calls=None, cache=True, seed=0, backend=None, caller="compat.llada2.generate",
                 filler=None, lag=None, vocab_size=None, select_fn=None, stop_ids=None, masks_left_error=False,
                 model_kwargs=None):
        device = prompts[0].device
        self.model = model
        self.layout = BlockLayout([p.shape[0] for p in prompts], gen_length, block_length, device)
        self.bl = block_length
        self.gen_length = gen_length
        self.temperature = float(temperature)
        self.top_k, self.top_p = top_k, top_p
        self.threshold = float(threshold)
        self.mask_id, self.eos_id = mask_id, eos_id
        self.v21 = version == "2.1"
        self.schedule = list(schedule)
        self.num_to_transfer = num_to_transfer
        self.editing_threshold = editing_threshold
        self.max_post_steps = max_post_steps
        self.max_block_calls = max_block_calls
        self.seed, self.noise_offset = int(seed), 0
        self.backend = backend
        self.caller = caller
        self.vocab_size = vocab_size
        self.device = device
        self.lag = (1 if device.type == "cuda" else 0) if lag is None else int(lag)
        self.x = self.layout.canvas(prompts, mask_id, eos_id if filler is None else filler)
        self.dtype = _model_dtype(model)
        self.mask_kind = mask_kind(model)
        self.cache = BlockKVCache(self.layout.width) if cache else None
        self.call_kwargs = {}
        if _accepts(model, "logits_to_keep"):
            self.call_kwargs["logits_to_keep"] = block_length
        if _accepts(model, "use_cache"):
            self.call_kwargs["use_cache"] = cache
        if model_kwargs:
            self.call_kwargs.update({k: v for k, v in model_kwargs.items() if _accepts(model, k)})
        self.select_fn = select_fn
        self.stop_ids = None if stop_ids is None else stop_ids.to(device=device, dtype=torch.int64)
        self.masks_left_error = masks_left_error
        self.done = torch.zeros(self.layout.B, dtype=torch.bool, device=device)
        self.model_calls = 0
        self.query_rows = 0  # model rows computed (per batch row), for benchmarks

    # ------------------------------------------------------------------ model

    def begin_block(self, g: int) -> None:
        s, e = g * self.bl, (g + 1) * self.bl
        L = self.layout
        self.live = (g <= L.last_block_t) & ~self.done
        q0 = self.cache.frontier if self.cache is not None else 0
        self.window_mask = L.attention_mask(q0, e, e, self.dtype, self.mask_kind)
        self.block_gen = L.gen[:, s:e]  # generated (non-prompt) positions of each row's canvas
        if self.v21:
            self.post = torch.zeros(L.B, dtype=torch.int64, device=self.device)
            self.block_done = ~self.live

    def block_logits(self, s: int, e: int) -> torch.Tensor:
        """float logits ``[B, bl, V]`` of the block ``[s, e)``."""
        q0 = self.cache.frontier if self.cache is not None else 0
        mask = self.window_mask[:, :, self.window_mask.shape[2] - (e - q0):]
        kwargs = dict(self.call_kwargs, attention_mask=mask, position_ids=self.layout.positions[:, q0:e])
        if self.cache is not None:
            kwargs["past_key_values"] = self.cache
        out = self.model(self.x[:, q0:e], **kwargs)
        logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
        if logits is None:
            logits = out[0]
        self.model_calls += 1
        self.query_rows += e - q0
        if logits.dim() != 3 or logits.shape[0] != self.layout.B or logits.shape[1] < self.bl:
            raise ValueError(f"dmkernels.{self.caller}: the model returned logits of shape {list(logits.shape)} "
                             f"for {e - q0} query positions")
        if self.vocab_size is None:  # not known up front: check the ids against the logits' width once
            V = logits.shape[-1]
            for name, value in (("mask_id", self.mask_id), ("eos_id", self.eos_id)):
                if value is not None and value >= V:
                    raise ValueError(f"dmkernels.{self.caller}: {name} = {value} is outside the model's vocabulary "
                                     f"[0, {V}) (the width of its logits)")
            self.vocab_size = V
        if self.cache is not None:
            self.cache.commit(s - q0)  # prompt / finished blocks before s: final
        return logits[:, logits.shape[1] - self.bl:]

    # ------------------------------------------------------------------ one step

    def step(self, g: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of block g; returns (changed per row, flag: no row acts next step)."""
        s, e = g * self.bl, (g + 1) * self.bl
        xb = self.x[:, s:e]
        is_mask = xb == self.mask_id
        if self.v21:
            # LLaDA2.1's check before the model call: a row without masks starts a post step.
            has_mask = (is_mask & self.live[:, None]).any(-1)
            self.post += (~has_mask & ~self.block_done).long()
            self.block_done |= self.post > self.max_post_steps
            active = self.live & ~self.block_done
            n = self.num_to_transfer
        else:
            active = self.live & ~self.done
            n = self.schedule[i]
        masked = is_mask & active[:, None]
        positions = masked  # token_stats computes only the rows a step can use
        editing = self.v21 and self.editing_threshold is not None
        if editing:
            editable = ~is_mask & self.block_gen & active[:, None]
            positions = masked | editable
        logits = self.block_logits(s, e)
        if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            logits = logits.float()  # token_stats' dtypes (a float64 test model); one block of rows
        if self.temperature > 0:
            filter_top_k_top_p_(logits, self.temperature, self.top_k, self.top_p)
        stats = ops.token_stats(logits, temperature=self.temperature, seed=self.seed, offset=self.noise_offset,
                                positions=positions, tempered_scores=True, backend=self.backend)
        self.noise_offset += 1
        conf = stats.confidence
        if self.select_fn is not None:
            select = self.select_fn(stats, masked, n)
        else:
            select = (masked & (conf > self.threshold)) | ops.select_topk(conf, n, masked, backend=self.backend)
        changed, remaining = ops.commit_(xb, stats.token, select, self.mask_id, backend=self.backend)
        if self.v21:
            if editing:
                edited, edits = edit_(xb, stats.token, conf, editable, self.editing_threshold, backend=self.backend)
                changed = changed | edited
                self.block_done |= active & ~has_mask & (edits == 0)
            else:
                self.block_done |= active & ~has_mask
            # Would any row still act at the next step's pre-check?
            idle = self.block_done | ((remaining == 0) & (self.post + 1 > self.max_post_steps))
        else:
            if self.stop_ids is None:
                self.settle_v20(e)
            idle = ~self.live | self.done | (remaining == 0)
        return changed.any(), idle.all()

    def settle_v20(self, e: int) -> None:
        """LLaDA2.0: a row whose first generated EOS has no mask before it is done."""
        g0 = self.layout.K * self.bl
        gen = self.layout.gen[:, g0:e]
        region = self.x[:, g0:e]
        eos = (region == self.eos_id) & gen
        mask_before = ((region == self.mask_id) & gen & (eos.cumsum(-1) == 0)).any(-1)
        self.done |= eos.any(-1) & ~mask_before

    # ------------------------------------------------------------------ loop

    @torch.no_grad()
    def run(self) -> "BlockDiffusionSampler":
        L = self.layout
        if not self.v21 and not self.schedule:
            return self  # zero steps: nothing is generated (public: gen_length mask ids)
        all_done = _HostFlag(self.device)
        for g in range(L.K, L.num_blocks):
            if all_done.pending is not None and all_done.read():
                break
            s, e = g * self.bl, (g + 1) * self.bl
            self.begin_block(g)
            pending = deque()
            last_changed = None
            i = 0
            while True:
                if not self.v21 and i >= len(self.schedule):
                    break
                if self.v21 and self.max_block_calls is not None and i >= self.max_block_calls:
                    raise RuntimeError(
                        f"dmkernels.{self.caller}: block {g} still changing after {self.max_block_calls} steps "
                        f"(the model keeps producing mask_id {self.mask_id}?); the public loop would never end")
                if len(pending) > self.lag:
                    if pending.popleft().read():
                        break
                with step_scope():
                    last_changed, idle = self.step(g, i)
                flag = _HostFlag(self.device)
                flag.post(idle)
                pending.append(flag)
                i += 1
            if self.stop_ids is not None:
                # SDAR: a row stops after a block once its generated part holds a stop id.
                eos = (torch.isin(self.x, self.stop_ids) & L.gen).any(-1)
                if self.masks_left_error:
                    left = (self.x[:, s:e] == self.mask_id) & L.gen[:, s:e] & self.live[:, None]
                    if bool(left.any()):
                        rows = [int(r) for r in left.any(-1).nonzero().flatten()]
                        raise RuntimeError(
                            f"dmkernels.{self.caller}: block {g} of rows {rows} still holds masks after {i} steps: "
                            f"the model sampled mask_id ({self.mask_id})")
            else:
                # Block end: rows whose generated part holds an EOS are settled.
                gen = L.gen[:, :e]
                eos = ((self.x[:, :e] == self.eos_id) & gen).any(-1)
                if self.v21:
                    eos &= ~((self.x[:, :e] == self.mask_id) & gen).any(-1)
            self.done |= eos & (g <= L.last_block_t)
            all_done.post((self.done | (g >= L.last_block_t)).all())
            if self.cache is not None and last_changed is not None and not bool(last_changed):
                # The last call saw the final tokens: its keys of this block are final.
                self.cache.commit(e - self.cache.frontier)
        return self

    def answers(self) -> list[torch.Tensor]:
        """Each row's generated part through its first EOS (else ``gen_length`` tokens)."""
        out = []
        eos = self.x == self.eos_id
        for r in range(self.layout.B):
            a = self.layout.gen_start[r]
            gen = self.x[r, a:a + self.gen_length]
            hits = eos[r, a:a + self.gen_length].nonzero()
            n = int(hits[0, 0]) + 1 if len(hits) else self.gen_length
            out.append(gen[:n])
        return out
