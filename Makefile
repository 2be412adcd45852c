# The single list of commands. `make` (or `make help`) lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: help venv up demo check test unit integration e2e chaos bench bench-interactive bench-ingest bench-scale smoke-live docs lock lint clean distclean

help: ## list the commands
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-18s %s\n", $$1, $$2}'
	@echo "  (pass pytest options with ARGS=..., e.g. make unit ARGS='-k ratelimit')"

venv: $(STAMP) ## create .venv (Python >= 3.11), install functions/requirements.txt (the hashed lock), requirements.txt and the imagefleet CLI; again only when one of them changes

# The functions' lock first, hashes checked, exactly as the deploy installs it; then the tools
# (pip refuses a file that mixes hashed and unhashed lines, so they are two installs).
$(STAMP): requirements.txt functions/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required; run e.g. 'make $(MAKECMDGOALS) PYTHON=python3.11'" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r functions/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

up: venv ## run the local stack (emulators + functions) in the foreground; Ctrl-C stops it
	$(PY) -m infra.local up

demo: venv ## start a fresh local stack and run the demo against it
	$(PY) -m infra.local demo

check: venv ## check the prerequisites of the local stack (Java, gcloud emulators)
	$(PY) -m infra.local check

test: venv ## all tests: unit, integration and e2e (starts the emulators it needs)
	$(PY) -m pytest $(ARGS)

unit: venv ## unit tests only (no network, starts nothing)
	$(PY) -m pytest tests/unit $(ARGS)

integration: venv ## adapters against the emulators
	$(PY) -m pytest tests/integration $(ARGS)

e2e: venv ## the functions under functions-framework, fed by a Pub/Sub push subscription
	$(PY) -m pytest tests/e2e $(ARGS)

chaos: venv ## the fault matrix: one line per scenario (items, faults injected, lost, duplicated, wall time)
	$(PY) -m pytest tests/e2e/test_fault_matrix.py -q -p no:randomly $(ARGS)

bench: bench-interactive bench-ingest ## all benchmarks

bench-interactive: venv ## interactive lane at 10, 60, 300 and 1,000 requests/min: share of the quota, lost, duplicated, limiter cost (ARGS=--check)
	$(PY) tests/bench/bench_interactive.py $(ARGS)

bench-ingest: venv ## batch lane: accepting 10,000 prompts; ingesting 200 MB and 1 GB results files
	$(PY) tests/bench/bench_ingest.py $(ARGS)

bench-scale: venv ## one 100,000-prompt job through the whole local stack: time to 202, to every item, to every image; peak RSS; Firestore ops per image; lost, duplicated; the acceptance curve (ARGS=--check, --prompts N, --no-images)
	$(PY) tests/bench/bench_scale.py $(ARGS)

smoke-live: venv ## two images (SMOKE_BATCH=1: and a two-line batch) against the REAL Gemini API with GEMINI_API_KEY; costs money; never in CI
	$(PY) tools/smoke_live.py

docs: venv ## regenerate docs/configuration.md (from functions/config.py) and openapi.json (from the pydantic models)
	$(PY) tools/gen_config_doc.py
	$(PY) functions/openapi.py > openapi.json

# pip-tools compiles the lock; in its own venv so its pip pins never touch .venv.
PIP_TOOLS_VENV ?= $(VENV)/pip-tools

lock: ## compile functions/requirements.in into functions/requirements.txt (every dependency pinned, with hashes)
	@test -x $(PIP_TOOLS_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(PIP_TOOLS_VENV) && \
		$(PIP_TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip-tools==7.6.2; }
	cd functions && ../$(PIP_TOOLS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file=requirements.txt requirements.in

# checkov cannot share .venv (infra/terraform/requirements-checkov.txt says why): its own venv.
CHECKOV_VENV ?= $(VENV)/checkov

$(CHECKOV_VENV)/.installed: infra/terraform/requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/terraform/requirements-checkov.txt
	@touch $@

lint: venv $(CHECKOV_VENV)/.installed ## ruff and mypy (zero findings); byte-compile everything; terraform fmt -check (when terraform is installed); checkov on infra/terraform
	$(PY) -m ruff check functions imagefleet infra tools
	$(PY) -m mypy functions imagefleet infra
	$(PY) -m compileall -q functions imagefleet infra tests
	@if command -v terraform >/dev/null; then terraform fmt -check -recursive infra/terraform; \
		else echo "terraform not installed: skipping terraform fmt -check"; fi
	$(CHECKOV_VENV)/bin/checkov -d infra/terraform --quiet --compact --framework terraform --skip-download

clean: ## remove the local stack's state and logs, caches and outputs (keeps .venv)
	rm -rf .local-stack out .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
