# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test fuzz lint format bench-catalog clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/dramaverse migrate
	$(BIN)/dramaverse seed --sample --if-empty
	$(BIN)/dramaverse serve

# The npm socket.io-client the Socket.IO tests drive (pinned by tests/node/package-lock.json).
# Without npm (or without network) those tests skip with a reason; CI requires them.
NODE_DIR := tests/node
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error && touch $@ \
		|| echo "warning: npm ci failed; the Socket.IO client tests will skip"; \
	else \
		echo "warning: npm not found; the Socket.IO client tests will skip"; \
	fi

test: $(VENV)/.installed-dev $(NODE_DIR)/node_modules/.installed
	$(BIN)/pytest --cov=dramaverse --cov-branch --cov-report=term:skip-covered

# The property-based fuzz targets (tests/test_fuzz_*.py) with many more examples than `make test`
# runs; FUZZ_EXAMPLES overrides the count.
FUZZ_EXAMPLES ?= 1000
fuzz: $(VENV)/.installed-dev $(NODE_DIR)/node_modules/.installed
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider tests/test_fuzz_*.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-catalog: $(VENV)/.installed-dev
	$(BIN)/python -m bench.catalog_bench --sizes 20000,100000 --json-out bench/results/catalog.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
