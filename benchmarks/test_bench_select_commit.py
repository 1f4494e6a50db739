"""Selection rules + commit_ on a [8, 1024] canvas against the samplers' per-row
loops; one group per rule, ours and the baseline side by side."""
import pytest

from dmkernels.bench.cases import SelectCommitCase, all_cases

CASES = [c for c in all_cases() if isinstance(c, SelectCommitCase)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request, bench_device):
    case = request.param
    case.setup(bench_device)
    yield case
    case.teardown()


def test_ours(case, run_side):
    run_side(case, "ours")


def test_baseline(case, run_side):
    run_side(case, "baseline")
