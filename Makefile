# bdunlearn: `make reproduce` (main job) and `make test`; both set themselves up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= default
# The CPU build this machine offers; on a CUDA machine set TORCH to the build you want.
TORCH ?= torch==2.13.0
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data lint test test-fast reproduce figures plan lab bench clean-cache

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,notebooks]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

data:
	@[ -d $(FMNIST_DIR) ] || { $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

# The linter (ruff, configured in pyproject.toml) over the package, tests, tools and notebooks.
lint: setup
	$(BIN)/ruff check .

# Ray (the cluster extra) for the sweep's tests on a local cluster.
$(VENV)/.cluster: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[cluster]"
	touch $@

# Everything, as CI runs it: the linter, then every tier (unit, slow, cluster: see
# tests/conftest.py), then every notebook under nbval at the smoke profile, the 25 slowest
# listed at the end. The tests run first and train into the same checkpoint cache
# (BDUNLEARN_CACHE; .ci/run sets one folder per run) that the notebooks then read. The
# notebooks' tables and figures go to a temporary folder, not over the committed ones.
test: lint $(VENV)/.cluster
	out=$$(mktemp -d) && BDUNLEARN_PROFILE=smoke BDUNLEARN_RESULTS=$$out/results \
	  BDUNLEARN_FIGURES=$$out/figures $(BIN)/python -m pytest tests notebooks --nbval-lax \
	  -p no:cacheprovider --durations=25

# The inner loop: the unit tier alone (-m unit: no notebook, no Ray, no long training),
# in a fresh checkpoint cache and a temporary results folder, removed afterwards.
test-fast: $(VENV)/.installed
	out=$$(mktemp -d) && BDUNLEARN_PROFILE=smoke BDUNLEARN_CACHE=$$out/checkpoints \
	  BDUNLEARN_RESULTS=$$out/results BDUNLEARN_FIGURES=$$out/figures \
	  $(BIN)/python -m pytest tests -m unit -p no:cacheprovider --durations=10; \
	  rc=$$?; rm -rf "$$out"; exit $$rc

# RAY=local|auto|ADDRESS (or none: local worker processes) first trains the profile's
# planned models with `python -m bdunlearn.sweep` (Ray comes from the cluster extra).
RAY ?=

reproduce: setup
	$(if $(filter-out none,$(RAY)),$(MAKE) --no-print-directory $(VENV)/.cluster)
	$(if $(RAY),$(BIN)/python -m bdunlearn.sweep --profile $(PROFILE) --ray $(RAY) --no-notebooks $(ARGS))
	$(BIN)/python -m bdunlearn.reproduce --profile $(PROFILE) $(ARGS)

# Every table and figure from the stored runs (each notebook's largest precision/device
# group), computing nothing: about a minute at the default profile.
figures: setup
	$(BIN)/python -m bdunlearn.reproduce --profile $(PROFILE) -p compute False $(ARGS)

# What `make reproduce` would do here (runs stored and to compute per notebook, the
# trainings, an estimate on this machine), without doing it.
plan: setup
	$(BIN)/python -m bdunlearn.reproduce --profile $(PROFILE) --plan $(ARGS)

# As root (a container) Jupyter needs --allow-root; SUDO is empty exactly then.
lab: setup
	$(BIN)/jupyter lab notebooks/ $(if $(SUDO),,--allow-root)

bench: setup
	$(BIN)/python -m bdunlearn.bench $(ARGS)

clean-cache:
	rm -rf "$${BDUNLEARN_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/bdunlearn/checkpoints}"
