"""Drop-in for diffusers' ``BlockRefinementScheduler`` (the scheduler of ``LLaDA2Pipeline``).

    from dmkernels.compat.diffusers import BlockRefinementScheduler
    pipe.scheduler = BlockRefinementScheduler.from_config(pipe.scheduler.config)

The class is a subclass of ``diffusers.BlockRefinementScheduler`` with the same
name, so ``from_config``, ``save_config``, ``set_timesteps``, ``add_noise``,
``get_num_transfer_tokens``, ``isinstance`` checks and the uniform-corruption
mode (``mask_token_id=None``) are diffusers' own. diffusers is imported on
first use of the class (``pip install 'dmkernels[diffusers]'``); importing this
module needs nothing.

What changes, in mask mode (``mask_token_id`` given, the only mode
``LLaDA2Pipeline`` uses):

- ``step`` samples with ``dmkernels.token_stats`` and selects, commits and edits
  with ``select_topk``, ``commit_`` and ``edit_``: no per-row Python loop and no
  host read of device data (diffusers reads the schedule and two counts per row
  with ``.item()`` on every step). The commit count ``schedule[min(step, len-1)]``
  stays on the device, also for a tensor ``timestep``.
- ``check_eos_finished`` is vectorised (diffusers: per-row ``.item()`` and
  ``nonzero``), same rule, and like diffusers updates ``finished`` in place.
- ``check_block_should_continue`` keeps diffusers' rules but reads the device
  once (it must return a Python bool: the pipeline's loop needs it).

Results: greedy gives the same tokens, probabilities and masks as diffusers (a
test runs the real pipeline both ways and compares every callback tensor).

- Greedy token: ``token_stats`` at temperature 0 (the argmax, lowest index on
  ties, like ``torch.argmax``). Greedy probability: by default it is computed as
  diffusers does, ``softmax(logits.float())`` gathered at the token, because
  ``token_stats``' probability (float64 in the reference, differently ordered
  float32 sums in the kernels) differs from torch's float32 softmax in the last
  bits (measured: 11-60% of rows bit-identical, up to 1e-5 absolute at V =
  157184); that changes ``sampled_probs`` and can flip a threshold or top-k
  decision between near-equal confidences. Set the instance attribute
  ``exact_probs = False`` to take ``token_stats``' probability instead and skip
  the float32 ``[rows, V]`` softmax (same tokens, probabilities within a few
  ULPs).
- Sampling (``sampling_method="multinomial"``, or ``"auto"`` with a nonzero
  temperature): the logits are divided by the temperature and filtered by
  diffusers' own top-k and top-p helpers (inherited; same ``finfo.min`` fill and
  the same ValueError for ``top_p <= 0``), then ``token_stats(...,
  temperature=1, tempered_scores=True)`` draws the token and its probability
  under the filtered distribution (diffusers' ``sampled_probs``). Without
  filters the temperature goes to ``token_stats`` directly (no scaled copy of
  the logits). Same distribution as diffusers, other draws: diffusers feeds
  ``generator`` to ``torch.multinomial``; here each sampling step draws **one**
  int64 seed from ``generator`` with ``torch.randint`` on the generator's device
  (the default generator of the logits' device when ``generator`` is None).
  Drawn on the CPU, the seed is read on the host (free, no device sync; this
  read happens outside the step's sync guard); drawn on a GPU it stays there
  and reaches ``token_stats`` as ``rng`` without a host read. A fixed generator
  seed gives reproducible outputs, but not diffusers' tokens.
- Selection per row: with ``n = schedule[min(step, len-1)]``, every masked
  position whose probability is ``> threshold`` (strict) if there are at least
  ``n`` of them, else the ``min(n, #masks)`` most probable masked positions. Ties
  go to the lowest position (``select_topk``); diffusers' ``torch.topk`` leaves
  tie order to the implementation (exactly equal probabilities only).
- Editing (``editing_threshold > 0``): positions that are neither masked nor
  prompt (``prompt_mask``) whose sampled token differs and has probability
  ``> editing_threshold`` are rewritten (``edit_`` on the copy that becomes
  ``prev_sample``; ``sample`` itself is not modified, as in diffusers).
- A row whose logits hold NaN or +inf has no distribution: ``token_stats``
  gives token -1 and a NaN probability, which nothing commits or edits
  (diffusers' argmax would pick the NaN's index).

The step body runs inside :func:`dmkernels.testing.step_scope`, so
``dmkernels.testing.forbid_host_sync`` turns any host sync in it into an error.

``LLaDA2Pipeline`` itself still runs the model on the whole window every step
and syncs a few times per step; for an exact block KV cache use
:mod:`dmkernels.compat.llada2`.
"""
from __future__ import annotations

import torch

from .. import ops
from ..testing import step_scope

__all__ = ["BlockRefinementScheduler", "BlockRefinementSchedulerOutput"]

_INSTALL_HINT = "pip install 'dmkernels[diffusers]'"


def _import_diffusers_scheduler():
    try:
        from diffusers.schedulers.scheduling_block_refinement import (
            BlockRefinementScheduler as Base,
            BlockRefinementSchedulerOutput as Output,
        )
    except ImportError as e:
        raise ImportError(
            f"dmkernels.compat.diffusers needs diffusers with BlockRefinementScheduler (>= 0.42): {_INSTALL_HINT} "
            f"({e})"
        ) from e
    return Base, Output


def _draw_seed(generator, device: torch.device):
    """One int64 drawn from ``generator`` (or the default generator of ``device``):
    ``(seed, None)`` when it was drawn on the CPU (reading it is free), else
    ``(0, rng)`` with ``rng = (seed, 0)`` on ``device``, never read on the host."""
    where = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=where, generator=generator)
    if seed.device.type == "cpu":
        return int(seed.item()), None
    rng = torch.cat((seed.to(device, non_blocking=True), torch.zeros(1, dtype=torch.int64, device=device)))
    return 0, rng


def _build():
    Base, Output = _import_diffusers_scheduler()

    class BlockRefinementScheduler(Base):
        """diffusers' ``BlockRefinementScheduler`` with a batched, sync-free mask-mode
        ``step`` on dmkernels ops (module docstring: what is identical, what differs)."""

        # Instance attribute, not config: greedy probabilities computed as diffusers
        # does (bit-identical sampled_probs); False takes token_stats' probability.
        exact_probs = True

        def step(
            self,
            model_output: torch.Tensor,
            timestep,
            sample: torch.LongTensor,
            *,
            mask_token_id: int | None = None,
            temperature: float = 0.0,
            top_p: float | None = None,
            top_k: int | None = None,
            sampling_method: str = "auto",
            threshold: float | None = None,
            editing_threshold: float | None = None,
            minimal_topk: int | None = None,
            prompt_mask: torch.BoolTensor | None = None,
            generator: torch.Generator | None = None,
            return_dict: bool = True,
        ):
            """diffusers' ``step`` (same arguments, defaults and return value:
            ``BlockRefinementSchedulerOutput`` or the 6-tuple ``(prev_sample,
            transfer_index, editing_transfer_index, sampled_tokens, sampled_probs,
            pred_logits)``). Uniform mode (``mask_token_id=None``) is diffusers' own."""
            if mask_token_id is None:
                return super().step(
                    model_output, timestep, sample, mask_token_id=mask_token_id, temperature=temperature,
                    top_p=top_p, top_k=top_k, sampling_method=sampling_method, threshold=threshold,
                    editing_threshold=editing_threshold, minimal_topk=minimal_topk, prompt_mask=prompt_mask,
                    generator=generator, return_dict=return_dict,
                )
            if threshold is None:
                threshold = float(self.config.threshold)
            if editing_threshold is None:
                editing_threshold = self.config.editing_threshold
            # minimal_topk is accepted and unused, as in diffusers' step.
            with step_scope():
                scaled, t = self._prepare(model_output, temperature, top_k, top_p, sampling_method)
            seed = rng = None
            if t > 0:
                # Outside the step scope: on the CPU this reads the drawn seed (free); on a
                # GPU the seed stays there as rng.
                seed, rng = _draw_seed(generator, model_output.device)
            with step_scope():
                tokens, probs = self._sample(scaled, t, seed, rng)
                transfer, edit, prev = self._select(
                    sample, tokens, probs, timestep, mask_token_id, threshold, editing_threshold, prompt_mask
                )
            if not return_dict:
                return prev, transfer, edit, tokens, probs, model_output
            return Output(
                prev_sample=prev, transfer_index=transfer, editing_transfer_index=edit,
                sampled_tokens=tokens, sampled_probs=probs, pred_logits=model_output,
            )

        def _prepare(self, logits, temperature, top_k, top_p, sampling_method):
            """(logits to sample, temperature): temperature 0 = greedy. Checks and
            filters exactly as diffusers' ``_sample_from_logits`` does."""
            if temperature < 0:
                raise ValueError(f"`temperature` must be >= 0, got {temperature}.")
            multinomial = sampling_method == "multinomial" or (sampling_method == "auto" and temperature != 0.0)
            if temperature == 0.0 or not multinomial:
                return logits, 0.0
            # Whether diffusers' helpers would act (or raise): the same tests they make.
            filtered = (top_k is not None and not (top_k <= 0 or top_k >= logits.shape[-1])) or (
                top_p is not None and not top_p >= 1.0)
            if filtered or logits.dtype != torch.float32:
                # Scale and filter in the logits' dtype as diffusers does (its helpers: same
                # finfo.min fill and validation), then sample the filtered rows at T = 1.
                scaled = logits if temperature == 1.0 else logits / temperature
                scaled = self._top_k_filtering(scaled, top_k=top_k)
                return self._top_p_filtering(scaled, top_p=top_p), 1.0
            return logits, float(temperature)

        def _sample(self, logits, temperature, seed, rng):
            """(token int64, probability float32), each ``logits.shape[:-1]``."""
            if temperature > 0:
                stats = ops.token_stats(logits, temperature=temperature, tempered_scores=True, seed=seed, rng=rng)
                return stats.token, stats.confidence
            stats = ops.token_stats(logits, temperature=0.0)
            if not self.exact_probs:
                return stats.token, stats.confidence
            flat = logits.reshape(-1, logits.shape[-1])
            token = stats.token.reshape(-1, 1)
            # token_stats' -1 (no distribution) cannot index; its probability is NaN.
            prob = torch.softmax(flat.float(), dim=-1).gather(-1, token.clamp(min=0))
            prob = torch.where(token >= 0, prob, float("nan"))
            return stats.token, prob.view(logits.shape[:-1])

        def _select(self, sample, tokens, probs, timestep, mask_token_id, threshold, editing_threshold, prompt_mask):
            """(transfer_index, editing_transfer_index, prev_sample), all on the device."""
            active = sample == mask_token_id
            transfer = torch.zeros_like(active)
            schedule = self._transfer_schedule
            prev = sample.clone()
            if schedule is not None:
                n = self._schedule_entry(schedule, timestep).to(sample.device)
                conf = torch.where(active, probs.to(torch.float32), float("-inf"))
                high = conf > threshold
                enough = high.sum(-1) >= n
                k = torch.minimum(n, active.sum(-1))
                top = ops.select_topk(conf, k, active)
                transfer = torch.where(enough[:, None], high, top)
                ops.commit_(prev, tokens, transfer, mask_token_id)
            edit = torch.zeros_like(active)
            if editing_threshold is not None and editing_threshold > 0.0:
                editable = ~active
                if prompt_mask is not None:
                    editable = editable & ~prompt_mask.to(torch.bool)
                # Committed positions of this step are not editable (active before the step),
                # so prev still holds sample's tokens wherever edit_ looks.
                edit, _ = ops.edit_(prev, tokens, probs, editable.expand_as(active).contiguous(),
                                    float(editing_threshold))
            return transfer, edit, prev

        @staticmethod
        def _schedule_entry(schedule: torch.Tensor, timestep) -> torch.Tensor:
            """``schedule[min(step, len - 1)]`` as an int64 0-d tensor, read nowhere."""
            if isinstance(timestep, torch.Tensor):
                step = timestep.reshape(()).to(device=schedule.device, dtype=torch.int64)
                last = len(schedule) - 1
                step = torch.clamp(step, max=last)
                step = torch.where(step < 0, step + len(schedule), step)  # Python's negative indexing
                return schedule.index_select(0, step.reshape(1)).reshape(())
            return schedule[min(int(timestep), len(schedule) - 1)]

        @staticmethod
        def check_eos_finished(
            cur_x: torch.LongTensor,
            sampled_tokens: torch.LongTensor,
            final_transfer: torch.BoolTensor,
            finished: torch.BoolTensor,
            eos_token_id: int,
            mask_token_id: int,
            prompt_length: int,
        ) -> torch.BoolTensor:
            """diffusers' rule for every row at once: a row not yet finished that
            committed an EOS this step finishes when the first EOS of ``cur_x`` (the
            whole window, prompt included) lies at or after ``prompt_length`` with no
            mask in ``cur_x[prompt_length:eos]``. ``finished`` is updated in place and
            returned, as diffusers does."""
            committed_eos = ((sampled_tokens == eos_token_id) & final_transfer).any(-1)
            is_eos = cur_x == eos_token_id
            first = is_eos.to(torch.uint8).argmax(-1)  # first True (0 when there is none)
            cols = torch.arange(cur_x.shape[-1], device=cur_x.device)
            gap = (cur_x == mask_token_id) & (cols >= prompt_length) & (cols < first[:, None])
            done = committed_eos & is_eos.any(-1) & (first >= prompt_length) & ~gap.any(-1)
            finished |= done
            return finished

        def check_block_should_continue(
            self,
            step_idx: int,
            masks_remaining,
            editing_enabled: bool,
            editing_transfer_index: torch.BoolTensor,
            post_steps: int,
            max_post_steps: int,
            finished: torch.BoolTensor,
        ) -> bool:
            """diffusers' rules with one read of the device: continue unless every row
            finished; masks remain and ``step_idx >= num_inference_steps``; or no mask
            remains and (editing is off, nothing was edited this step, or
            ``post_steps > max_post_steps``)."""
            with_masks = step_idx < self.num_inference_steps
            if editing_enabled and post_steps <= max_post_steps:
                without_masks = editing_transfer_index.any()
            else:
                without_masks = False
            if isinstance(masks_remaining, torch.Tensor):
                m = masks_remaining.to(torch.bool)
                go = (m & with_masks) | (~m & without_masks)
            else:
                go = with_masks if masks_remaining else without_masks
            if isinstance(go, bool) and not go:
                return False
            return bool(go & ~finished.all())

    BlockRefinementScheduler.__module__ = __name__
    BlockRefinementScheduler.__qualname__ = "BlockRefinementScheduler"
    return BlockRefinementScheduler, Output


def __getattr__(name: str):
    # Built on first access so that importing this module never needs diffusers.
    if name in __all__:
        cls, out = _build()
        globals().update(BlockRefinementScheduler=cls, BlockRefinementSchedulerOutput=out)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
