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

run: install
	@echo "Checking examples/register-ok.edn (a Jepsen cas-register history) for linearizability:"
	$(BIN)/cutover lin examples/register-ok.edn --format jepsen-edn

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/cutover bench checker

clean:
	rm -rf $(VENV) build *.egg-info
