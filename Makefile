# The two README commands: `make run` and `make test`. Both create .venv on a
# fresh machine and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint sim clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dynctl cluster up --nodes 3

test: $(STAMP)
	$(BIN)/ruff check common dynd dynctl tests
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check common dynd dynctl tests

clean:
	rm -rf $(VENV) build *.egg-info
