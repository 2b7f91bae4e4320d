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
	@touch $(STAMP)

lab: $(STAMP)
	@echo "JupyterLab on the lab: open the URL printed below (Ctrl-C to stop)."
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) $(ROOT_FLAG) \
		--ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks

test: $(STAMP)
	$(BIN)/labkit info
	$(BIN)/python -m pytest tests
	@if ls solutions/*.ipynb >/dev/null 2>&1; then $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider solutions; fi

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
