# The two commands of the README (`make run`, `make test`) and the benchmark (`make bench`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck migrations-check pytest browser bench translations clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/idp init
	$(BIN)/idp serve --host $(HOST) --port $(PORT)

test: lint typecheck migrations-check pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# `alembic check` on a fresh SQLite database migrated to head: the models and the migrations agree.
migrations-check: $(STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	export IDP_ENV=development IDP_DATABASE_URL= IDP_INSTANCE_DIR="$$tmp" && \
	$(BIN)/alembic upgrade head >/dev/null 2>&1 && $(BIN)/alembic check

pytest: $(STAMP) browser
	$(BIN)/pytest

# The browser tests drive Debian's Chromium; never a browser download.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests" >&2; exit 1; fi; }

# Extract the page texts, merge them into the catalogues, compile: run after changing a page's wording.
translations: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k _l -o idp/web/translations/messages.pot --no-location --omit-header --sort-output .
	$(BIN)/pybabel update -i idp/web/translations/messages.pot -d idp/web/translations --no-location --omit-header
	$(BIN)/pybabel compile -d idp/web/translations
