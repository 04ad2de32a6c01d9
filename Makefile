# The two README commands: `make run` and `make test`. Both create .venv on a
# fresh machine and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint sim fuzz clean chaos deps-chaos bench bench-deps soak-ttl \
	compiled pure test-compiled

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dynctl cluster up --nodes 3

test: $(STAMP) deps-system deps-chaos
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

# Debian packages the tests use: mandoc (man page lint), systemd (systemd-analyze verify),
# prometheus (promtool checks etc/prometheus/dynd-alerts.yml and runs its rule tests).
# A no-op when all are there; installs them as root, else says what is missing.
.PHONY: deps-system
deps-system:
	@command -v mandoc >/dev/null && command -v systemd-analyze >/dev/null \
	  && command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends mandoc systemd prometheus; \
	  else echo "deps-system: not root: apt-get install mandoc systemd prometheus" >&2; fi; }

# Chaos: 5 real nodes, one network namespace each, under kill -9, SIGSTOP, partitions and
# packet loss, with Jepsen's set workload; prints the report (tests/chaos/run.py). Needs
# root, iproute2 and iptables (deps-chaos installs them on Debian/Ubuntu when missing).
CHAOS_SECONDS ?= 300
deps-chaos:
	@command -v ip >/dev/null && command -v tc >/dev/null && command -v iptables >/dev/null \
		|| { [ "$$(id -u)" = 0 ] || { echo "deps-chaos: not root: the chaos tests will skip" >&2; exit 0; }; \
		     apt-get install -y -q iproute2 iptables || { apt-get update -q && apt-get install -y -q iproute2 iptables; }; }

chaos: $(STAMP) deps-chaos
	$(BIN)/python -m tests.chaos.run --seconds $(CHAOS_SECONDS) --nodes 5

# Many seeds of the fault simulator (tests/sim); a failure prints the seed that reproduces it.
SEEDS ?= 100
sim: $(STAMP)
	PYTHONHASHSEED=0 SEEDS=$(SEEDS) $(BIN)/pytest -q -s -m slow tests/sim/test_sim_faults.py tests/sim/test_sim_expiry.py \
		tests/sim/test_sim_queries.py -k many

lint: $(STAMP)
	$(BIN)/ruff check common dynd dynctl tests

# Benchmarks: dynd against etcd (3 members) and Redis, all on 127.0.0.1 (tests/bench/).
bench-deps: $(STAMP)
	command -v etcd >/dev/null && command -v redis-server >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq etcd-server redis-server)
	$(BIN)/pip install -q -e '.[bench,plot]'

# `make bench`: every target of issues 16 and 19 in one run and one table (target, median,
# rounds, threshold, met/missed, by how much), also written to $(BENCH_JSON). Each round runs
# 13 measured phases of $(BENCH_DURATION) s plus 3 s warm-up (3 nodes and 1 node against etcd
# and Redis with appendfsync always, one request at a time, six YCSB-E variants, one with a
# node down), plus starting and loading the stores: about 12 minutes with the defaults on an
# idle machine, about 5 with BENCH_DURATION=2 BENCH_ROUNDS=2 (7 with the machine loaded).
BENCH_DURATION ?= 10
BENCH_ROUNDS ?= 3
BENCH_JSON ?= build/bench.json
bench: bench-deps
	mkdir -p $(dir $(BENCH_JSON))
	$(BIN)/python -m tests.bench.compare --all --duration $(BENCH_DURATION) \
		--rounds $(BENCH_ROUNDS) --json $(BENCH_JSON)

# TTL soak: a cache workload (95% reads, 5% inserts with TTL 60 s, grace 60 s, anti-entropy
# every 15 s) on 3 nodes; prints the data dirs' size every 10 s and whether it stays flat.
SOAK_SECONDS ?= 600
soak-ttl: $(STAMP)
	$(BIN)/python -m tests.bench.soak_ttl --seconds $(SOAK_SECONDS)

# Opt-in compiled hot path (setup.py): mypyc compiles the request-path modules into
# extension modules next to their sources, which Python then imports instead of the .py
# files. Needs a C compiler and the Python headers; `make pure` goes back to pure Python.
MYPY_VERSION ?= 2.4.1
compiled: $(STAMP)
	$(BIN)/pip install -q 'mypy==$(MYPY_VERSION)'
	DYND_COMPILE=1 $(BIN)/python setup.py -q build_ext --inplace

pure:
	rm -f common/*.so dynd/*.so

# The unit, component and fuzz tests against the compiled modules;
# tests/unit/test_compiled.py checks that they are the ones imported.
test-compiled: compiled
	DYND_EXPECT_COMPILED=1 $(BIN)/pytest -q tests/unit tests/component tests/fuzz

clean:
	rm -rf $(VENV) build *.egg-info common/*.so dynd/*.so
