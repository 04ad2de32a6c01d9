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

test: $(STAMP) deps-system
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

# Debian packages the tests use: mandoc (man page lint), systemd (systemd-analyze verify).
# A no-op when both are there; installs them as root, else says what is missing.
.PHONY: deps-system
deps-system:
	@command -v mandoc >/dev/null && command -v systemd-analyze >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends mandoc systemd; \
	  else echo "deps-system: not root: apt-get install mandoc systemd" >&2; fi; }

lint: $(STAMP)
	$(BIN)/ruff check common dynd dynctl tests

# Benchmarks: dynd against etcd (3 members) and Redis, all on 127.0.0.1 (tests/bench/).
bench-deps: $(STAMP)
	command -v etcd >/dev/null && command -v redis-server >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq etcd-server redis-server)
	$(BIN)/pip install -q -e '.[bench,plot]'

bench: bench-deps
	$(BIN)/python -m tests.bench.compare

clean:
	rm -rf $(VENV) build *.egg-info
