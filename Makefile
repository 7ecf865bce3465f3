# Entry points: `make demo` (the whole path on the built-in demo data), `make test` (the suite, on both cores)
# and `make device-check` (the GPU paths measured in one call). Each creates .venv on first use and installs the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test device-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.demo

# one OpenMP thread per process: the two workers and the processes they start share the cores, and
# idle OpenMP threads spin before they sleep, taking CPU the other worker needs (3 min 34 s of user CPU -> 3 min 0 s)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

device-check: $(STAMP)
	$(BIN)/python bench/device_check.py
