# make run   - install the runtime dependencies and start one server on the embedded
#              default (SQLite, in-process)
# make test  - install the development tools too and run lint, types and the whole suite
# make lint  - ruff and mypy only
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test lint setup setup-dev setup-test token env clean

# Runtime: the server's dependencies only, all that `make run` needs.
$(BIN)/.runtime: requirements.txt
	./scripts/system-packages run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

# Development: the runtime plus test, lint, type and benchmark tools.
$(BIN)/.dev: $(BIN)/.runtime requirements-dev.txt requirements-bench.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(BIN)/.runtime

setup-dev: $(BIN)/.dev

setup-test: setup-dev
	./scripts/system-packages test

data/dev.env:
	@./scripts/dev-env >/dev/null

# The demo page at /demo/ is on here (DEMO=false turns it off): docs/demo.md.
DEMO ?= true

run: setup data/dev.env
	. data/dev.env && REALTIME_DEMO_ENABLED=$(DEMO) exec $(BIN)/python -m realtime serve --config $(CONFIG)

# make token ID=alice [ROOM=swap:1]: a token signed with the dev secret
token: setup data/dev.env
	@. data/dev.env && $(BIN)/python -m realtime token $(ID) $(if $(ROOM),--room $(ROOM)) --config $(CONFIG)

# eval "$$(make -s env)": the dev secret and service key in your shell
env: data/dev.env
	@cat data/dev.env

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup-test lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
