# One-command entry points. `make demo` and `make test` set everything up on a fresh machine
# (virtualenv in .venv, torch, phide with its compiled extension) and then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 is a CUDA 13.0 build that also runs on the CPU: the same install builds the CPU
# extension everywhere and the CUDA extension (PHIDE_BUILD_CUDA=1) where nvcc 13 exists.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/kernels/*)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

setup: $(VENV)/.phide-installed

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.torch-installed: | $(BIN)/python
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install $(TORCH_PINS)
	touch $@

# --no-build-isolation: the extension must be built against the torch installed above, not a
# different one that pip would fetch into an isolated build environment.
# The CUDA kernels are built when nvcc has torch's CUDA major version (scripts/cuda_build.py says
# why or why not; PHIDE_BUILD_CUDA=0/1 decides instead).
$(VENV)/.phide-installed: $(VENV)/.torch-installed pyproject.toml setup.py $(EXT_SOURCES) scripts/cuda_build.py
	cuda=$$($(BIN)/python scripts/cuda_build.py) && \
	PHIDE_BUILD_CUDA=$$cuda $(BIN)/pip install --no-build-isolation -e ".[dev,quant]"
	touch $@

demo: setup
	$(BIN)/phide demo

# The layers contract (pyproject.toml, import-linter) first: an import up the layers fails the build.
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf build *.egg-info phide/_C*.so phide/_build_info.py
