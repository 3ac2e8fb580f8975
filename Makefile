# The two set-up commands of the README: `make demo` and `make test`.
# Both work on a fresh Debian machine with Python 3.11 as root: they create the virtual
# environment from the hash-locked requirements and install Mosquitto when it is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?= --sim 24
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo test lint typecheck pytest drill bench system-deps lock clean

demo: $(STAMP) system-deps
	$(BIN)/actimesh up $(DEMO_ARGS)

test: $(STAMP) system-deps lint typecheck pytest drill

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/pytest --cov --cov-report=term

drill: $(STAMP) system-deps
	$(BIN)/actimesh drill

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
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --generate-hashes \
		--python-version 3.11 --no-header --output-file requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage
