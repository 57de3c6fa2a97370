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

# Debian packages the cluster and container tests use: a real SLURM and a real container engine.
SYSTEM_PACKAGES := slurm-wlm munge podman runc mmdebstrap uidmap
SYSTEM_COMMANDS := slurmctld slurmd munged podman runc mmdebstrap

.PHONY: run test lint env system-deps images clean

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

test: env system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

system-deps:
	@missing=$$(for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || echo $$c; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $(SYSTEM_PACKAGES) (missing: $$missing)"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$sudo apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

images:
	containers/build.sh cpu
	containers/build.sh cuda

lint: env
	$(BIN)/ruff check workflow tests benchmarks
	$(BIN)/ruff format --check workflow tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/hadolint containers/*/Dockerfile

clean:
	rm -rf results .snakemake
