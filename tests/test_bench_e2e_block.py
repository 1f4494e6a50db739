"""The block-diffusion end-to-end benchmark (dmkernels/bench/e2e.py, BlockE2ECase) on its
quick cases: every drop-in runs against its public counterpart through the
e2e runner, gives the same tokens, and the records carry the model / sampler
split and the positions each side fed the model (the cache's saved compute)."""
import pytest
import torch

from dmkernels.bench import e2e
from dmkernels.constants import LLADA2_VOCAB_SIZE

pytestmark = pytest.mark.filterwarnings("ignore:dmkernels. running")


def _quick(name_part: str):
    cases = [c for c in e2e.select_e2e_cases(quick=True, name_filter="e2e/block/") if name_part in c.name]
    assert cases, name_part
    return cases


@pytest.mark.parametrize("case", _quick("e2e/block/"), ids=lambda c: c.name)
def test_quick_block_case_runs_identical(case):
    record = e2e.run_e2e_case(case, torch.device("cpu"), repeats=1)
    assert record["check"] == "ok", record["check"]
    assert record["identical"] and record["token_agreement"] == 1.0 and record["masks_left"] == 0
    ours, eager = record["ours"], record["eager"]
    for side in (ours, eager):
        assert side["model_calls"] > 0 and side["positions"] > 0 and side["logit_rows"] > 0
        assert 0 < side["model_s"] <= side["total_s"]
        assert side["sampler_s"] == pytest.approx(side["total_s"] - side["model_s"])
    B = case.batch
    if case.sampler.startswith("llada2"):
        # The cache: each step feeds the current block, not the window [0, block end).
        assert ours["positions"] < eager["positions"] and ours["logit_rows"] < eager["logit_rows"]
        # The public side runs the rows one after another: B calls per step.
        assert eager["model_calls"] == B * ours["model_calls"]
    elif case.sampler == "sdar":
        # Both cache; ours skips the separate store_kv pass of each block.
        assert ours["model_calls"] < eager["model_calls"]
    else:  # diffusers: the same pipeline loop, only the scheduler differs
        assert ours["model_calls"] == eager["model_calls"] and ours["positions"] == eager["positions"]
    assert record["positions_ratio"] == pytest.approx(eager["positions"] / ours["positions"])
    assert record["family"] == case.sampler and record["settings"]["block_length"] == case.block_length


def test_a_different_answer_is_reported(monkeypatch):
    from dmkernels.compat import llada2

    real = llada2.generate

    def wrong(*args, **kwargs):
        out = real(*args, **kwargs)
        out[0, -1] = (out[0, -1] + 1) % 4000
        return out

    monkeypatch.setattr(llada2, "generate", wrong)
    case = _quick("llada2/v2.0/V4096/g32b16s8/B1")[0]
    record = e2e.run_e2e_case(case, torch.device("cpu"), repeats=1)
    assert not record["identical"] and record["check"].startswith("tokens: 1 of")
    assert 0.9 < record["token_agreement"] < 1.0


def test_timed_model_counts_positions_and_logit_rows():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    calls = []

    def model(ids=None, **kwargs):
        ids = kwargs.pop("input_ids") if ids is None else ids
        calls.append(kwargs)
        return Out(torch.zeros(ids.shape[0], 3, 11))  # the LM head on 3 rows

    timed = e2e.TimedModel(model)
    timed(torch.zeros(2, 7, dtype=torch.long), attention_mask=None)
    timed(input_ids=torch.zeros(2, 5, dtype=torch.long))
    assert (timed.calls, timed.positions, timed.logit_rows) == (2, 24, 12)
    assert calls[0] == {"attention_mask": None}


def test_large_cases_cover_the_issue_shapes():
    large = [c for c in e2e.block_e2e_cases() if c.large]
    llada2 = {(c.gen_length, c.batch) for c in large if c.sampler == "llada2"}
    assert {(256, 1), (1024, 1), (256, 8)} <= llada2
    assert all(c.vocab == LLADA2_VOCAB_SIZE and c.block_length == 32 for c in large if c.sampler == "llada2")
    assert {c.sampler for c in large} == {"llada2", "llada2_v21", "sdar", "diffusers"}
    assert len({c.name for c in e2e.all_e2e_cases()}) == len(e2e.all_e2e_cases())


def test_run_cli_quick_block(capsys):
    # run_cli is what `python -m dmkernels.bench --e2e --quick` runs (the wheel test covers the command
    # itself; calling cli.main here would set the process-wide malloc options of the CPU peak measurement).
    records = e2e.run_cli(torch.device("cpu"), quick=True, name_filter="e2e/block/sdar/", meta={"device": "test"})
    assert [r["family"] for r in records] == ["sdar"] and records[0]["check"] == "ok"
    assert records[0]["device"] == "test"
    printed = capsys.readouterr().out
    assert "fed k" in printed and "e2e/block/sdar/" in printed
