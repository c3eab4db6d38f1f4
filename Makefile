# The commands people type. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k signup -x"`.
PYTEST_ARGS ?=

.PHONY: run test lint migration ci clean

# The virtual environment with the package and its dev tools; redone when pyproject changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Web, worker, embedded Redis and a local outbox on http://127.0.0.1:5000 (PORT=... to move).
run: $(STAMP)
	$(PY) -m newsletter.devserver

# The suite on SQLite, then on PostgreSQL (TEST_DATABASE_URL; skipped, with the reason, without one).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest --db postgresql $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# What CI runs: make test, then the suite on PostgreSQL with the machine's Redis.
ci:
	.ci/run

# Regenerate the single initial migration from models.py (only until the first release).
migration: $(STAMP)
	rm -rf /tmp/nl-migration && rm -f migrations/versions/0001_initial_schema.py
	NEWSLETTER_ENV=development NEWSLETTER_INSTANCE=/tmp/nl-migration DATABASE_URL= \
	  $(VENV)/bin/flask --app newsletter db migrate -m "initial schema" --rev-id 0001

clean:
	rm -rf $(VENV) instance .pytest_cache
