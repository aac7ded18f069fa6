# The two commands of the README (`make run`, `make test`) and the benchmark (`make bench`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
PORTAL_PORT ?= 8001

.PHONY: run test lint typecheck migrations-check pytest test-tools bench translations clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The IdP, the sandbox agency it starts and the sample portal (examples/portal/run.py: `idp init`, the portal's
# registration on first run, the three URLs to open; Ctrl-C stops them all).
run: $(STAMP)
	$(BIN)/python -m examples.portal.run --host $(HOST) --idp-port $(PORT) --portal-port $(PORTAL_PORT)

test: lint typecheck migrations-check pytest

# lint-imports checks the import arrows: the contracts in pyproject.toml's [tool.importlinter].
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy

# `alembic check` on a fresh SQLite database migrated to head: the models and the migrations agree.
migrations-check: $(STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	export IDP_ENV=development IDP_DATABASE_URL= IDP_INSTANCE_DIR="$$tmp" && \
	$(BIN)/alembic upgrade head >/dev/null 2>&1 && $(BIN)/alembic check

pytest: $(STAMP) test-tools
	$(BIN)/pytest

# The IdP beside node-oidc-provider, per core (bench/README.md); IDP_BENCH_POSTGRES_URL adds PostgreSQL rows.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The tests run real Chromium and a real Redis from Debian's packages (never a browser download), and a Korean
# font: without one Chromium draws Hangul as empty boxes and the 320 px layout tests measure those.
TEST_TOOLS := chromium redis-server
test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	fc-list :lang=ko 2>/dev/null | grep -q . || missing="$$missing fonts-nanum"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq $$missing >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }; \
	  else echo "the tests need Debian's$$missing: sudo apt-get install$$missing" >&2; exit 1; fi; \
	fi

# Extract the page texts, merge them into the catalogues, compile: run after changing a page's wording.
translations: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k _l -o idp/web/translations/messages.pot --no-location --omit-header --sort-output .
	$(BIN)/pybabel update -i idp/web/translations/messages.pot -d idp/web/translations --ignore-obsolete --no-wrap
	$(BIN)/pybabel compile -d idp/web/translations
	rm idp/web/translations/messages.pot

# The main pages as a Korean resident sees them at 320 px, written to docs/screens/ (docs/screens/README.md).
.PHONY: screenshots
screenshots: $(STAMP) test-tools
	$(BIN)/python docs/screens/capture.py
