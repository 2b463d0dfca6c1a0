# `make demo` and `make test` work on a fresh machine: they create .venv, install, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The TensorRT Python API as .pyi files, for tests/test_tensorrt_api.py. Installed without its dependencies (it
# requires tensorrt itself) into a folder of its own that is not on sys.path, so `tensorrt` stays un-importable.
TRT_STUBS := $(VENV)/tensorrt-stubs
TRT_STUBS_VERSION := 10.13.0.35.1

# The Triton environment, for `lru-deploy triton`/`serve` and tests/test_serve_*.py: the tritonserver of the
# nvidia-pytriton wheel runs its Python-backend stub with this venv's python3, which needs numpy < 2 (the
# project's .venv has numpy 2), lru-deploy itself (editable: this checkout) and tritonclient (Triton's
# model-config schema). Inside .venv, so .venv itself is left as it is and `make clean` removes both.
TRITON_VENV := $(VENV)/triton
TRITON_STAMP := $(TRITON_VENV)/.installed

.PHONY: demo test install triton-env clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned here (the package declares a range): 2.13.0 is the CPU build on this machine's disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(TRT_STUBS)/.installed: | $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target $(TRT_STUBS) tensorrt-stubs==$(TRT_STUBS_VERSION)
	touch $@

$(TRITON_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet torch==2.13.0 'numpy<2' nvidia-pytriton==0.7.0 \
		'tritonclient[grpc,http]==2.73.0' -e .
	touch $@

install: $(STAMP)

triton-env: $(TRITON_STAMP)

demo: $(STAMP)
	$(BIN)/lru-deploy demo

# LRU_DEPLOY_TRITON_ENV: the Triton tests fail, rather than skip, when that environment is missing.
test: $(STAMP) $(TRT_STUBS)/.installed $(TRITON_STAMP)
	LRU_DEPLOY_TRITON_ENV=$(CURDIR)/$(TRITON_VENV) $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
