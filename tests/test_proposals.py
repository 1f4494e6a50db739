"""The shared proposal wrapper (dmkernels.tasks._proposals.BannedProposals, behind
pairs.AnswerProposals and quality.NoMaskProposals) and the shared denoiser
checker (dmkernels._checkpoint.denoiser_config, behind both tasks' load_denoiser)."""
import copy
import json

import pytest
import torch

from dmkernels.bench import quality
from dmkernels.models import DiffusionLM, tiny_config
from dmkernels.tasks import pairs, sudoku
from dmkernels.tasks._proposals import BannedProposals


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DiffusionLM(tiny_config(vocab_size=40)).eval()


@pytest.mark.parametrize("banned,ids", [(7, [7]), (-1, [39]), (slice(30, None), list(range(30, 40))),
                                         ([3, 11, 12], [3, 11, 12]), ((0,), [0])])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_banned_ids_and_only_they_are_removed(tiny, banned, ids, device):
    x = torch.randint(0, 40, (3, 9), device=device)
    model = tiny if device == "cpu" else copy.deepcopy(tiny).to(device)  # the fixture stays on the CPU
    with torch.no_grad():
        want = model(x, output_hidden_states=True)
        net = BannedProposals(model, banned)
        out = net(x, output_hidden_states=True)
        net(x)  # a second call reuses the ids already on the device
    keep = torch.ones(40, dtype=torch.bool)
    keep[ids] = False
    got = out.logits.cpu()
    assert bool((got[..., ~keep] == float("-inf")).all())
    assert torch.equal(got[..., keep], want.logits.cpu()[..., keep])
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, want.hidden_states))
    assert net.calls == 2 and net.seconds > 0 and net.config is model.config


def test_the_task_wrappers_are_the_shared_one(tiny):
    x = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        a = pairs.AnswerProposals(tiny)(x).logits
        b = BannedProposals(tiny, list(range(pairs.UNKNOWN, 40)))(x).logits
        c = quality.NoMaskProposals(tiny, 9)(x).logits
    assert torch.equal(a, b) and isinstance(pairs.AnswerProposals(tiny), BannedProposals)
    assert bool((c[..., 9] == float("-inf")).all()) and bool(torch.isfinite(c[..., :9]).all())


@pytest.mark.parametrize("banned", [None, "3", 2.0, True, [], [1, 2.5], [True]])
def test_bad_banned_ids_are_named(tiny, banned):
    with pytest.raises(ValueError, match="tasks.BannedProposals: banned must be"):
        BannedProposals(tiny, banned)


def _copy(tmp_path, src, edit):
    """The checkpoint ``src`` (no suffix) copied to tmp_path with its JSON edited."""
    weights = tmp_path / "d.safetensors"
    weights.write_bytes(src.with_suffix(".safetensors").read_bytes())
    meta = json.loads(src.with_suffix(".json").read_text())
    edit(meta)
    weights.with_suffix(".json").write_text(json.dumps(meta))
    return weights


# What each task fixes differs (Sudoku accepts a null mask and an eos in its vocabulary;
# Pairs neither), and each error names the loader the user called.
@pytest.mark.parametrize("task,src,edit,message", [
    (pairs, "pairs_denoiser", lambda m: m["config"].update(eos_token_id=3), "eos_token_id must be null, got 3"),
    (pairs, "pairs_denoiser", lambda m: m["config"].update(mask_token_id=None), "mask_token_id must be an int"),
    (pairs, "pairs_denoiser", lambda m: m["config"].update(max_position_embeddings=23),
     r"max_position_embeddings must be in \[24, 4096\]"),
    (pairs, "pairs_denoiser", lambda m: m.update(training=[1]), "training must be a JSON object"),
    (sudoku, "sudoku_long", lambda m: m["config"].update(eos_token_id=10), r"eos_token_id must be in \[0, 9\]"),
    (sudoku, "sudoku_long", lambda m: m["config"].update(max_position_embeddings=80),
     "max_position_embeddings must be >= 81 with learned positions"),
])
def test_each_task_keeps_its_limits(tmp_path, task, src, edit, message):
    weights = _copy(tmp_path, task.checkpoint_dir() / src, edit)
    with pytest.raises(ValueError, match=message) as info:
        task.load_denoiser(path=weights)
    assert str(info.value).startswith(f"dmkernels.tasks.{task.__name__.rsplit('.', 1)[1]}.load_denoiser: ")


def test_what_sudoku_accepts_and_pairs_does_not(tmp_path):
    def edit(m):
        m["config"].update(mask_token_id=None, eos_token_id=3)
    model = sudoku.load_denoiser(path=_copy(tmp_path, sudoku.checkpoint_dir() / "sudoku_long", edit))
    assert model.config.eos_token_id == 3
