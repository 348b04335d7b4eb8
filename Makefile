# Two commands: `make run` and `make test`; `make check` is the fast tier of the tests, the
# first thing to run while editing. Each sets up `.venv` first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q

# The tiers (docs/testing.md, markers in pyproject.toml). The fast tier is every test with
# none of the heavy markers; `slow` stays out of both (run it with `pytest -m slow`).
HEAVY := real or sim or dask or browser or stress
FAST_TIER := not ($(HEAVY) or slow)
REST_TIER := ($(HEAVY)) and not slow
# FAILFAST=1 stops at the first failure (pytest -x; `make test` then skips the heavy tier
# when the fast one fails). ARGS is passed on to pytest, e.g. ARGS='-k corpus --durations=10'.
ifneq ($(FAILFAST),)
PYTEST += -x
endif

.PHONY: install run test check lint bench clean

install: $(STAMP)

# The install compiles the checker's hot modules with mypyc (setup.py; docs/checker.md,
# "The compiled path"), so it runs again when they change; it says which path the
# checker will run (compiled, or pure Python and why). A module edited since is never run
# compiled anyway: `checker._native` compares its source hash and falls back.
COMPILED_SRC := setup.py checker/lin_search.py checker/models.py checker/lin_refute.py

$(STAMP): pyproject.toml $(COMPILED_SRC)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@$(BIN)/python -c 'import checker._native as n; print("checker:", n.status())'
	@touch $(STAMP)

# The main job on its defaults: `cutover hunt` (60 s of simulated search, then real
# processes for what it found and for the rarest states it reached; README, "Why `make
# run` is a hunt"). Exit code: 0 nothing found, 1 a finding, 2 nothing judged, 3 harness.
run: install
	$(BIN)/cutover hunt

lint: install
	$(BIN)/ruff check .

# ruff, then the tests that start no node, switchboard, simulated run, Dask cluster or
# browser, and no stress test: under 2 minutes on two cores.
check: lint
	$(PYTEST) -m '$(FAST_TIER)' $(ARGS)

# The whole suite but `slow` (about 10 minutes on two cores): ruff, the fast tier first
# (its failures show at once), then the rest; each test runs once. It fails if either tier
# failed (a tier that ARGS leaves empty, pytest's exit 5, is not a failure).
test: lint
	@status=0; \
	for tier in '$(FAST_TIER)' '$(REST_TIER)'; do \
	    echo "$(PYTEST) -m '$$tier' $(ARGS)"; \
	    $(PYTEST) -m "$$tier" $(ARGS) || { rc=$$?; [ $$rc -eq 5 ] || status=$$rc; }; \
	    if [ $$status -ne 0 ] && [ -n '$(FAILFAST)' ]; then exit $$status; fi; \
	done; \
	exit $$status

bench: install
	$(BIN)/cutover bench checker

clean:
	rm -rf $(VENV) build *.egg-info *.so checker/*.so
