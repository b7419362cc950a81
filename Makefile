# obs-backup: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-tools.sh
	scripts/install-system-tools.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/pip install --quiet mypy ruff
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache .hypothesis
