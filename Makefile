# Every target bootstraps .venv itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test server bench lint clean

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

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

server: $(BIN)/flotilla
	PREFECT_SERVER_API_HOST=127.0.0.1 $(BIN)/prefect server start --host 127.0.0.1

bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks.makespan
	$(BIN)/python -m benchmarks.merge

clean:
	rm -rf $(VENV) .flotilla build *.egg-info
