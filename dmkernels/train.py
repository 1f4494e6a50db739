"""Training learned scheduling policies (the denoiser stays frozen).

Two trainers for a :class:`~dmkernels.learned.LearnedPolicy`, both driven by a
user's reward function ``reward_fn(sequences [N, L], prompt_index [N]) -> [N]``
(float, higher is better) and both rolling out through the real sampler
(``dmkernels.generate``, or ``dmkernels.infill`` with ``infill=True``), so a policy
is trained exactly as it will run:

* :func:`grpo` - Group Relative Policy Optimisation, as in Self-Aware Scheduling:
  ``group_size`` rollouts per prompt under the exploring policy (Plackett-Luce
  sampling of the positions), rewards normalised within each group, a clipped
  importance-ratio objective over the exact log-probabilities of the chosen
  sets, and a KL penalty to the initial (reference) policy.
* :func:`rloo` - REINFORCE with a leave-one-out baseline over ``samples``
  rollouts per prompt: the score-function estimator of the variational
  objective of "learning generation orders" (the order is the latent variable,
  the selector its posterior).

* :func:`supervised` - learning from answers, for tasks with a known target
  sequence (infilling, Sudoku, SFT data): the scorer learns "the proposed token
  equals the target's" on the states that the policy itself visits while
  everything it has committed is still right (DAgger), with binary
  cross-entropy plus a listwise term that ranks the right proposals first. A
  warm start for the reinforcement learners, or a policy on its own.

Each returns the history: one dict per iteration (mean reward, loss) or, for
:func:`supervised`, per epoch.

Rollouts leave the policy as it is: the exploration temperature and the record
of each step travel in a :class:`~dmkernels.learned.Trajectory` handed to the
sampler as its recorder, and only the scorer's parameters are trained.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from . import _checks as check
from .policies.learned import LearnedPolicy, Trajectory, run_scorer, set_log_prob
from .sampler import _generate_sampler, _infill_sampler, _signature_check, generate, infill as infill_fn

__all__ = ["grpo", "rloo", "rollout", "supervised", "trajectory_log_probs"]

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def rollout(policy: LearnedPolicy, model, prompts: torch.Tensor, *, seed: int, explore: float | None,
            infill: bool = False, **generate_kwargs) -> tuple[torch.Tensor, Trajectory]:
    """Run the sampler with ``policy``, exploring at temperature ``explore`` (None:
    deterministic, whatever ``policy.explore``), and record every step; returns
    (sequences, trajectory). ``generate_kwargs``: those of :func:`dmkernels.generate`
    (of :func:`dmkernels.infill` with ``infill=True``). The policy is not changed."""
    trajectory = Trajectory(explore=explore)
    public = infill_fn if infill else generate
    _signature_check(public, model, prompts, policy=policy, seed=seed, **generate_kwargs)
    build = _infill_sampler if infill else _generate_sampler
    out = build(model, prompts, policy=policy, seed=seed, recorder=trajectory, **generate_kwargs).run()
    return out.sequences, trajectory


def trajectory_log_probs(policy: LearnedPolicy, trajectory: Trajectory, scorer=None) -> torch.Tensor:
    """log P(chosen set) [T, N] of every recorded step under ``scorer`` (default the
    policy's own, with gradients), at the temperature the trajectory explored at."""
    scorer = scorer or policy.scorer
    temperature = trajectory.temperature
    out = []
    hidden = trajectory.hidden or [None] * len(trajectory.features)
    for features, h, tokens, eligible, chosen in zip(trajectory.features, hidden, trajectory.tokens,
                                                     trajectory.eligible, trajectory.chosen):
        raw = run_scorer(scorer, features, h, tokens)
        scores = torch.where(eligible, raw.float(), float("-inf"))
        out.append(set_log_prob(scores, chosen, eligible, policy.selection, temperature))
    return torch.stack(out)


def _decisions(trajectory: Trajectory) -> torch.Tensor:
    """[T, N] bool: steps where the row had a choice to make (something eligible)."""
    return torch.stack([e.any(-1) for e in trajectory.eligible])


def _check(policy, prompts, reward_fn, per_prompt, name):
    if not isinstance(policy, LearnedPolicy):
        raise TypeError(f"dmkernels.train.{name}: policy must be a LearnedPolicy, got {type(policy).__name__}")
    if not callable(reward_fn):
        raise TypeError(f"dmkernels.train.{name}: reward_fn must be callable")
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.shape[0] < 1:
        raise ValueError(f"dmkernels.train.{name}: prompts must be a 2-D tensor [N, L] with N >= 1")
    if per_prompt < 2:
        raise ValueError(f"dmkernels.train.{name}: needs at least 2 rollouts per prompt, got {per_prompt}")


def _rewards(reward_fn, sequences, index, name):
    r = reward_fn(sequences, index)
    r = torch.as_tensor(r, dtype=torch.float32, device=sequences.device)
    if r.shape != (sequences.shape[0],):
        raise ValueError(f"dmkernels.train.{name}: reward_fn must return one reward per sequence "
                         f"[{sequences.shape[0]}], got shape {list(r.shape)}")
    return r


def _grouped_rollouts(policy, model, prompts, reward_fn, *, name, per_prompt, iterations, prompts_per_iteration,
                      explore, seed, infill, generate_kwargs):
    """The loop both trainers share: each iteration draws ``prompts_per_iteration``
    prompts, rolls each out ``per_prompt`` times under the exploring policy and
    yields ``(iteration, trajectory, rewards [prompts, per_prompt])``. The rollouts
    explore at ``explore`` (their log-probabilities are taken at that temperature)."""
    g = torch.Generator().manual_seed(seed)
    for it in range(iterations):
        pick = torch.randperm(prompts.shape[0], generator=g)[:prompts_per_iteration]
        index = pick.repeat_interleave(per_prompt)
        batch = prompts[index.to(prompts.device)]
        sequences, traj = rollout(policy, model, batch, seed=seed * 1_000_003 + it, explore=explore,
                                  infill=infill, **generate_kwargs)
        if len(traj) == 0:
            raise RuntimeError(f"dmkernels.train.{name}: the rollout made no decisions")
        rewards = _rewards(reward_fn, sequences, index, name)
        yield it, traj, rewards.view(-1, per_prompt)


def _log(history: list, log, record: dict) -> None:
    history.append(record)
    if log is not None:
        log(record)


def grpo(policy: LearnedPolicy, model, prompts: torch.Tensor, reward_fn: RewardFn, *, iterations: int = 100,
         prompts_per_iteration: int = 8, group_size: int = 8, lr: float = 3e-4, clip: float = 0.2,
         kl_coef: float = 0.04, inner_epochs: int = 2, explore: float = 1.0, seed: int = 0, infill: bool = False,
         log: Callable[[dict], None] | None = None, **generate_kwargs) -> list[dict]:
    """Train ``policy`` in place with GRPO; returns one record per iteration."""
    _check(policy, prompts, reward_fn, group_size, "grpo")
    reference = copy.deepcopy(policy.scorer).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.scorer.parameters(), lr=lr)
    history = []
    for it, traj, grouped in _grouped_rollouts(
            policy, model, prompts, reward_fn, name="grpo", per_prompt=group_size, iterations=iterations,
            prompts_per_iteration=prompts_per_iteration, explore=explore, seed=seed, infill=infill,
            generate_kwargs=generate_kwargs):
        advantage = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(-1)
        old = torch.stack(traj.log_prob).detach()
        valid = _decisions(traj).to(old.dtype)
        with torch.no_grad():
            ref = trajectory_log_probs(policy, traj, reference)
        for _ in range(inner_epochs):
            new = trajectory_log_probs(policy, traj)
            ratio = torch.exp(new - old)
            adv = advantage.to(new.dtype)[None, :]
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
            log_ratio_ref = ref - new
            kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1
            loss = -((surrogate - kl_coef * kl) * valid).sum() / valid.sum().clamp_min(1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _log(history, log, dict(iteration=it, reward=float(grouped.mean()), loss=float(loss.detach()),
                                kl=float((kl.detach() * valid).sum() / valid.sum().clamp_min(1))))
    return history


def rloo(policy: LearnedPolicy, model, prompts: torch.Tensor, reward_fn: RewardFn, *, iterations: int = 100,
         prompts_per_iteration: int = 8, samples: int = 4, lr: float = 3e-4, explore: float = 1.0, seed: int = 0,
         infill: bool = False, log: Callable[[dict], None] | None = None, **generate_kwargs) -> list[dict]:
    """Train ``policy`` in place with REINFORCE and a leave-one-out baseline."""
    _check(policy, prompts, reward_fn, samples, "rloo")
    optimizer = torch.optim.AdamW(policy.scorer.parameters(), lr=lr)
    history = []
    for it, traj, grouped in _grouped_rollouts(
            policy, model, prompts, reward_fn, name="rloo", per_prompt=samples, iterations=iterations,
            prompts_per_iteration=prompts_per_iteration, explore=explore, seed=seed, infill=infill,
            generate_kwargs=generate_kwargs):
        baseline = (grouped.sum(1, keepdim=True) - grouped) / (samples - 1)
        advantage = (grouped - baseline).view(-1)
        valid = _decisions(traj)
        logp = (trajectory_log_probs(policy, traj) * valid).sum(0)  # log P(order) per rollout
        loss = -(advantage.to(logp.dtype) * logp).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _log(history, log, dict(iteration=it, reward=float(grouped.mean()), loss=float(loss.detach())))
    return history


def _clean_states(policy, model, prompts, targets, *, explore, seed, batch, infill, generate_kwargs, with_tokens=False):
    """Roll out ``policy`` (exploring) and keep, per step, the rows whose commits so
    far all equal the targets: (features, hidden or None, right, eligible), and the step tokens
    when ``with_tokens`` (for scorers that read them)."""
    kept = []
    for lo in range(0, prompts.shape[0], batch):
        target = targets[lo:lo + batch]
        _, traj = rollout(policy, model, prompts[lo:lo + batch], seed=seed + lo, explore=explore, infill=infill,
                          **generate_kwargs)
        clean = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
        for t in range(len(traj)):
            tokens, eligible = traj.tokens[t], traj.eligible[t]
            if tokens.shape[1] != target.shape[1]:
                raise ValueError(f"dmkernels.train.supervised: targets have {target.shape[1]} columns but the "
                                 f"policy scores blocks of {tokens.shape[1]}; give the answer for the scored "
                                 "positions (the canvas with infill=True, the generation with one block)")
            right = tokens == target
            keep = clean & eligible.any(-1)
            h = traj.hidden[t]
            kept.append((traj.features[t][keep], None if h is None else h[keep], right[keep], eligible[keep],
                         tokens[keep]))
            clean = clean & ~(traj.chosen[t] & ~right).any(-1)
    cat = lambda i: None if kept[0][i] is None else torch.cat([k[i] for k in kept])  # noqa: E731
    return tuple(cat(i) for i in range(5 if with_tokens else 4))


def _correctness_loss(scores, right, eligible, preferred=None):
    """Binary cross-entropy of "the proposal is right" over eligible positions plus a
    listwise term: -log of the softmax mass the row puts on its right proposals
    (top-k selection only needs the right ones ranked first). With ``preferred``
    (bool, like ``right``), a row holding a preferred right proposal puts that mass
    on those alone: among right proposals, rank the preferred ones first."""
    e = eligible.to(scores.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(scores, right.to(scores.dtype), reduction="none")
    bce = (bce * e).sum() / e.sum().clamp_min(1)
    good = eligible & right
    if preferred is not None:
        first = good & preferred
        good = torch.where(first.any(-1, keepdim=True), first, good)
    has = good.any(-1)
    floor = torch.finfo(scores.dtype).min / 4
    listwise = (torch.logsumexp(torch.where(eligible, scores, floor), -1)
                - torch.logsumexp(torch.where(good, scores, floor), -1))
    listwise = listwise[has].mean() if bool(has.any()) else scores.sum() * 0
    return bce + listwise


def _preferred(fn, tokens, eligible):
    """``fn(tokens, eligible)``, checked: bool, the states' shape and device; None without ``fn``.
    (Marks off eligible positions do no harm: the loss only reads right eligible ones.)"""
    if fn is None:
        return None
    return check.like("train.supervised", "what preferred returned", fn(tokens, eligible), eligible, "eligible",
                      (torch.bool,), eligible.shape, "eligible's")


def supervised(policy: LearnedPolicy, model, prompts: torch.Tensor, targets: torch.Tensor, *, rounds: int = 2,
               epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, explore: float = 0.5, seed: int = 0,
               rollout_batch: int = 256, infill: bool = False, log: Callable[[dict], None] | None = None,
               preferred: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               **generate_kwargs) -> list[dict]:
    """Train ``policy`` in place to rank right proposals first; returns one record per epoch.

    ``targets``: the answer for each prompt at the positions the policy scores:
    [N, L] for ``infill=True`` (one block over the canvas), [N, gen_length] when
    generating in one block. Each round rolls the policy out on every prompt,
    exploring at ``explore`` (the first round from the scorer as it is),
    adds the steps whose commits were all right so far to the data set, and
    fits the scorer for ``epochs`` passes (AdamW, one-cycle learning rate).

    ``preferred``: optional ``preferred(step_tokens, eligible) -> bool``, all
    ``[n, W]`` (the step tokens: the proposal at eligible positions, the canvas
    elsewhere), marking proposals to commit before the other right ones, e.g.
    those a task's rules force (:func:`dmkernels.tasks.sudoku.forced`). Where a
    state holds a preferred right proposal, the listwise term ranks those first;
    elsewhere nothing changes. A training signal only: the policy never reads it.
    """
    if not isinstance(policy, LearnedPolicy):
        raise TypeError(f"dmkernels.train.supervised: policy must be a LearnedPolicy, got {type(policy).__name__}")
    if not isinstance(targets, torch.Tensor) or targets.shape[0] != prompts.shape[0]:
        raise ValueError("dmkernels.train.supervised: targets must be a tensor with one row per prompt "
                         f"({prompts.shape[0]})")
    if policy.selection != "topk":
        raise ValueError("dmkernels.train.supervised: trains top-k policies (selection='topk')")
    if preferred is not None and not callable(preferred):
        raise TypeError("dmkernels.train.supervised: preferred must be a callable (step_tokens, eligible) -> bool "
                        f"[n, W], got {type(preferred).__name__}")
    g = torch.Generator().manual_seed(seed)
    data, history = None, []
    for r in range(rounds):
        was_training = policy.scorer.training
        policy.scorer.eval()
        new = _clean_states(policy, model, prompts, targets, explore=explore, seed=seed * 1_000_003 + r * 65_537,
                            batch=rollout_batch, infill=infill, generate_kwargs=generate_kwargs, with_tokens=True)
        policy.scorer.train(was_training)
        new = new + (_preferred(preferred, new[4], new[3]),)
        data = new if data is None else tuple(None if a is None else torch.cat([a, b]) for a, b in zip(data, new))
        features, hidden, right, eligible, tokens, first = data
        n = features.shape[0]
        if n == 0:
            raise RuntimeError("dmkernels.train.supervised: the rollouts left no step to learn from "
                               "(no masked positions in the prompts?)")
        optimizer = torch.optim.AdamW(policy.scorer.parameters(), lr=lr, weight_decay=0.01)
        per_epoch = (n + batch_size - 1) // batch_size
        total_steps = epochs * per_epoch
        # OneCycleLR divides by the length of its warm-up phase: give it at least two
        # steps, and run a constant rate when there are too few updates for a cycle.
        schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                                        pct_start=max(0.1, 2.0 / total_steps))
                    if total_steps >= 4 else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
        for epoch in range(epochs):
            order = torch.randperm(n, generator=g).to(features.device)
            total = torch.zeros((), device=features.device)  # summed on the device: no sync per batch
            for lo in range(0, n, batch_size):
                i = order[lo:lo + batch_size]
                raw = run_scorer(policy.scorer, features[i], None if hidden is None else hidden[i].float(), tokens[i])
                loss = _correctness_loss(raw.float(), right[i], eligible[i], None if first is None else first[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach()
            _log(history, log, dict(round=r, epoch=epoch, states=n, loss=float(total) / per_epoch))
    return history
