# The two set-up commands of the README: `make demo` and `make test`.
# Both work on a fresh Debian machine with Python 3.11 as root: they create the virtual
# environment from the hash-locked requirements, install Mosquitto, Chromium and Node.js
# when they are missing, and Leaflet (the map library the dispatch page serves itself)
# from the npm lock file.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# npm ci writes this file last: its age says whether node_modules matches the lock.
WEB_STAMP := node_modules/.package-lock.json
DEMO_ARGS ?= --sim 24
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo test lint typecheck pytest drill soak bench system-deps browser-deps postgres-deps web-deps lock clean

demo: $(STAMP) system-deps web-deps
	@echo "actimesh up $(DEMO_ARGS)"
	@echo "  other ports or a show: make demo DEMO_ARGS='--sim 24 --broker-port 1884 --http-port 8081 --evidence-port 8472 [--busy] [--seed N]' (README: The demo)"
	$(BIN)/actimesh up $(DEMO_ARGS)

test: $(STAMP) system-deps browser-deps postgres-deps web-deps lint typecheck pytest drill

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps browser-deps postgres-deps web-deps
	$(BIN)/pytest --cov --cov-report=term

drill: $(STAMP) system-deps
	$(BIN)/actimesh drill
	$(BIN)/actimesh drill --faults --short

# The suite's determinism check: the tests that start brokers, engines, devices and web
# servers, and both drills, SOAK_ROUNDS times in a row. Every failure counts; the last
# line says how many there were, and the target fails unless there were none.
SOAK_ROUNDS ?= 10
SOAK_TESTS  := tests/integration tests/security tests/triggers tests/dispatch

soak: $(STAMP) system-deps browser-deps web-deps
	@failed=0; \
	for round in $$(seq $(SOAK_ROUNDS)); do \
		echo "soak round $$round of $(SOAK_ROUNDS)"; \
		$(BIN)/pytest -q -p no:cacheprovider $(SOAK_TESTS) || failed=$$((failed + 1)); \
		for policy in inclusive centre; do \
			out=$$($(BIN)/actimesh drill --policy $$policy 2>&1) \
				|| { echo "$$out" | tail -20; failed=$$((failed + 1)); }; \
			echo "$$out" | tail -1; \
		done; \
	done; \
	echo "soak: $$failed failed run(s) in $(SOAK_ROUNDS) rounds"; \
	test $$failed -eq 0

bench: $(STAMP) system-deps
	$(BIN)/actimesh bench

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Debian packages the broker and the tests need; installed only when missing.
system-deps:
	@missing=""; \
	PATH="$$PATH:/usr/sbin:/sbin"; \
	command -v mosquitto >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

# Chromium for the dispatch map's browser test only (`make demo` does not need it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends chromium; \
	}

# PostgreSQL for the ledger-store tests, which start their own server with initdb in a
# temporary folder (`make demo` does not need it: SQLite is the default ledger).
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing postgresql-15"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends postgresql-15; \
	}

# Leaflet for the dispatch map, exactly as package-lock.json pins it (no install scripts).
web-deps: $(WEB_STAMP)

$(WEB_STAMP): package.json package-lock.json | system-deps
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --extra bench --extra postgres --extra cluster --generate-hashes \
		--python-version 3.11 --no-header --output-file requirements.lock

clean:
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache .coverage
