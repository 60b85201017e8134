# Set-up-and-go targets. Everything installs into a local .venv.
#   make run    default suite on harness-tiny, ends with the HTML report path
#   make test   the test suite
# TORCH picks the torch wheel. Default: the CPU build where no NVIDIA GPU is visible,
# the default (CUDA) build where one is. Override: make run TORCH='torch==2.5.1'
# Where the +cpu wheel is not in a local wheel cache, add its index:
#   make test TORCH_INDEX='--extra-index-url https://download.pytorch.org/whl/cpu'
PYTHON ?= python3
VENV   ?= .venv
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH ?= torch>=2.4
TORCH_INDEX ?=
else
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?=
endif
EXTRAS ?= dev,encoder
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INDEX) --find-links /opt/wheels "$(TORCH)"
	$(BIN)/python -m pip install -q $(TORCH_INDEX) --find-links /opt/wheels -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/harness run --quick

# Two xdist workers with one torch thread each (no oversubscription on 2 cores).
# pytest exit code 5 (no tests collected) is a failure, never a silent pass.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks suites

clean:
	rm -rf $(VENV) reports/*/
