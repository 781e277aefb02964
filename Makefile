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

eval: install
	$(PY) eval/efficiency.py

cards: install
	$(PY) eval/cards.py

clean:
	rm -rf $(VENV) .pytest_cache
