# Two commands do everything on a fresh machine: `make reports` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned here, not in pyproject.toml, so other machines may take newer releases
# (make TORCH="torch torchvision" or the conda environment.yml).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= quick
ONLY   ?=
# per-cell time limits in seconds (none by default): CELL_TIMEOUT for cells that train nothing,
# TRAIN_TIMEOUT for cells that train (their training keeps its resume state)
CELL_TIMEOUT  ?=
TRAIN_TIMEOUT ?=
STAMP  := $(VENV)/.installed

.PHONY: install reports preflight-ci test lint lab docs clean-notebooks bench gpu-check clean-outputs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

reports: install
	$(VENV)/bin/pixelcam reports --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) \
	  $(if $(CELL_TIMEOUT),--cell-timeout $(CELL_TIMEOUT)) \
	  $(if $(TRAIN_TIMEOUT),--train-timeout $(TRAIN_TIMEOUT))

# the paper profile's preflight on the committed GlaS sample and synthetic slides (CPU, no weights)
preflight-ci: install
	bash .ci/preflight

test: install
	$(VENV)/bin/pytest -q

bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
	@echo "== summary"; $(PY) benchmarks/summary.py

# on a GPU node: CUDA seen, paper preflight of notebook 01, CUDA benchmarks, LayerCAM GPU vs CPU
# -> outputs/gpu-check.json (about 10 minutes; docs/reproduce-the-paper.md)
gpu-check: install
	$(PY) benchmarks/gpu_check.py

# ruff, and the package's layers and acyclic modules (import-linter; pyproject.toml)
lint: install
	$(VENV)/bin/ruff check pixelcam tests benchmarks
	$(VENV)/bin/lint-imports

# the documentation site (docs/, mkdocs-material) -> build/site/index.html; strict: a broken
# link fails
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# JupyterLab on the notebooks (installed with the dev extras; added here if the env lacks it)
lab: install
	@$(PY) -c "import jupyterlab, ipywidgets" 2>/dev/null || \
	  $(PY) -m pip install --quiet "jupyterlab>=4" "ipywidgets>=8"
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# strip outputs, execution counts and editor metadata before a commit (a test fails on outputs)
clean-notebooks: install
	$(PY) -m pixelcam.nbclean notebooks/*.ipynb

clean-outputs:
	rm -rf outputs/$(PROFILE)
