# Two entry points: `make demo` and `make test`. Both create .venv if needed and install the
# project into it (idempotent: re-installs only when pyproject.toml changes).
#
# TORCH pins the torch build. 2.13.0 is a CPU build on the project's CI machines (pip finds it
# locally) and a regular PyPI release elsewhere; override e.g. `make test TORCH=torch` to take the
# newest, or `TORCH="torch==2.14.1"` for a CUDA build.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.attncraft-installed
DEMO_OUT ?= outputs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test install clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "attncraft needs Python >= 3.11 (found " + sys.version.split()[0] + ")"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attncraft image "a red circle on the left and a blue square on the right" --count 4 --seed 0 --out $(DEMO_OUT)
	@echo "demo outputs are in $(DEMO_OUT)/"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
