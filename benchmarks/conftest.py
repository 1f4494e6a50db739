"""pytest-benchmark setup for the cases of dmkernels/bench/cases.py: one intra-op
thread, the case's device, and ``--run-large`` for the LLaDA-size cases."""
from __future__ import annotations

import pytest
import torch

from dmkernels.bench import measure
from dmkernels.bench.cases import Case


def pytest_addoption(parser):
    parser.addoption(
        "--run-large", action="store_true", default=False,
        help="also run the LLaDA-size cases (0.5-1 GB of logits; LLaDA's float64 step takes up to a minute and 10 GB)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "large: LLaDA-size logits, run only with --run-large")
    measure.use_one_thread()  # stable ratios on a small shared machine


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="LLaDA-size case: pass --run-large")
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if isinstance(case, Case) and case.large:
            item.add_marker(pytest.mark.large)
            if not config.getoption("--run-large"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def run_side(benchmark, bench_device):
    """``run_side(case, "ours" | "baseline")``: benchmark one side of a set-up case
    in the case's group (so the table compares the two) and check its output."""

    def run(case, side):
        fn = case.run_ours if side == "ours" else case.run_baseline
        if bench_device.type == "cuda":
            call = fn
            fn = lambda: (call(), torch.cuda.synchronize())[0]  # noqa: E731  (time the work, not the launch)
        benchmark.group = case.name
        benchmark.extra_info.update(op=case.op if side == "ours" else case.baseline, logits_bytes=case.logits_bytes)
        # Few rounds: the big float64 baseline runs once; tiny selection calls many times.
        rounds, warmup = (1, 0) if case.large else (3, 1) if case.logits_bytes else (100, 5)
        out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
        problem = case.mismatch(side, out)
        assert problem is None, f"{side} of {case.name}: {problem}"

    return run
