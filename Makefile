# Set-up-and-go targets. Everything installs into a local .venv, pinned by requirements.lock.
#   make run          default suite on harness-tiny, ends with the HTML report path
#   make test         the test suite (what .ci/run calls)
#   make lock         re-resolve requirements.lock: the newest releases pyproject.toml allows
#   make test-latest  the tests against the newest allowed releases (.venv-latest; drift check)
# TORCH picks the torch wheel; its version comes from the lock. Default: the CPU build where
# no NVIDIA GPU is visible, the default (CUDA) build where one is. Where the +cpu build
# cannot be found, the plain wheel of the same version is installed, with a notice.
# Override: make test TORCH='torch==2.13.0' TORCH_INDEX='--extra-index-url URL'
PYTHON ?= python3
VENV   ?= .venv
LOCK   := requirements.lock
TORCH_VERSION := $(shell sed -n 's/^torch==\([^ +;]*\).*/\1/p' $(LOCK))
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH ?= torch==$(TORCH_VERSION)
else
TORCH ?= torch==$(TORCH_VERSION)+cpu
endif
TORCH_INDEX ?=
EXTRAS ?= dev,encoder,search,formats
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP = $(1)/bin/python -m pip install -q $(TORCH_INDEX)

# $(call install_torch,VENV): the wanted build, else the plain wheel of the same version.
define install_torch
	$(call PIP,$(1)) "$(TORCH)" 2>/dev/null || { \
	  echo "make: notice: $(TORCH) is not available here; installing torch==$(TORCH_VERSION) (plain wheel; on Linux x86-64 that is the CUDA build)" >&2; \
	  $(call PIP,$(1)) "torch==$(TORCH_VERSION)"; }
endef

.PHONY: run test lint venv lock test-latest clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call PIP,$(VENV)) -c $(LOCK) pip
	$(call install_torch,$(VENV))
	$(call PIP,$(VENV)) -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/harness run --quick

# Two xdist workers with one torch thread each (no oversubscription on 2 cores).
# pytest exit code 5 (no tests collected) is a failure, never a silent pass.
define run_tests
	OMP_NUM_THREADS=1 $(1)/bin/python -m pytest -q -n 2 tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

test: $(STAMP)
	$(call run_tests,$(VENV))

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks suites

# A fresh resolve in a scratch venv: torch stays at TORCH (change it on purpose), every
# other package takes the newest release pyproject.toml allows. Review with git diff.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	$(call install_torch,.venv-lock)
	$(call PIP,.venv-lock) -e ".[$(EXTRAS)]"
	{ echo "# requirements.lock: the tested versions (pip constraints). Regenerate with 'make lock';"; \
	  echo "# torch's local build tag (+cpu) is dropped so the CPU and CUDA builds both satisfy it."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | sed 's/^\(torch==[^+]*\)+.*/\1/' \
	    | grep -v -i '^llm-compression-harness'; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); review with: git diff -- $(LOCK)"

# Scheduled drift check: the newest releases allowed by pyproject.toml, not the lock.
test-latest:
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	$(call install_torch,.venv-latest)
	echo "torch==$(TORCH_VERSION)" > .venv-latest/torch-pin.txt  # torch moves only through TORCH / make lock
	$(call PIP,.venv-latest) -c .venv-latest/torch-pin.txt --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	.venv-latest/bin/python -m pip freeze --exclude-editable | grep -i -E '^(torch|transformers|lm.eval|safetensors|tokenizers)=='
	$(call run_tests,.venv-latest)

clean:
	rm -rf $(VENV) .venv-latest .venv-lock reports/*/

# The GPU path in one call (docs/guide/gpu-check.md). Here, with network: make gpu-wheels, then
# make gpu-check-dry. On the GPU machine (its own python3, no network, no .venv): make gpu-check.
GPU_PYTHON ?= python3
.PHONY: gpu-wheels gpu-check gpu-check-dry

gpu-wheels: $(STAMP)
	$(BIN)/python scripts/gpu_wheels.py

gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py

gpu-check-dry: $(STAMP)
	$(BIN)/python scripts/gpu_check.py --dry
