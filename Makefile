# Two commands for everyone: `make lab` and `make test`. Both create .venv and install the project first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
PORT   ?= 8888
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: lab test test-unit test-notebooks weights bench release clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,grading]"
	@# The lab's kernel runs Keras on torch whatever a notebook imports first (keras' default is tensorflow).
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" \
		--env KERAS_BACKEND torch
	@touch $(STAMP)

# The server's settings are in jupyter/jupyter_lab_config.py (the browser tests start it with the same file).
lab: $(STAMP)
	@echo "Starting JupyterLab with the course's first notebook: open the http://127.0.0.1 URL printed below (Ctrl-C to stop)."
	$(BIN)/jupyter lab --config=jupyter/jupyter_lab_config.py --port=$(PORT) $(ROOT_FLAG)

test: $(STAMP)
	$(BIN)/labkit info
	$(BIN)/python -m pytest tests --ignore=tests/browser
	@if ls solutions/*.ipynb >/dev/null 2>&1; then $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider solutions; fi
	@# The lab in headless Chromium; without a Chromium this prints one line saying it was skipped.
	$(BIN)/python -m pytest tests/browser -rfE

# Retrain the embedded backbone (about 10 min on 2 CPU cores); writes data/minivgg.*
weights: $(STAMP)
	$(BIN)/python -m labkit.train

bench: $(STAMP)
	$(BIN)/python bench/methods.py
	$(BIN)/python bench/pointing.py

release: $(STAMP)
	$(BIN)/labkit release

clean:
	rm -rf $(VENV) .pytest_cache
