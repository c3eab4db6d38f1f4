# The commands people type. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# gettext catalogues: newsletter/translations/<lang>/LC_MESSAGES/messages.po (the .mo are built)
CATALOGUES := newsletter/translations
POT        := $(CATALOGUES)/messages.pot
MO         := $(patsubst %.po,%.mo,$(wildcard $(CATALOGUES)/*/LC_MESSAGES/messages.po))
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k signup -x"`.
PYTEST_ARGS ?=

.PHONY: run test lint migration translations new-language compile-translations ci clean

# The virtual environment with the package and its dev tools; redone when pyproject changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(VENV)/bin/pybabel compile -d $(CATALOGUES)
	touch $(STAMP)

# Web, worker, embedded Redis and a local outbox on http://127.0.0.1:5000 (PORT=... to move).
run: $(STAMP) $(MO)
	$(PY) -m newsletter.devserver

# The suite on SQLite, then on PostgreSQL (TEST_DATABASE_URL; skipped, with the reason, without one).
test: $(STAMP) $(MO)
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

# After changing or adding messages: extract them and merge them into every catalogue;
# then translate the new entries (tests/test_translations.py names any left over).
translations: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -k lazy_gettext --no-location --sort-output \
	  --project newsletter -o $(POT) .
	$(VENV)/bin/pybabel update -i $(POT) -d $(CATALOGUES) --no-fuzzy-matching --ignore-obsolete
	$(VENV)/bin/pybabel compile -d $(CATALOGUES)

# A new language: make new-language LANG=fr, then add it to LANGUAGES.
new-language: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -k lazy_gettext --no-location --sort-output -o $(POT) .
	$(VENV)/bin/pybabel init -i $(POT) -d $(CATALOGUES) -l $(LANG)

compile-translations: $(STAMP)
	$(VENV)/bin/pybabel compile -d $(CATALOGUES)

# A catalogue edited since it was compiled (fuzzy entries are left out).
%.mo: %.po $(STAMP)
	$(VENV)/bin/pybabel compile -i $< -o $@

clean:
	rm -rf $(VENV) instance .pytest_cache
