# agentgate developer entry points. Every target bootstraps what it needs (idempotent, cached in
# .venv/ and .tools/), so a fresh clone only needs python3, go and apt (for redis-server).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

BOOTSTRAP := bash scripts/bootstrap.sh
VENV := .venv
PY := $(VENV)/bin/python
# Pinned tools (opa, regal, jaeger, redis-server) come first for every recipe and for pytest.
export PATH := $(CURDIR)/.tools/bin:$(PATH)

PYTEST_ARGS ?=
CONFIG ?= config/gateway.yaml
IMAGE ?= agentgate:dev

.PHONY: help install tools jaeger bootstrap test lint lint-python lint-docker lint-rego \
	demo bench check-config schema image clean distclean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: ## python venv with the package (editable) and dev tools
	@$(BOOTSTRAP) python

tools: ## OPA, Regal, redis-server, Jaeger (into .tools/)
	@$(BOOTSTRAP) tools

jaeger: ## only Jaeger v2 (slow first build)
	@$(BOOTSTRAP) jaeger

bootstrap: ## everything: install + tools
	@$(BOOTSTRAP) all

# pytest exit 5 means "no tests collected": that is a failure here, like any non-zero exit.
test: bootstrap ## run the test suite (PYTEST_ARGS=... passes through)
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc -eq 5 ]]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	if [[ $$rc -ne 0 ]]; then exit $$rc; fi
	@if [[ -d policies ]] && find policies -name '*_test.rego' -print -quit | grep -q .; then \
		echo "+ opa test policies/"; opa test policies/; fi

lint: lint-python lint-docker lint-rego ## ruff, mypy --strict, import-linter layers, hadolint, opa fmt/check, regal

# Each linter runs even if an earlier one failed; the target fails if any did.
lint-python: install
	@rc=0; for cmd in "ruff check ." "ruff format --check ." "mypy --strict gateway/" "lint-imports"; do \
		echo "+ $$cmd"; $(VENV)/bin/$$cmd || rc=1; done; \
	echo "+ agentgate config-schema | diff config/gateway.schema.json -"; \
	$(VENV)/bin/agentgate config-schema | diff -u config/gateway.schema.json - \
		|| { echo "lint: config/gateway.schema.json is stale: run make schema" >&2; rc=1; }; \
	exit $$rc

schema: install ## regenerate config/gateway.schema.json from the settings models
	$(VENV)/bin/agentgate config-schema > config/gateway.schema.json

lint-docker: install
	$(VENV)/bin/hadolint Dockerfile

lint-rego:
	@if [[ ! -d policies ]] || ! find policies -name '*.rego' -print -quit | grep -q .; then \
		echo "lint-rego: no .rego files under policies/, skipping"; exit 0; fi; \
	$(BOOTSTRAP) opa regal; rc=0; \
	for cmd in "opa fmt --diff --fail policies/" "opa check policies/"; do \
		echo "+ $$cmd"; $$cmd || rc=1; done; \
	if command -v regal >/dev/null; then echo "+ regal lint policies/"; regal lint policies/ || rc=1; \
	else echo "lint-rego: WARNING regal not installed, 'regal lint' skipped" >&2; fi; \
	exit $$rc

demo: install ## self-contained tour (agentgate demo)
	$(VENV)/bin/agentgate demo

bench: bootstrap ## benchmarks (bench/run.py, or python -m bench)
	@if [[ -f bench/run.py ]]; then set -x; $(PY) bench/run.py; \
	elif [[ -f bench/__main__.py ]]; then set -x; $(PY) -m bench; \
	else echo "make bench: no bench/run.py or bench/__main__.py yet" >&2; exit 1; fi

.PHONY: soak
SOAK_ARGS ?=
soak: bootstrap ## full pipeline at 100 req/s for 3 min under injected faults (SOAK_ARGS=--smoke: 20 s)
	$(PY) bench/soak.py $(SOAK_ARGS)

# The long fuzzing run (README "Fuzzing"): every fuzzer of tests/fuzz with FUZZ_SCALE times its
# CI example count, then ATHERIS_SECONDS of coverage-guided (atheris/libFuzzer) input per
# fixture-free fuzzer. Each phase has a hard time limit; the whole target stays under 10 min.
.PHONY: fuzz
FUZZ_SCALE ?= 8
ATHERIS_SECONDS ?= 8
fuzz: install ## long fuzzing run, <= 10 min (FUZZ_SCALE=8, ATHERIS_SECONDS=8)
	@echo "+ HYPOTHESIS_PROFILE=fuzz FUZZ_SCALE=$(FUZZ_SCALE) pytest tests/fuzz"
	@HYPOTHESIS_PROFILE=fuzz FUZZ_SCALE=$(FUZZ_SCALE) timeout 360 \
		$(PY) -m pytest tests/fuzz -q --durations=0 $(PYTEST_ARGS) || { rc=$$?; \
		if [[ $$rc -eq 124 ]]; then echo "make fuzz: over 360 s: lower FUZZ_SCALE" >&2; fi; \
		exit $$rc; }
	@$(PY) -c 'import atheris' 2>/dev/null || $(VENV)/bin/pip install -q 'atheris>=2.3' || \
		echo "make fuzz: atheris does not install here; coverage-guided pass skipped" >&2
	@if $(PY) -c 'import atheris' 2>/dev/null; then \
		echo "+ ATHERIS_SECONDS=$(ATHERIS_SECONDS) python -m tests.fuzz.atheris_driver"; \
		ATHERIS_SECONDS=$(ATHERIS_SECONDS) timeout 220 $(PY) -m tests.fuzz.atheris_driver; fi

check-config: install ## validate CONFIG (default config/gateway.yaml)
	$(VENV)/bin/agentgate check-config -c $(CONFIG)

image: ## docker build (needs a Docker engine; nothing else depends on it)
	docker build -t $(IMAGE) .

clean: ## build outputs and caches (keeps .venv/ and .tools/)
	rm -rf build/ dist/ ./*.egg-info .demo/ bench/out/ .coverage \
		.pytest_cache/ .mypy_cache/ .ruff_cache/
	find . -path ./.venv -prune -o -path ./.tools -prune -o -path ./.git -prune -o \
		-name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean ## also remove .venv/ and .tools/
	rm -rf $(VENV) .tools/
