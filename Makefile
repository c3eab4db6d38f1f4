# The commands people type. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-sqlite test-postgresql lint migration clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m newsletter.devserver

test: $(STAMP)
	$(PY) -m pytest
	$(PY) -m pytest --db postgresql

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Regenerate the single initial migration from models.py (only until the first release).
migration: $(STAMP)
	rm -rf /tmp/nl-migration && rm -f migrations/versions/0001_initial_schema.py
	NEWSLETTER_ENV=development NEWSLETTER_INSTANCE=/tmp/nl-migration DATABASE_URL= \
	  $(VENV)/bin/flask --app newsletter db migrate -m "initial schema" --rev-id 0001

clean:
	rm -rf $(VENV) instance .pytest_cache
