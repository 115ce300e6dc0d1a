# One venv for everything; each target creates it when missing.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# The demo's Dagster instance and artifact store live in the checkout (git-ignored); override either.
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export SI_STORE ?= $(CURDIR)/.si_store
# Without network access to the model hub, hub look-ups retry for tens of seconds before failing; never look.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: venv demo demo-rounds test ui bench clean-demo

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cluster]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m si_assets.demo --rounds 1

demo-rounds: venv
	$(BIN)/python -m si_assets.demo --rounds 3

test: venv
	$(BIN)/python -m pytest

ui: venv
	$(BIN)/python -c 'from si_assets.demo import prepare_instance; prepare_instance()'
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $${PORT:-3000}

bench: venv
	$(BIN)/python bench/bootstrap_convergence.py

clean-demo:
	rm -rf $(DAGSTER_HOME) $(SI_STORE)
