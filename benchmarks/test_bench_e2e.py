"""Whole generations: the drop-in samplers (dmkernels.compat) against their eager
counterparts (dmkernels.bench.eager), one group per case, ours and the eager side by side.
Each side asserts that its canvas is token for token the other side's.

By default the small cases run (``tiny_config(vocab_size=4096)``, gen_length 32 in
two blocks: a few seconds in all); ``--run-large`` adds the reported shapes
(LLaDA vocabulary, gen_length 256, block_length 32; the eager Fast-dLLM samplers
take minutes there)."""
import pytest

from dmkernels.bench import e2e

CASES = e2e.all_e2e_cases()


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request, bench_device):
    case = request.param
    case.setup(bench_device)
    yield case
    case.teardown()


# The eager side first: its output is then there for ours to compare with, and the
# slow side runs only as often as it is benchmarked.
def test_eager(case, run_side):
    run_side(case, "baseline")


def test_ours(case, run_side):
    run_side(case, "ours")
