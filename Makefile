# make run   - set up and start one server on the embedded default (SQLite, in-process)
# make test  - set up and run lint, types and the whole test suite
# make lint  - ruff and mypy only
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test lint setup setup-test token env clean

$(BIN)/.installed: requirements.txt requirements-dev.txt requirements-bench.txt
	./scripts/system-packages run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

setup-test: setup
	./scripts/system-packages test

data/dev.env:
	@./scripts/dev-env >/dev/null

run: setup data/dev.env
	. data/dev.env && exec $(BIN)/python -m realtime serve --config $(CONFIG)

# make token ID=alice [ROOM=swap:1]: a token signed with the dev secret
token: setup data/dev.env
	@. data/dev.env && $(BIN)/python -m realtime token $(ID) $(if $(ROOM),--room $(ROOM)) --config $(CONFIG)

# eval "$$(make -s env)": the dev secret and service key in your shell
env: data/dev.env
	@cat data/dev.env

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup-test lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
