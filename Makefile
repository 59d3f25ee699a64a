# The two commands a user needs: `make demo` and `make test`. `make setup` is run by both.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

# The developer loop (docs/development.md): everything but the end-to-end tests, about a minute.
test-fast: setup
	$(PY) -m pytest -q -m "not e2e" tests

demo: setup
	$(PY) scripts/demo.py --work-dir demo_work

clean:
	rm -rf $(VENV) demo_work
