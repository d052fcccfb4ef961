# make run: set up .venv and start loadertop on the built-in workload. make test: set up and run every test.
# make lint: ruff's checks and its format check over the tree, and mypy (strict where pyproject.toml says).
# make docs: the docs/ site (mkdocs-material), built strictly into site/: a broken link or anchor fails it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: run test lint docs bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/loadertop $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/sampler_cost.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/sweep.py
	$(PY) benchmarks/soak.py
	$(PY) benchmarks/cost.py
	$(PY) benchmarks/dropin_overhead.py
	$(PY) benchmarks/stages.py
	$(PY) benchmarks/first_jump.py
	$(PY) benchmarks/history.py
	$(PY) benchmarks/script_monitor.py
	$(PY) benchmarks/switch_stall.py
	$(PY) benchmarks/autotune.py

screenshots: $(STAMP)
	$(PY) screenshots/make_screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
