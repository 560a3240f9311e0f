# The two commands a newcomer types: `make demo` and `make test`.
# Each sets up what it needs first (a venv in .venv, checkov in .venv-checkov).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .venv-checkov

.PHONY: demo test setup bench clean

demo: setup
	$(BIN)/pitstop demo

# Three workers, a test file each (module fixtures stay together; each worker starts its own emulators):
# most tests wait on emulators, ticks, processes and the local stack, so three share 2 cores well
# (4:38 on the reference machine, against about 8 minutes with two).
test: setup $(CHECKOV_VENV)/bin/checkov
	CHECKOV_BIN=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest -n 3 --dist loadfile

bench: setup
	$(BIN)/python bench/rollback_reaction.py

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pitstop build
