"""dmkernels.distributed over real process groups: 2 and 3 gloo processes on this
machine (tests/distributed_workers.py holds what each rank runs), plus the
single-process parts (argument errors, bytes accounting)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dmkernels
from dmkernels import distributed as D
from dmkernels import policies as P

import distributed_workers

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def spawn(world, names, tmp_path):
    mp.spawn(distributed_workers.worker, args=(world, str(tmp_path / "store"), names), nprocs=world, join=True)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_token_stats_equal_single_process(world, tmp_path):
    spawn(world, ["ops", "bytes"], tmp_path)


@pytest.mark.parametrize("world", [2, 3])
def test_generate_on_a_vocab_parallel_model_and_data_parallel_workers(world, tmp_path):
    spawn(world, ["vocab_parallel", "data_parallel"], tmp_path)


def test_a_failing_rank_fails_the_test(tmp_path, monkeypatch):
    # The harness must be able to fail: a worker case that raises is reported.
    with pytest.raises(Exception, match="KeyError|no_such_case"):
        spawn(2, ["no_such_case"], tmp_path)


def test_errors_name_the_problem():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="seed"):
        D.token_stats(x, vocab_start=0, temperature=0.5)
    with pytest.raises(RuntimeError, match="not initialized"):
        D.token_stats(x, vocab_start=0)
    model = distributed_workers._model()
    prompt = distributed_workers._prompts(1)
    kw = dict(gen_length=4, block_length=4, steps=2, policy=P.LowConfidence())
    with pytest.raises(ValueError, match="seed must be given with VocabParallel"):
        dmkernels.generate(model, prompt, parallel=D.VocabParallel(0), **kw)
    with pytest.raises(ValueError, match="parallel must be"):
        dmkernels.generate(model, prompt, parallel="tp", **kw)


def test_bytes_per_step_at_llada_shapes():
    # B = 1, block of 32 positions, V = 126464 bf16 logits.
    for W in (2, 4, 8):
        b = D.bytes_per_step(32, 126464, W)
        assert b["partials"] == (W - 1) * 32 * 8 * 4
        assert b["logits"] == (W - 1) * 32 * (126464 // W) * 2
        assert b["logits"] > 500 * b["partials"] / W


def test_the_distributed_benchmark_runs_and_checks_its_tokens():
    from dmkernels.bench import distributed as bench

    (record,) = bench.run(worlds=(2,), rows_list=(3,), repeats=1)
    assert record["check"] == "ok"
    assert record["bytes_received_sharded"] == 3 * 8 * 4
    assert record["bytes_received_gather"] == 3 * (bench.VOCAB // 2) * 2
