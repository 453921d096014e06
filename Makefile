# Two entry points: `make demo` and `make test`. Both create .venv if needed and install the
# project into it (idempotent: re-installs only when pyproject.toml changes).
#
# TORCH pins the torch build. 2.13.0 is a CPU build on the project's CI machines (pip finds it
# locally) and a regular PyPI release elsewhere; override e.g. `make test TORCH=torch` to take the
# newest, or `TORCH="torch==2.14.1"` for a CUDA build.

SHELL := /bin/bash
# the first interpreter that actually runs and is >= 3.11 (a version-manager shim may exist but fail)
PYTHON ?= $(shell for p in python3 python3.12 python3.11; do $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.attncraft-installed
DEMO_OUT ?= outputs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: demo demo-picture test install clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: attncraft needs Python >= 3.11; install it or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# The X-Mesh step of the demo: the default torus painted from "a red torus", guided by the embedded
# Shapes CLIP at its 64 pixels (the convergence measurement of benchmarks/RESULTS.md uses 64 px and lr 0.002
# too, 5 views and 150 iterations; no geometry loss: the prompt is about colour).
MESH_DEMO = $(BIN)/attncraft mesh stylize "a red torus" --iterations 100 --resolution 64 --views 4 --lr 0.002 --no-geoloss

# The main job (text-to-image with the embedded Shapes SD), a short Shapes video (once the Shapes motion
# adapter is in assets/models/shapes-motion), then the X-Mesh stylization.
demo: $(STAMP)
	$(BIN)/attncraft image "a red circle on the left and a blue square on the right" --count 4 --seed 0 --out $(DEMO_OUT)
	@if [ -f assets/models/shapes-motion/config.json ]; then \
		$(BIN)/attncraft video "a big red circle on the left moves right, on a gray background" --seed 0 --format gif \
			--out $(DEMO_OUT)/video && echo "demo video (GIF, its contact sheet and sidecar): $(DEMO_OUT)/video/"; \
	else \
		echo "skipping the demo video: the Shapes motion adapter (assets/models/shapes-motion) is not trained yet"; \
	fi
	$(MESH_DEMO) --turntable gif --frames 24 --out $(DEMO_OUT)/mesh
	@echo "demo outputs are in $(DEMO_OUT)/"

# Regenerates the README's picture of the mesh demo (its contact sheet: 24 fixed views).
demo-picture: $(STAMP)
	rm -rf outputs/demo-picture
	$(MESH_DEMO) --turntable none --formats ply --out outputs/demo-picture
	mkdir -p docs/images && cp "$$(find outputs/demo-picture -name '*_views.png' | head -n 1)" docs/images/xmesh-red-torus.png

# The suite runs in parallel worker processes, one per core (at most TEST_WORKERS): each test holds
# torch to one thread (tests/conftest.py), so two workers on a 2-core machine halve the wall time
# without oversubscribing. `make test TEST_WORKERS=1` still forks one worker; plain `pytest` is serial.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses $(TEST_WORKERS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
