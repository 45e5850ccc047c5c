# gridedge: the two commands a new user runs are `make demo` and `make test`.
# Both build the virtualenv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DURATION ?= 0

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	@# The uplink tests run a real mosquitto broker (TLS, ACLs): install it where it is missing.
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
	  { $$(command -v sudo >/dev/null && test "$$(id -u)" != 0 && echo sudo) apt-get install -y mosquitto || \
	    { $$(command -v sudo >/dev/null && test "$$(id -u)" != 0 && echo sudo) apt-get update && \
	      $$(command -v sudo >/dev/null && test "$$(id -u)" != 0 && echo sudo) apt-get install -y mosquitto; }; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gridedge demo --duration $(DURATION)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects no test: that is a failure of the suite, said plainly.
unit: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_devices
	$(BIN)/python -m tests.benchmarks.bench_twin
	$(BIN)/python -m tests.benchmarks.bench_uplink
	$(BIN)/python -m tests.benchmarks.bench_signing
	$(BIN)/python -m tests.benchmarks.bench_estimate
	$(BIN)/python -m tests.benchmarks.bench_segment

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
