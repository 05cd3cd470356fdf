PYTHON ?= python3
# The CPU wheel used here and in CI.  A GPU user installs their own CUDA torch first;
# `make install` then keeps it (any torch >= 2.4 satisfies the package).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test bench bench-full

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"

# The main job: the embedded demo (tiny OmniGen, DEFT, synthetic data, CPU, ~1 min).
run: install
	$(PYTHON) -m deft_omni.train

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) benchmarks/adapters.py

bench-full: install
	$(PYTHON) benchmarks/adapters.py --full --json benchmarks/results/full.json
