# make setup | make test | make demo | make bench
PY := python3.11
# PyTorch for --backend torch: the CPU build by default; a GPU machine overrides it, e.g.
#   make setup TORCH=torch==2.13.0   (PyPI's Linux wheel of torch is the CUDA build)
TORCH ?= torch==2.13.0+cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt Makefile
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; install Python 3.11 (mxnet 1.9.1 wheels need it)" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt $(TORCH)
	touch $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/python MBEM.py --preset demo

bench: setup
	$(BIN)/python bench/bench_aggregation.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
