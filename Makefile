# Everything the project needs, from a fresh clone: `make demo`, `make test`.
# python3 resolves to 3.12 through .python-version (pyenv); PYTHON=... overrides.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "ocproxy needs Python >= 3.12; set PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ocproxy demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# pytest exits 5 when it collects no test: make fails then, it never passes silently.
test: lint
	bash scripts/install-browser.sh
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/proxy_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
