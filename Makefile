# Two commands on a fresh machine:  make dev  (set up, then run everything)  ·  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: pinned here, before the project, so nothing pulls a multi-GB CUDA build.
# On a GPU/NPU machine, install the torch build for it first (see README), or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
PORT ?= 8000

.PHONY: dev test test-fast lint typecheck check clean deploy-check chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

dev: $(BIN)/.installed
	$(BIN)/wanserve dev --port $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# Everything: lint, types, the deployment files and every tier (unit, integration, e2e, distributed), slow
# tests included (tests/deploy runs once, under deploy-check).
test: deploy-check lint typecheck chromium
	$(BIN)/python -m pytest -q --ignore=tests/deploy

# The browser the web page's tests drive (tests/browser.py): Debian's Chromium at /usr/bin/chromium, through
# Playwright (whose own browser download cannot work offline). Installed with apt-get when missing, as root.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "chromium: /usr/bin/chromium is missing: install Debian's chromium as root (apt-get install chromium)" >&2; \
	    exit 1; \
	  fi; }

# The unit and integration tiers without what trains or runs long: the loop while changing code.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/integration

# The container and cluster files, checked without a Docker engine or a cluster (deploy/README.md, "What is
# checked"): hadolint, `docker-compose config` of every combination, `kubectl kustomize` of every overlay
# with kubernetes-validate (strict) and KEDA's CRD schema, and tests/deploy's assertions. kubectl (with its
# kustomize) comes with the machine image; elsewhere install it, or point KUBECTL at one.
# docker-compose 1.29.2 lives in its own virtualenv: it needs PyYAML 5.4, whose build needs Cython < 3.
COMPOSE_VENV ?= $(VENV)-compose
KUBECTL ?= kubectl

$(COMPOSE_VENV)/.installed: tests/deploy/compose-requirements.txt
	$(PYTHON) -m venv $(COMPOSE_VENV)
	$(COMPOSE_VENV)/bin/python -m pip install --quiet "cython<3" wheel "setuptools<70"
	$(COMPOSE_VENV)/bin/python -m pip install --quiet --no-build-isolation -r tests/deploy/compose-requirements.txt
	touch $@

deploy-check: $(BIN)/.installed $(COMPOSE_VENV)/.installed
	@command -v $(KUBECTL) >/dev/null || { echo "deploy-check: '$(KUBECTL)' not found: install kubectl (it carries kustomize) or set KUBECTL=/path/to/kubectl" >&2; exit 1; }
	DEPLOY_CHECK_STRICT=1 KUBECTL=$(KUBECTL) COMPOSE=$(COMPOSE_VENV)/bin/docker-compose \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy

clean:
	rm -rf $(VENV) $(COMPOSE_VENV) .pytest_cache .mypy_cache .ruff_cache
