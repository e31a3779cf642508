# The two commands of the README, and the install step both share.
# `make serve` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: serve test bench-serve browser

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[engine,test]'
	touch $@

serve: $(INSTALLED)
	$(VENV)/bin/semipd serve

test: $(INSTALLED) browser
	$(VENV)/bin/python -m pytest

# The dashboard test opens the page in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the dashboard test"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench-serve: $(INSTALLED)
	$(VENV)/bin/python benchmarks/serve_overhead.py
