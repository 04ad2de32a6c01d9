# The two README commands: `make run` and `make test`. Both create .venv on a
# fresh machine and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint sim fuzz clean

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

# Coverage-guided fuzzing of the frame decoder and request validation (atheris, not a
# test dependency). The corpus in tests/fuzz/corpus grows with each run; crashes are
# written to tests/fuzz/crashes/.
FUZZ_SECONDS ?= 1800
fuzz: $(STAMP)
	$(BIN)/pip install -q atheris
	mkdir -p tests/fuzz/crashes
	$(BIN)/python tests/fuzz/fuzz_frames.py tests/fuzz/corpus -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=tests/fuzz/crashes/ -print_final_stats=1

lint: $(STAMP)
	$(BIN)/ruff check common dynd dynctl tests

clean:
	rm -rf $(VENV) build *.egg-info
