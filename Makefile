# moaa-cluster: `make demo` (set up + run the embedded pipeline), `make test` (set up + tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch 2.13.0+cpu: from PyTorch's CPU wheel index outside this workplace (see README)
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: setup models demo test test-unit test-faults test-fuzz test-slow test-e2e test-rehearsal test-cluster lint clean

$(VENV)/.installed: pyproject.toml requirements/models.txt scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) PIP_EXTRA="$(PIP_EXTRA)" bash scripts/setup.sh
	touch $@

setup: $(VENV)/.installed            ## create .venv with the pinned CPU stack

models: setup                        ## convert the packaged models to HF checkpoints
	$(VENV)/bin/moaa models prepare

demo: models                         ## the main job: the whole pipeline on the embedded default
	$(VENV)/bin/moaa pipeline $(ARGS)

test: models                         ## unit + integration tests (real Ray, vLLM, packaged models)
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-faults: models                  ## fault injection (kill -9 and resume, real stack)
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

test-fuzz: setup                     ## the input fuzz tests with the long hypothesis profile (~1 min)
	HYPOTHESIS_PROFILE=ci-long $(PY) -m pytest tests/unit/data/test_records_fuzz.py $(PYTEST_ARGS)

test-e2e: models                     ## `moaa pipeline` end to end at toy size (real stack, ~10 min)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-rehearsal: models               ## the paper's configs at their real shape, packaged models standing in
	$(PY) -m pytest tests/rehearsal $(PYTEST_ARGS)

test-cluster: models                 ## `ray job submit` to a real head; sbatch under Slurm (scripts/ci_slurm.sh)
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

test-slow: models                    ## heavier real-stack tests, not part of `make test`
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

lint: setup                          ## ruff, and the import contracts of the layout (pyproject.toml)
	$(VENV)/bin/ruff check moaa_cluster tests && $(VENV)/bin/ruff format --check moaa_cluster tests
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) outputs
