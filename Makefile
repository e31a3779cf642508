# The two commands of the README, and the install step both share.
# `make serve` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: serve test bench-serve

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[engine,test]'
	touch $@

serve: $(INSTALLED)
	$(VENV)/bin/semipd serve

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest

bench-serve: $(INSTALLED)
	$(VENV)/bin/python benchmarks/serve_overhead.py
