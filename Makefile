# Everything the project needs, from a fresh clone: `make demo`, `make test`.
# python3 resolves to 3.12 through .python-version (pyenv); PYTHON=... overrides.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# ocproxy and what it needs to run (make demo) ...
STAMP      := $(VENV)/.installed
# ... and the tools to lint, test and build the docs (make test, make docs).
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test test-nobrowser lint docs bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "ocproxy needs Python >= 3.12; set PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/ocproxy demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Installs, with apt-get as root, Debian's chromium (and a font) for the HTML report's
# browser tests and tcpdump and tshark for the capture import's; each script stops with a
# message when it cannot (make test-nobrowser skips the browser tests and chromium).
# pytest exits 5 when it collects no test: make fails then, it never passes silently.
test: lint
	bash scripts/install-browser.sh
	bash scripts/install-capture-tools.sh
	$(BIN)/python -m pytest

# Everything but the tests marked `browser`: no chromium. Says so at the end.
test-nobrowser: lint
	bash scripts/install-capture-tools.sh
	$(BIN)/python -m pytest -m 'not browser'
	@echo "make test-nobrowser: the browser tests (pytest -m browser) were NOT run"

docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(TEST_STAMP)
	$(BIN)/python bench/proxy_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
