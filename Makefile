# The two commands a newcomer types: `make demo` and `make test`.
# Each sets up what it needs first (a venv in .venv, checkov in .venv-checkov).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .venv-checkov

.PHONY: demo test setup browser bench clean

demo: setup
	$(BIN)/pitstop demo

# Three workers, a test file each (module fixtures stay together; one pair of emulators, a project per worker):
# most tests wait on emulators, ticks, processes and the local stack, so three share 2 cores well
# (5:43 for 1,000 tests on the reference machine, against about 8 minutes with two; four workers took longer).
test: setup browser $(CHECKOV_VENV)/bin/checkov
	CHECKOV_BIN=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest -n 3 --dist loadfile

bench: setup
	$(BIN)/python bench/rollback_reaction.py

setup: $(BIN)/.installed

# The dashboard's browser test drives Debian's chromium through its chromedriver (no browser download).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && [ -d /usr/share/fonts/truetype/noto ] || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji >/dev/null; } || \
	  echo "warning: chromium and chromium-driver are not installed (sudo apt-get install chromium chromium-driver); the dashboard's browser test will fail"

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
