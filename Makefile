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
INDEX := results/index.html

BIN := $(VENV)/bin
# pip's log in the venv; on failure shown without the warning it prints for every package about
# a local index folder that does not exist on this kind of machine.
QUIET_PIP_LOG := grep -v "^WARNING: Location"
ENV_STAMP := $(VENV)/.installed-$(shell sha256sum $(LOCK) pyproject.toml | sha256sum | cut -c1-16)

# The maxtext environment (MaxText, TensorFlow, ...) runs only the maxtext family's jobs; it
# needs Python >= 3.12 (pyenv's where there is one).
MAXTEXT_PYTHON ?= $(shell ls -d $$HOME/.pyenv/versions/3.12.*/bin/python 2>/dev/null | tail -1 || command -v python3.12)
MAXTEXT_VENV := .venv-maxtext
MAXTEXT_LOCK := envs/maxtext.lock.txt
MAXTEXT_STAMP := $(MAXTEXT_VENV)/.installed-$(shell sha256sum $(MAXTEXT_LOCK) pyproject.toml | sha256sum | cut -c1-16)

# Debian packages the cluster and container tests use: a real SLURM and a real container engine;
# and a real browser, which renders the HTML reports in a test.
SYSTEM_PACKAGES := slurm-wlm munge podman runc mmdebstrap uidmap chromium
SYSTEM_COMMANDS := slurmctld slurmd munged podman runc mmdebstrap chromium

.PHONY: run test lint env env-maxtext system-deps images clean

env: $(ENV_STAMP)

$(ENV_STAMP): $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps $(PIP_ARGS) -r $(LOCK) \
	  > $(VENV)/pip.log 2>&1 || { $(QUIET_PIP_LOG) $(VENV)/pip.log; exit 1; }
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	echo jax.lock.txt > $(VENV)/onnxforge-lock
	touch $@

env-maxtext: $(MAXTEXT_STAMP)

$(MAXTEXT_STAMP): $(MAXTEXT_LOCK) pyproject.toml
	@test -x "$(MAXTEXT_PYTHON)" || { echo "maxtext needs Python >= 3.12: set MAXTEXT_PYTHON"; exit 1; }
	rm -rf $(MAXTEXT_VENV)
	$(MAXTEXT_PYTHON) -m venv $(MAXTEXT_VENV)
	$(MAXTEXT_VENV)/bin/pip install --quiet --require-hashes --no-deps $(PIP_ARGS) \
	  -r $(MAXTEXT_LOCK) > $(MAXTEXT_VENV)/pip.log 2>&1 \
	  || { $(QUIET_PIP_LOG) $(MAXTEXT_VENV)/pip.log; exit 1; }
	$(MAXTEXT_VENV)/bin/python -c "import maxtext, jax2onnx, onnxruntime, torch, transformers"
	$(MAXTEXT_VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	echo maxtext.lock.txt > $(MAXTEXT_VENV)/onnxforge-lock
	touch $@

# The environments the chosen targets need (all of config.yaml's `targets` by default).
NEEDED_ENVS = $(shell $(BIN)/python -m onnxforge environments $(TARGETS))

# Every target is tried (--keep-going); then results/index.html lists every target built (rule
# summary; with TARGETS, the same command the rule runs), and its path is the last line.
run: env
	$(if $(filter maxtext,$(NEEDED_ENVS)),$(MAKE) env-maxtext)
	@status=0; \
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --keep-going $(TARGETS) || status=$$?; \
	$(if $(TARGETS),$(BIN)/python -m onnxforge summary --out $(INDEX) >/dev/null, \
	  $(BIN)/snakemake --profile profiles/local --cores 1 $(INDEX)) || status=$$?; \
	echo "Reports: $$(ls results/*/*/parity/*/report.html 2>/dev/null | tr '\n' ' ')"; \
	echo "Index: $(INDEX)"; exit $$status

test: env env-maxtext system-deps lint
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
	containers/build.sh maxtext

lint: env
	$(BIN)/ruff check workflow tests benchmarks
	$(BIN)/ruff format --check workflow tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1 > $(VENV)/snakemake-lint.log 2>&1 \
	  || { cat $(VENV)/snakemake-lint.log; exit 1; }
	$(BIN)/hadolint containers/Dockerfile

clean:
	rm -rf results .snakemake
