# The README's commands, in a newcomer's order: `make up` starts the embedded platform, `make smoke` walks a
# newcomer's first minutes through it, `make down` stops it, `make test` runs every test (`make test-fast`: the
# unit tier). Each installs what it needs itself; .ci/run runs them in that order.

PYTHON ?= python3
VENV := .venv
CUBELAB := $(VENV)/bin/cubelab
PIP := $(VENV)/bin/pip --disable-pip-version-check -q

.PHONY: up down status smoke test test-fast lint prereqs bench clean

prereqs:
	@$(PYTHON) deploy/cubelab/prereqs.py

# The control plane, installed editable so `.venv/bin/cubelab` follows the source, with deploy/pyproject.toml's
# own dependencies only: the check runs the command itself, which fails if it imports anything else.
$(VENV)/.installed: deploy/pyproject.toml | prereqs
	@echo "[cubelab] installing the control plane into $(VENV)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -e deploy 2>&1 | grep -v "is ignored: it is neither" || true
	@$(CUBELAB) --help >/dev/null && touch $@

# Test and benchmark dependencies (mlflow client, xarray, zarr, scikit-learn, pytest, Playwright) on top, with
# uv (cubelab's dependency; with this machine's pip sources) since pip takes minutes to resolve them,
# Debian's Chromium for the browser tests, podman/runc/debootstrap for the image tests (as root), helm and
# the compose specification's schema for the deployment tests.
$(VENV)/.installed-test: $(VENV)/.installed deploy/pyproject.toml kernels/toolkit/pyproject.toml deploy/requirements/constraints.txt
	@$(PYTHON) deploy/cubelab/prereqs.py --for-tests
	@echo "[cubelab] installing test dependencies and the in-kernel toolkit into $(VENV)"
	@$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python $$($(VENV)/bin/python -m cubelab.locks --sources) \
		-c deploy/requirements/constraints.txt -e 'deploy[test]' -e kernels/toolkit
	@$(VENV)/bin/python deploy/cubelab/prereqs.py --tools $(VENV)/tools
	@$(VENV)/bin/python -c "import mlflow, pytest, xarray, zarr, sklearn, cubelab_toolkit, testcontainers" && touch $@

up: $(VENV)/.installed
	@$(CUBELAB) up

down: $(VENV)/.installed
	@$(CUBELAB) down

status: $(VENV)/.installed
	@$(CUBELAB) status

# A newcomer's first minutes against the stack of `make up` (cubelab/smoke.py), each step with its time.
smoke: $(VENV)/.installed
	@$(CUBELAB) smoke

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check deploy platform_tests kernels benchmarks images conftest.py
	$(VENV)/bin/ruff format --check --exclude "*.ipynb" deploy platform_tests kernels benchmarks images conftest.py

# The test suite starts its own stacks (own state dirs, free ports) and stops them afterwards.
test: $(VENV)/.installed-test lint
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup --durations=30

# The unit tier: no stack, no image, no browser (pytest -m "not stack and not containers and not browser").
test-fast: $(VENV)/.installed-test lint
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -m "not stack and not containers and not browser" --durations=10

bench: $(VENV)/.installed-test
	$(VENV)/bin/python benchmarks/bench_platform.py --json benchmarks/results.json
	$(VENV)/bin/python benchmarks/bench_hub.py --json benchmarks/results-hub.json
	$(VENV)/bin/python benchmarks/bench_toolkit.py --json benchmarks/results-toolkit.json

clean: down
	rm -rf .cubelab $(VENV)
