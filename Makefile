# Two commands for a newcomer (see README.md):
#   make bench   the main job: python -m dmkernels.bench on whatever device is here
#   make test    the test suite (what CI runs)
# Both first install what they need. PyTorch is installed only when none is:
# torch==2.13.0, which on a CPU machine here is the local CPU build (no CUDA
# packages); a machine that already has a (CUDA) PyTorch keeps it.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install bench test

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install --quiet ninja numpy pytest pytest-benchmark hypothesis transformers tqdm safetensors matplotlib
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) install --quiet triton
	@# First time: an editable install (builds dmkernels._C into the tree). Later:
	@# an incremental in-place rebuild (ninja keeps build/) of what changed.
	@if $(PIP) show --quiet dmkernels 2>/dev/null; then \
		$(PYTHON) setup.py --quiet build_ext --inplace; \
	else \
		$(PIP) install --no-build-isolation --no-deps -e .; \
	fi

bench: install
	$(PYTHON) -m dmkernels.bench $(BENCH_ARGS)

test: install
	$(PYTHON) -m pytest tests benchmarks -q --benchmark-disable $(TEST_ARGS)
