# obs-backup: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench soak mutate clean

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

# Side-by-side with GNU tar; BENCH_ARGS="--scale 0.01 --repeats 1" for a quick run.
bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Kill-and-restore soak; SOAK_ARGS="--cycles 10" for a quick run, "--s3" against SeaweedFS,
# "--encrypt" with every backup encrypted to an age recipient.
soak: setup
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

# Mutation testing of the pure and format modules (slow: about an hour and a half);
# MUTATE_ARGS="--modules catalog --max-mutants 20" for a quick look.
mutate: setup
	$(BIN)/python benchmarks/mutate.py $(MUTATE_ARGS)

lint: setup
	$(BIN)/pip install --quiet mypy ruff
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache .hypothesis
