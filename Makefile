# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
REF_VENV := .venv-fcsparser
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo test check lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

# fcsparser, the reference reader of the tests, needs numpy < 2: it gets an environment of its
# own so that its cap never binds cartflow's runtime (tests/fcsparser_reference.py runs it)
$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet "fcsparser==0.2.8" "numpy<2" "six>=1.16"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/cartflow demo --out $(DEMO_OUT)

test: $(VENV)/.installed-dev $(REF_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# the fast tier for iteration: everything but the tests marked slow (simulated cohorts,
# calibration, killed and concurrent runs); `make test` stays the whole suite
check: $(VENV)/.installed-dev $(REF_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed-dev $(REF_VENV)/.installed
	$(BIN)/python bench/run.py
	$(BIN)/python bench/gating_speed.py
	$(BIN)/python bench/batch_speed.py
	$(BIN)/python bench/report_speed.py

clean:
	rm -rf $(VENV) $(REF_VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
