# The two commands of the README. Both create .venv and install the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export XDG_RUNTIME_DIR ?= /tmp

.PHONY: run test lint bench clean-demo

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m webapp.launcher

# The test setup (tests/conftest.py) starts the embedded PostgreSQL and stops it at the end if it started
# it; the last line repeats that check in case pytest itself was killed. A server that was already
# running (`make run`) is left alone.
test: $(STAMP)
	bash scripts/ensure_chromium.sh
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; $(PY) -m webapp.embedded_db stop-unless-used; exit $$status

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

# Every benchmark at a size that finishes in minutes (the embed bench alone takes about 3 on the 2-core dev
# machine; the quick load bench shares the quick tiles bench's 20,000 px slide); `make bench FULL=1` at the
# sizes behind the figures in README.md and docs/ (the search bench's million rows alone take over half an
# hour on 2 cores).
ifndef FULL
BENCH_tiles := --size 20000 --tiles 100
BENCH_search := --rows 100000 --queries 100 --ef 40,100
BENCH_reporting := --runs 2 --patches 200 --signs 3
BENCH_load := --viewers 4 --editors 2 --slides 2 --seconds 8 --reference-seconds 3 --slide-size 20000
endif
# Each one prints its figures against its reference; all run, and `make bench` fails if any failed.
bench: $(STAMP)
	status=0; \
	$(PY) bench/tiles.py $(BENCH_tiles) || status=1; \
	$(PY) bench/search.py $(BENCH_search) || status=1; \
	$(PY) bench/embed.py || status=1; \
	$(PY) bench/reporting.py $(BENCH_reporting) || status=1; \
	$(PY) bench/load.py $(BENCH_load) || status=1; \
	exit $$status

clean-demo:
	rm -rf var/demo-corpus var/demo-corpus-v2 var/models/demo
