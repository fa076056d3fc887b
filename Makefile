# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# VENV may point elsewhere (CI keeps one between runs: torch alone is ~5.5 GB).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint bench bench-smoke

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ltu demo

# One intra-op thread per process: faster for these small models on 2 cores, and the tests
# run worker subprocesses beside pytest.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench-smoke: install
	$(VENV)/bin/ltu bench --preset smoke

bench: install
	$(VENV)/bin/ltu bench --preset random --json bench/results/random.json
	$(VENV)/bin/ltu bench --preset class --json bench/results/class.json
