"""generate(..., backend=...) runs every op of the generation on that backend:
token_stats, the policy's selection ops (built-in and learned) and commit_, on
the plain, Dream-style, infill, Dream drop-in and distributed paths.

A spy wraps each backend's implementations (the reference functions that
dmkernels.ops dispatches to, torch.ops.dmkernels.* and torch.ops.dmkernels_triton.*)
and records which ran. DMKERNELS_BACKEND is set to a *different* backend, so an
op called without the keyword runs there and shows up in the record."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import dmkernels
from conftest import why_not
from dmkernels import _registry, ops
from dmkernels import distributed as D
from dmkernels import policies as P
from dmkernels import triton as dmtriton
from dmkernels.learned import LearnedPolicy, MLPScorer
from dmkernels.models import DiffusionLM, tiny_config
from dmkernels.schedules import DreamTimesteps

V = 23
MASK = V - 1

# Every op of the registry, and the reference dmkernels.ops dispatches to for it.
OPS = tuple(_registry.OPS)
REFERENCES = {op: spec.reference for op, spec in _registry.OPS.items()}


# The backends that run on CPU tensors here (Triton only under the interpreter).
AVAILABLE = [name for name in ("reference", "native", "triton") if why_not(name, "cpu") is None]


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, 8, generator=g))
        self.head = torch.nn.Parameter(torch.randn(8, V, generator=g) * 2)

    def forward(self, x, attention_mask=None, *args, **kwargs):
        h = self.emb[x]
        return (h + h.mean(1, keepdim=True)) @ self.head


@pytest.fixture
def spy(monkeypatch):
    """Records (backend, op) for every implementation that runs."""
    seen = []

    def wrap(backend, op, fn):
        def spied(*args, **kwargs):
            seen.append((backend, op))
            return fn(*args, **kwargs)
        return spied

    for op, name in REFERENCES.items():
        monkeypatch.setattr(ops, name, wrap("reference", op, getattr(ops, name)))
    if "native" in AVAILABLE:
        for op in OPS:
            monkeypatch.setattr(torch.ops.dmkernels, op, wrap("native", op, getattr(torch.ops.dmkernels, op)))
    if "triton" in AVAILABLE:
        dmtriton.load()
        for op in OPS:
            monkeypatch.setattr(torch.ops.dmkernels_triton, op,
                                wrap("triton", op, getattr(torch.ops.dmkernels_triton, op)))
    return seen


def _elsewhere(monkeypatch, backend):
    """Point DMKERNELS_BACKEND at another backend, so an op that misses the keyword is seen."""
    others = [b for b in AVAILABLE if b != backend]
    if not others:
        pytest.skip("one backend only: nothing to tell apart")
    monkeypatch.setenv("DMKERNELS_BACKEND", others[0])


def _check(seen, backend, expected):
    ran = {b for b, _ in seen}
    assert ran == {backend}, f"asked for {backend!r}, ran {sorted(set(seen))}"
    assert {op for _, op in seen} == set(expected)


POLICIES = [  # (policy, the selection ops it uses)
    (P.LowConfidence(), {"select_topk"}),
    (P.LowConfidence(alg_temp=0.5), {"select_topk"}),
    (P.Random(), {"select_topk"}),
    (P.Margin(), {"select_topk"}),
    (P.Entropy(DreamTimesteps(), tempered_scores=True), {"select_topk"}),
    (P.DreamOrigin(), set()),
    (P.Threshold(0.5), {"select_threshold"}),
    (P.Factor(1.0), {"select_factor"}),
    (P.Factor(1.0, fast_dllm_quirk=True), {"select_factor"}),
    (P.EntropyBounded(0.5), {"select_entropy_bounded"}),
    (P.EntropyBounded(0.5, error="margin"), {"select_entropy_bounded"}),
    (P.Dilated(2), {"select_group"}),
    (P.Dilated(2, remask_threshold=0.3), {"select_group", "select_threshold"}),
]


def _learned(selection, explore=None):
    torch.manual_seed(0)
    return LearnedPolicy(MLPScorer(hidden=4), selection=selection, explore=explore)


LEARNED = [  # (kwargs, the selection ops it uses)
    (dict(selection="topk"), {"select_topk"}),
    (dict(selection="threshold"), {"select_threshold"}),
    (dict(selection="topk", explore=1.0), {"select_topk"}),
    (dict(selection="threshold", explore=1.0), {"select_topk"}),  # the fallback "best" pick
]


def _every_policy_class_is_listed():
    listed = {type(p) for p, _ in POLICIES} | {LearnedPolicy}
    exported = {getattr(P, name) for name in P.__all__}
    return {c for c in exported if isinstance(c, type) and issubclass(c, P.Policy) and c is not P.Policy} - listed


def test_every_policy_of_dmkernels_policies_is_covered():
    assert not _every_policy_class_is_listed()


def _generate(policy, backend, **kw):
    ids = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(1))
    args = dict(gen_length=8, block_length=4, steps=4, policy=policy, temperature=0.7, seed=5, mask_id=MASK,
                backend=backend)
    args.update(kw)
    return dmkernels.generate(ToyModel(), ids, **args)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("policy,uses", POLICIES, ids=[f"{i}-{type(p).__name__}" for i, (p, _) in enumerate(POLICIES)])
def test_generate_runs_every_op_of_a_policy_on_the_chosen_backend(policy, uses, backend, spy, monkeypatch):
    _elsewhere(monkeypatch, backend)
    _generate(policy, backend)
    _check(spy, backend, {"token_stats", "commit_"} | uses)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("kw,uses", LEARNED, ids=[str(kw) for kw, _ in LEARNED])
def test_learned_policies_run_on_the_chosen_backend(kw, uses, backend, spy, monkeypatch):
    _elsewhere(monkeypatch, backend)
    _generate(_learned(**kw), backend)
    _check(spy, backend, {"token_stats", "commit_"} | uses)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_dream_style_cache_and_infill_paths_run_on_the_chosen_backend(backend, spy, monkeypatch):
    _elsewhere(monkeypatch, backend)
    _generate(P.Margin(DreamTimesteps(), tempered_scores=True), backend, shift_logits=True)
    ids = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(1))
    cached = DiffusionLM(tiny_config(vocab_size=V)).eval()  # has the KV cache protocol
    dmkernels.generate(cached, ids, gen_length=8, block_length=4, steps=4, policy=P.Threshold(0.5), seed=5,
                       mask_id=MASK, cache="dual", backend=backend)
    canvas = torch.randint(0, MASK, (2, 6), generator=torch.Generator().manual_seed(2))
    canvas[:, ::2] = MASK
    dmkernels.infill(ToyModel(), canvas, steps=3, policy=P.EntropyBounded(0.5), mask_id=MASK, backend=backend)
    _check(spy, backend, {"token_stats", "commit_", "select_topk", "select_threshold", "select_entropy_bounded"})


@pytest.mark.parametrize("backend", AVAILABLE)
def test_the_dream_drop_in_sampler_runs_on_the_chosen_backend(backend, spy, monkeypatch):
    # The drop-in keeps Dream's signature (no backend keyword); its sampler takes one.
    from dmkernels.compat.dream import _DreamSampler

    _elsewhere(monkeypatch, backend)
    ids = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(1))
    _DreamSampler(ToyModel(), ids, attention_mask=None, gen_length=6, block_length=6, steps=3,
                  policy=P.Entropy(DreamTimesteps(), tempered_scores=True), temperature=0.5, cfg_scale=0.0,
                  eos_token_id=None, cache=None, seed=1, progress=False, mask_id=MASK, shift_logits=True,
                  backend=backend, top_k=5).run()
    _check(spy, backend, {"token_stats", "commit_", "select_topk"})


@pytest.fixture
def one_process_group(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", AVAILABLE)
def test_the_distributed_paths_run_on_the_chosen_backend(backend, spy, monkeypatch, one_process_group):
    _elsewhere(monkeypatch, backend)
    _generate(P.Factor(1.0), backend, parallel=D.VocabParallel(0))
    _generate(P.Dilated(2), backend, parallel=D.DataParallel())
    _check(spy, backend, {"token_stats_partial", "commit_", "select_factor", "select_group"})


def test_the_spy_sees_an_op_called_without_the_keyword(spy, monkeypatch):
    # The test above can fail: a selection op missing backend= runs where the
    # environment points and is recorded there.
    if len(AVAILABLE) < 2:
        pytest.skip("one backend only")
    monkeypatch.setenv("DMKERNELS_BACKEND", AVAILABLE[1])
    eligible = torch.ones(2, 4, dtype=torch.bool)
    ops.select_topk(torch.randn(2, 4), 1, eligible)
    ops.select_topk(torch.randn(2, 4), 1, eligible, backend="reference")
    assert spy == [(AVAILABLE[1], "select_topk"), ("reference", "select_topk")]
