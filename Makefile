# Two commands on a fresh clone: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slimkit-installed
# The CPU build of torch, installed before anything else so no dependency pulls a CUDA build.
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/slimkit demo --out runs/demo --overwrite

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# the default suite plus the long end-to-end tests (marked slow); pytest -m thirdparty is the whole
# third-party matrix on top
test-all: install
	$(PY) -m pytest $(PYTEST_ARGS) -m "not thirdparty"

clean:
	rm -rf $(VENV) runs .pytest_cache .cache
