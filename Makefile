VENV ?= .venv
PYTHON ?= python3
VENV_PY := $(VENV)/bin/python
# The torch wheels this project is developed against; they satisfy the `torch>=2.1` range of setup.py.
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint tiny-models clean

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip

install: $(VENV_PY)
	$(VENV_PY) -m pip install --quiet $(TORCH_PACKAGES)
	$(VENV_PY) -m pip install --quiet -e ".[test]"

test: lint
	$(VENV_PY) -m pytest -n 2 --durations=15 tests

lint:
	$(VENV_PY) -m ruff check imaginairy tests scripts

tiny-models:
	$(VENV_PY) scripts/make_tiny_models.py --helpers build/tiny-models

clean:
	rm -rf build .pytest_cache
