"""One sampler step captured as a CUDA graph gives the eager loop's tokens (GPU only)."""
import pytest
import torch

import dmkernels
from dmkernels import policies as P
from dmkernels.sampler import Sampler, capture_step

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("policy", [P.LowConfidence(), P.Random(), P.Entropy(), P.DreamOrigin()], ids=repr)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_captured_step_replays_the_eager_block(policy, temperature):
    from dmkernels.models import DiffusionLM, tiny_config

    torch.manual_seed(0)
    config = tiny_config(vocab_size=97)
    model = DiffusionLM(config).cuda().eval()
    ids = torch.randint(0, 90, (2, 7), device="cuda")
    kw = dict(attention_mask=None, gen_length=12, block_length=12, steps=6, policy=policy,
              temperature=temperature, cfg_scale=0.0, eos_token_id=None, cache=None, seed=5, progress=False,
              mask_id=config.mask_token_id, shift_logits=False, backend=None)
    with torch.no_grad():
        eager = Sampler(model, ids, **kw)
        eager.rng = torch.tensor([eager.seed, 0], dtype=torch.int64, device="cuda")  # same noise stream
        expected = eager.run().sequences
        sampler = Sampler(model, ids, **kw)
        graph, step = capture_step(sampler, block=0)
        for i in range(sampler.steps_per_block):
            step.fill_(i)
            graph.replay()
    torch.cuda.synchronize()
    assert not (sampler.x == config.mask_token_id).any()
    if not policy.needs_generator:
        assert torch.equal(sampler.x, expected)


@pytest.mark.parametrize("policy", [P.LowConfidence(), P.Entropy(), P.Dilated(2), P.DreamOrigin()], ids=repr)
def test_step_with_device_step_index_and_rng_matches_the_loop(policy):
    """What capture relies on, checked on the CPU: a step driven by a device step index and
    a device (seed, offset) tensor commits what the host-int loop commits."""
    from test_sampler import MASK, ToyModel, prompts

    kw = dict(attention_mask=None, gen_length=10, block_length=10, steps=5, policy=policy, temperature=0.7,
              cfg_scale=0.0, eos_token_id=None, cache=None, seed=5, progress=False, mask_id=MASK,
              shift_logits=False, backend=None)
    with torch.no_grad():
        loop = Sampler(ToyModel(), prompts(), **kw)
        expected = loop.run().sequences
        manual = Sampler(ToyModel(), prompts(), **kw)
        manual.rng = torch.tensor([manual.seed, 0])
        _, start, end = next(iter(manual.blocks()))
        manual.begin_block(start, end)  # the cache's refresh and the schedule's plan, as run() does
        for i in range(manual.steps_per_block):
            manual.step(0, start, end, torch.tensor(i))
    assert torch.equal(manual.x, expected)
