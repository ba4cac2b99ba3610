# Two entry points: `make demo` (set up, then run the main job) and `make test` (set up, then run the suite).
# Both are safe to run again: set-up only redoes what is missing or out of date.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmodal-installed
DEMO_DATA ?= data/shapes-demo
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: setup system system-test demo test lint screenshots

setup: system $(STAMP)

system:
	@bash scripts/install-system-deps.sh

# The browser test drives the system's headless Chromium; no browser is downloaded.
system-test:
	@bash scripts/install-system-deps.sh --browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,scale]'
	touch $@

demo: setup
	test -f $(DEMO_DATA)/dataset.json || $(BIN)/mmodal data shapes --out $(DEMO_DATA) --n 500 --seed 0 --split test --speech
	# An index made by an earlier shipped model refuses the new one; the demo's own index is then made afresh.
	$(BIN)/mmodal index $(DEMO_DATA)/images --index $(DEMO_DATA)/index || \
		{ rm -rf $(DEMO_DATA)/index && $(BIN)/mmodal index $(DEMO_DATA)/images --index $(DEMO_DATA)/index; }
	$(BIN)/mmodal serve --index $(DEMO_DATA)/index --host $(HOST) --port $(PORT)

test: system-test $(STAMP)
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The README's screenshots, taken by the browser test as it drives the app; its collection lies in /tmp/photos
# so the paths the page shows read as a user's would.
screenshots: system-test $(STAMP)
	MMODAL_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/test_browser.py --basetemp=/tmp/photos
