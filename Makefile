# Two commands for a newcomer (see README.md):
#   make bench   the main job: python -m dmkernels.bench on whatever device is here
#   make test    the test suite (what CI runs)
# Both first install what they need, at the exact versions in constraints.txt.
# PyTorch is installed only when none is: torch==2.13.0, which on a CPU machine
# here is the local CPU build (no CUDA packages); a machine that already has a
# (CUDA) PyTorch keeps it. Use a virtual environment (README, "Two commands").
#
#   make test-latest   the same suite on the newest versions setup.py allows
#                      (not CI; says whether a new release breaks us)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION := 2.13.0

.PHONY: install install-latest build bench test test-latest gpu-check

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install --quiet -c constraints.txt -r requirements-test.txt
	@$(MAKE) --no-print-directory build

install-latest:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install --quiet --upgrade --upgrade-strategy eager -r requirements-test.txt
	@$(MAKE) --no-print-directory build

# dmkernels is installed editable once, without compiling (DMKERNELS_NO_EXTENSION=1
# at install time only); the extension is built in place by build_ext, whose
# objects stay in build/: ninja recompiles only what changed, and nothing when
# dmkernels/_C*.so is newer than every source.
build:
	@(cd / && $(PYTHON) -c "import importlib.util as u, os, sys; s = u.find_spec('dmkernels'); \
		sys.exit(not (s and os.path.dirname(s.origin) == os.path.join('$(CURDIR)', 'dmkernels')))") \
		|| DMKERNELS_NO_EXTENSION=1 $(PIP) install --quiet --no-build-isolation --no-deps -e .
	$(PYTHON) setup.py --quiet build_ext --inplace

bench: install
	$(PYTHON) -m dmkernels.bench $(BENCH_ARGS)

test: install
	$(PYTHON) -m pytest tests benchmarks -q --benchmark-disable $(TEST_ARGS)

test-latest: install-latest
	$(PIP) list 2>/dev/null | grep -iE "^(torch|transformers|numpy|safetensors|triton|tqdm) "
	$(PYTHON) -m pytest tests benchmarks -q --benchmark-disable $(TEST_ARGS)

# The GPU validation in one command (README, "GPU check"): build for this GPU,
# CUDA tests, compute-sanitizer, GPU benchmarks -> benchmarks/results/gpu_<device>.*
# Uses the PyTorch/Triton/nvcc already on the machine: no install, nothing fetched.
# Without CUDA: one line saying why, exit 0.
gpu-check:
	@$(PYTHON) -m dmkernels.bench.gpu_check $(GPU_CHECK_ARGS)
