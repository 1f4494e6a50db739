"""token_stats (and LLaDA's whole step) against LLaDA, Dream and plain float32
PyTorch, on every kind of rows (randn * 4 and * 1, peaked, -inf entries), and
sampling against the argmax; one group per case, ours and the baseline side by side."""
import pytest

from dmkernels.bench.cases import SelectCommitCase, every_case

CASES = [c for c in every_case() if not isinstance(c, SelectCommitCase)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request, bench_device):
    case = request.param
    case.setup(bench_device)
    yield case
    case.teardown()  # free the logits before the next case


def test_ours(case, run_side):
    run_side(case, "ours")


def test_baseline(case, run_side):
    run_side(case, "baseline")
