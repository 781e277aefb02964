# make test / make eval set up what they need, then run.
# They use the active virtualenv if there is one, else a local .venv.
SHELL := /bin/bash
VENV ?= .venv
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := $(VENV)/bin/python
endif
STAMP := $(dir $(PY)).qzoo-installed
# the console script that pip install puts beside the interpreter
QZOO := $(dir $(PY))qzoo

.PHONY: install test eval cards clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q

# scores every published checkpoint (cached under $$QZOO_CACHE/eval, default ~/.cache/qzoo/eval:
# unchanged checkpoints are not scored again; NO_CACHE=1 scores everything), bootstrap intervals,
# results/efficiency.{csv,md}, results/pareto-*.png and the generated summary in README.md
eval: install
	$(PY) eval/efficiency.py --readme README.md $(if $(NO_CACHE),--no-cache)

cards: install
	$(QZOO) cards

clean:
	rm -rf $(VENV) .pytest_cache
