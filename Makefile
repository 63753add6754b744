# Two entry points, as README.md says: `make demo` and `make test`.
# torch is pinned first so pip takes the local CPU wheel and never a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[demo,test,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m optimum_awp.cli demo

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/fidelity.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
