# Two commands: `make run` and `make test`. Both set up `.venv` first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# The main job on its defaults: 5 nodes, kv workload, every nemesis, the cutover a third
# of the way in; about a minute. Exit code: 0 valid, 1 invalid, 2 unknown.
run: install
	$(BIN)/cutover run

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/cutover bench checker

clean:
	rm -rf $(VENV) build *.egg-info
