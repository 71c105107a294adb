# Agent Forge mesh — every door users and CI go through.
#
#   make run     set up, bring up the whole mesh on embedded defaults, run the phase pipeline (cognate -> evomerge -> bitnet)
#   make test    set up and run the whole check: stale gen/, buf lint, buf breaking, pytest
#   make up      the mesh in the foreground (Envoy's edge on 127.0.0.1:$(EDGE_PORT)); Ctrl-C stops it
#   make restart SERVICE=<name>  restart one process of the running `make up`
#   make gen     regenerate gen/ from proto/ (Python, Envoy descriptor, the dashboard's TypeScript)
#   make bench   run the benchmarks (figures go to docs/benchmarks.md by hand)
#   make token   ROLE=viewer|trainer|operator|admin [TTL=1h] [SUB=name]: a signed token on stdout
#
# Every target sets up what it needs, idempotently.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EDGE_PORT ?= 8080
export EDGE_PORT
export PYTHONPATH := $(CURDIR):$(CURDIR)/gen/python
# The dashboard (dashboard/): npm packages pinned by its package-lock.json, built by Vite
# into dashboard/dist/, which Envoy serves at the edge's origin (README.md, "Dashboard").
NPM_STAMP := dashboard/node_modules/.installed
DASHBOARD := dashboard/dist/index.html
DASHBOARD_SRC := $(shell find dashboard/src gen/ts -type f 2>/dev/null) dashboard/index.html \
	dashboard/vite.config.ts dashboard/tsconfig.json dashboard/package-lock.json

.PHONY: setup browser loadgen gen check-gen lint breaking test test-fast up run restart bench token revoke secrets clean

setup: $(STAMP) $(NPM_STAMP) $(DASHBOARD) browser

# torch==2.13.0 exactly: that spec takes the CPU wheel on disk here; anything else pulls CUDA.
$(STAMP): requirements.txt requirements/client.txt requirements/server.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	@touch $@

# A node_modules that is a symbolic link (a git worktree sharing another checkout's
# packages) is left alone: npm ci would replace the link's target, emptying the other
# checkout's node_modules while it is in use.
$(NPM_STAMP): dashboard/package.json dashboard/package-lock.json
	@if [ -L dashboard/node_modules ]; then \
	  echo "dashboard/node_modules is a link to $$(readlink dashboard/node_modules): not reinstalled"; \
	else \
	  cd dashboard && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	fi

$(DASHBOARD): $(NPM_STAMP) $(DASHBOARD_SRC)
	cd dashboard && npm run --silent build

# The browser tests drive Debian's chromium through playwright-core (never a browser
# download); installed here when missing and we may (root, apt-get present).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing (apt-get install chromium): the browser tests will fail" >&2; fi; }

# Native HTTP load generators for the edge benchmarks (a Python client saturates before
# Envoy does): Debian's wrk and nghttp2-client (h2load), installed when missing and we may.
loadgen:
	@command -v wrk >/dev/null && command -v h2load >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null; \
	  else echo "wrk/h2load are missing (apt-get install wrk nghttp2-client): REST edge benchmarks skip" >&2; fi; }

gen: $(STAMP) $(NPM_STAMP)
	$(PY) tools/vendor_protos.py --check
	$(VENV)/bin/buf lint
	$(PY) tools/gen.py

check-gen: $(STAMP) $(NPM_STAMP)
	$(PY) tools/vendor_protos.py --check
	$(PY) tools/gen.py --check

lint: $(STAMP)
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check --select F,E9 agentforge services tests tools benchmarks

breaking: $(STAMP)
	tools/breaking.sh

test: setup check-gen lint breaking
	cd dashboard && npm run --silent test
	$(PY) -m pytest -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e"

# Development keys, mesh secret, Valkey password and edge certificate, in .secrets/
# (gitignored; AF_SECRETS_DIR overrides). Created once; never replaced.
secrets: $(STAMP)
	@$(PY) -m services.shared.auth init >/dev/null

ROLE ?=
TTL ?= 1h
SUB ?=
# Only the token goes to stdout (TOKEN=$$(make token ROLE=viewer)): setup talks on stderr.
token:
	@test -n "$(ROLE)" || { echo "usage: make token ROLE=viewer|trainer|operator|admin [TTL=1h] [SUB=name]" >&2; exit 2; }
	@$(MAKE) --no-print-directory setup >&2
	@$(PY) -m services.shared.auth token --role "$(ROLE)" --ttl "$(TTL)" $(if $(SUB),--sub "$(SUB)")

# Revoke one token mesh-wide (through the running edge, as a development admin):
# make revoke JTI=<jti> [EXP=<unix s>]  or  make revoke TOKEN=<token>
revoke: $(STAMP) secrets
	@test -n "$(JTI)$(TOKEN)" || { echo "usage: make revoke JTI=<jti> [EXP=<unix s>] | make revoke TOKEN=<token>" >&2; exit 2; }
	@$(PY) -m services.shared.revocation $(if $(JTI),--jti "$(JTI)") $(if $(EXP),--exp "$(EXP)") $(if $(TOKEN),--token "$(TOKEN)")

up: $(STAMP) $(DASHBOARD) secrets
	$(PY) -m services.launcher up --edge-port $(EDGE_PORT)

run: $(STAMP) $(DASHBOARD) secrets
	$(PY) -m services.launcher run --edge-port $(EDGE_PORT)

# Restart one process of the running `make up`: make restart SERVICE=training
restart: $(STAMP)
	@test -n "$(SERVICE)" || { echo "usage: make restart SERVICE=<service|envoy|valkey>"; exit 2; }
	$(PY) -m services.launcher restart $(SERVICE)

bench: setup loadgen
	$(PY) benchmarks/run_all.py

clean:
	rm -rf .run var .pytest_cache
