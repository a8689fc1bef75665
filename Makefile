# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
# Where torch comes from: empty = pip's default. Outside this project's machines, where PyPI's
# torch 2.13.0 is the CUDA build, `make TORCH_INDEX=https://download.pytorch.org/whl/cpu test`.
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev,serve,track]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tokenpose.demo

test: $(STAMP)
	@scripts/install_cpp_deps.sh || echo "C++ build dependencies missing: tests/test_cpp.py will be skipped"
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info demo_out
