# `make demo` and `make test` work on a fresh machine: they create .venv, install, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The TensorRT Python API as .pyi files, for tests/test_tensorrt_api.py. Installed without its dependencies (it
# requires tensorrt itself) into a folder of its own that is not on sys.path, so `tensorrt` stays un-importable.
TRT_STUBS := $(VENV)/tensorrt-stubs
TRT_STUBS_VERSION := 10.13.0.35.1

.PHONY: demo test install clean

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

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lru-deploy demo

test: $(STAMP) $(TRT_STUBS)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
