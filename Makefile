VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: test bench run reproduce lint clean

$(VENV)/bin/activate:
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.dev: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@

$(VENV)/.run: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.bench: $(VENV)/.dev
	$(PIP) install -e '.[dev,bench]'
	touch $@

test: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 tests

bench: $(VENV)/.bench
	$(PY) -m benchmarks.run_all

# Train the neural_ode recipe; extra overrides: make run ARGS="trainer.steps=2000"
run: $(VENV)/.run
	$(PY) -m nde.train recipe=neural_ode $(ARGS)

# A recipe's full-length run (its config defaults); the figures go to recipes/RESULTS.md.
#   make reproduce RECIPE=neural_cde [ARGS="seed=1"]
reproduce: $(VENV)/.run
	@test -n "$(RECIPE)" || { echo "usage: make reproduce RECIPE=<name> (see recipes/README.md)"; exit 2; }
	$(PY) -m nde.train recipe=$(RECIPE) $(ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check nde tests benchmarks recipes
	$(VENV)/bin/ruff format --check nde tests benchmarks recipes
	$(VENV)/bin/pyright

clean:
	rm -rf $(VENV) .pytest_cache
