# The two commands of the README: `make test` and `make book`.
# Each creates .venv when missing (pip; torch pinned to the CPU build 2.13.0) and is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test book bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[scale]" "torch==2.13.0"
	touch $(STAMP)

# Unit tests, the command-line tools, and every chapter under nbval in fast mode.
test: $(STAMP)
	EMD_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q tests chapters --nbval-lax --nbval-current-env -p no:cacheprovider

# Execute every chapter (full mode unless EMD_FAST=1 is set) and render the book to _build/html.
book: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m emd_lib.book

bench: $(STAMP)
	$(BIN)/python -m emd_lib.bench_toy

clean:
	rm -rf _build
