# The two commands of the README (`make up`, `make test`), and the install step both share;
# each create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: up serve test test-unit bench-serve system-deps

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[engine,test]'
	touch $@

up: $(INSTALLED)
	$(VENV)/bin/semipd up --demo

serve: $(INSTALLED)
	$(VENV)/bin/semipd serve

test: $(INSTALLED) system-deps
	$(VENV)/bin/python -m pytest

# The fast tier alone (no servers): the inner loop.
test-unit: $(INSTALLED)
	$(VENV)/bin/python -m pytest tests/unit

# Tests that need system programs install Debian's packages when missing: chromium (the dashboard
# opened in a real browser) and prometheus (the tuner reading a real Prometheus).
system-deps:
	@missing=""; for p in chromium prometheus; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's$$missing for the tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

bench-serve: $(INSTALLED)
	$(VENV)/bin/python benchmarks/serve_overhead.py
