# The two commands of the README: `make test` and `make book`.
# Each creates .venv when missing (pip; torch pinned to the CPU build 2.13.0) and is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test book bench bench-gpu lab notebooks student clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[book,scale,test]" "torch==2.13.0"
	touch $(STAMP)

# Unit tests, the command-line tools, and every chapter under nbval in fast mode.
test: $(STAMP)
	EMD_FAST=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q tests chapters --nbval-lax --nbval-current-env -p no:cacheprovider

# Execute the chapters (full mode unless EMD_FAST=1 is set) and render the book to _build/html with
# Sphinx, MyST-NB and sphinx-book-theme (docs/conf.py). A chapter runs when its code or emd_lib changed
# since its cached run (_build/jupyter_cache/{fast,full}); RERUN=1 runs them all.
# `make book ONLY=01,03` executes those chapters only (the others come from the cache).
book: $(STAMP)
	$(BIN)/python -m emd_lib book $(if $(ONLY),--only $(ONLY)) $(if $(RERUN),--rerun)

# JupyterLab on the repository; a double click opens a chapter as a notebook (jupytext).
lab: $(STAMP)
	$(BIN)/python -m emd_lib lab

# The chapters as .ipynb for Colab in _build/ipynb (first cell installs emd_lib; REPO=git URL).
notebooks: $(STAMP)
	$(BIN)/python -m emd_lib notebooks $(if $(REPO),--repo $(REPO))

# The student edition (solutions replaced by a stub) in _build/student, as .py and .ipynb
# (REPO=git URL: the repository the notebooks' install cell clones, as for `make notebooks`).
student: $(STAMP)
	$(BIN)/python -m emd_lib student $(if $(REPO),--repo $(REPO))

bench: $(STAMP)
	$(BIN)/python -m emd_lib bench_toy

# Chapter 8's GPU benchmark (random weights of the full-size networks; needs a CUDA GPU and a CUDA
# build of torch, so it runs GPU_PY, a Python that has one with emd_lib's requirements and diffusers).
GPU_PY ?= python3
GPU_BENCH := $(GPU_PY) -m emd_lib bench --config imagenet64 --batch 64 --langevin-steps 8,4,2,1 --passes
bench-gpu:
	$(GPU_BENCH) --steps 2 --warmup 1 --json data/results/bench_gpu_imagenet64.json
	$(GPU_BENCH) --steps 3 --warmup 1 --compile --json data/results/bench_gpu_imagenet64_compile.json
	$(GPU_BENCH) --steps 3 --warmup 2 --cuda-graphs --json data/results/bench_gpu_imagenet64_graphs.json
	$(GPU_BENCH) --steps 2 --warmup 1 --channels-last --json data/results/bench_gpu_imagenet64_nhwc.json
	$(GPU_PY) -m emd_lib bench --config imagenet64 --tiny --batch 16 --langevin-steps 1,4 --no-peak --sampler-steps 2 \
		--steps 5 --warmup 2 --json data/results/bench_gpu_tiny.json
	$(GPU_PY) -m emd_lib bench --config imagenet64 --tiny --batch 16 --langevin-steps 1,4 --no-peak --sampler-steps 2 \
		--steps 5 --warmup 2 --cuda-graphs --json data/results/bench_gpu_tiny_graphs.json
	$(GPU_PY) -m emd_lib bench --config sd15 --batch 8 --json data/results/bench_gpu_sd15.json

clean:
	rm -rf _build
