# mxprivacy developer targets. `make demo` and `make test` each do all the set-up.
PYTHON311 ?= $(shell command -v python3.11 2>/dev/null)
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.bench-$(shell cat setup.py | cksum | cut -d' ' -f1)
DATA_DIR  ?= $(abspath ../shared/data)
export MXNET_ENGINE_TYPE ?= ThreadedEnginePerDevice
export PYTHONHASHSEED := 0

.PHONY: install demo federated-demo encrypted-demo test test-fast bench clean notebooks

install: $(STAMP)

$(STAMP): setup.py
	@if [ -z "$(PYTHON311)" ]; then \
	  echo "error: Python 3.11 is required (mxnet 1.9.1 wheels exist only up to 3.11 here)."; \
	  echo "       Install python3.11 and put it on PATH, or run: make PYTHON311=/path/to/python3.11"; \
	  exit 1; fi
	@test -x $(PY) || $(PYTHON311) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23" "setuptools>=65" wheel
	$(PY) -m pip install --quiet -e ".[test,notebooks,federated,encrypted]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	MXPRIVACY_DATA=$(DATA_DIR) $(VENV)/bin/mxprivacy train --dataset mnist --epochs 3

federated-demo: install
	MXPRIVACY_DATA=$(DATA_DIR) $(VENV)/bin/mxprivacy federated-demo --clients 10 --rounds 30

encrypted-demo: install
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) examples/encrypted_inference.py --images 4

test: install
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) -m pytest -q tests

test-fast: install
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) -m pytest -q -m "not slow" tests

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	@touch $@

bench: $(BENCH_STAMP)
	$(PY) benchmarks/accounting.py --json
	$(PY) benchmarks/mechanisms.py --json
	$(PY) benchmarks/audit.py --json
	$(PY) benchmarks/distributed.py --json
	$(PY) benchmarks/federated.py --json
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) benchmarks/encrypted.py --json
	$(PY) benchmarks/kanon.py --data-dir $(DATA_DIR) --json
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) benchmarks/dp_step.py --json
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) benchmarks/mnist_accuracy.py --model mlp --json
	MXPRIVACY_DATA=$(DATA_DIR) $(PY) benchmarks/mnist_accuracy.py --model cnn --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
