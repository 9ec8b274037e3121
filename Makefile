# make setup | make test | make test-fast | make demo | make bench | make results | make results-status
# make setup-torch | make test-torch: a second environment, PyTorch with numpy 2 and no MXNet
# make extras: the optional libraries of the field's methods (mbemlib/crowd_methods.py) in the first
PY := python3.11
# PyTorch for --backend torch: the CPU build by default; a GPU machine overrides it, e.g.
#   make setup TORCH=torch==2.13.0   (PyPI's Linux wheel of torch is the CUDA build)
TORCH ?= torch==2.13.0+cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VENV := .venv-torch
TORCH_STAMP := $(TORCH_VENV)/.installed

.PHONY: setup setup-torch extras test test-fast test-torch demo bench results results-status clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt Makefile
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; install Python 3.11 (mxnet 1.9.1 wheels need it)" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt $(TORCH)
	touch $(STAMP)

# The torch-only environment: current numpy 2, scipy, pandas and PyTorch, no MXNet (which stops at
# Python 3.11 and numpy < 1.24), with the optional libraries of the field's methods; the tests that
# need MXNet skip there, each with its reason.
setup-torch: $(TORCH_STAMP)

$(TORCH_STAMP): requirements-torch.txt requirements-extra.txt requirements-dev.txt Makefile
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found" >&2; exit 1; }
	$(PY) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-torch.txt \
		-r requirements-extra.txt -r requirements-dev.txt $(TORCH)
	touch $(TORCH_STAMP)

# CROWDLAB, Crowd Layer and CoNAL (MBEM.py --algorithms crowdlab,crowdlayer,conal) in the MXNet
# environment: cleanlab and crowd-kit, about 330 MB with what crowd-kit brings.
extras: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-extra.txt

test-torch: setup-torch
	$(TORCH_VENV)/bin/python -m pytest -rs

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Between edits: everything but the tests marked slow (training, end-to-end runs); 1.5 minutes or so (README).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(BIN)/python MBEM.py --preset demo

bench: setup
	$(BIN)/python bench/bench_aggregation.py
	$(BIN)/python bench/bench_train.py

# Every committed CIFAR-10 results/ folder as one queue (reproduce.py: one training at a time, each
# folder resumed, bf16 folders skipped on a CPU without native bf16), then the paper's figure:
# hours on a CPU, see docs/reproducing.md. results-status: cells done and time left per folder.
# The queue's last folders train the field's methods, so it installs their optional libraries.
results: extras
	$(BIN)/python reproduce.py

results-status: setup
	$(BIN)/python reproduce.py --status

clean:
	rm -rf $(VENV) $(TORCH_VENV) .pytest_cache .ruff_cache
