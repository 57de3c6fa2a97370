# Two commands: `make run` builds the default targets, `make test` runs the tests.
# Both create the environment from the lock first (once; again when the lock changes).

PYTHON ?= python3.11
VENV ?= .venv
LOCK := envs/jax.lock.txt
CORES ?= all
TARGETS ?=
PYTEST_ARGS ?=
# Extra pip options, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# where torch's CPU wheel is not on a local find-links path.
PIP_ARGS ?=

BIN := $(VENV)/bin
ENV_STAMP := $(VENV)/.installed-$(shell sha256sum $(LOCK) pyproject.toml | sha256sum | cut -c1-16)

.PHONY: run test lint env clean

env: $(ENV_STAMP)

$(ENV_STAMP): $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps $(PIP_ARGS) -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: env
	$(BIN)/snakemake --cores $(CORES) $(TARGETS)
	@echo "Reports: $$(ls results/*/*/parity/*/report.md)"

test: env lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: env
	$(BIN)/ruff check workflow tests benchmarks 2>/dev/null || $(BIN)/ruff check workflow tests
	$(BIN)/ruff format --check workflow tests
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results .snakemake
