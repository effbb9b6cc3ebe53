# The two commands of the README: `make demo` and `make test`.
# Each creates the virtualenv on first use; nothing else needs installing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint install clean

# The library and what the demo needs (no torch: the demo runs the NumPy backend).
$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

# The suite's extras: torch (the torch backend's tests), the HTTP service, pytest, ruff.
$(VENV)/.dev: $(VENV)/.core
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/stream-mtl demo

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two processes (pytest-xdist), each test file in one of them: the suite's integration
# tests wait on brokers, servers and subprocesses much of the time.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache
