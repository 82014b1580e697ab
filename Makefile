# `make demo` and `make test` each set up what they need on a fresh Debian machine, then run.
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
# chromium: dashboard tests; postgresql: the PostgreSQL backend's tests (the tests start their
# own server); openssl: test certificates; nftables, iproute2, procps, util-linux, fping: network tests, the fault lab and
# benchmarks.
DEBS    := chromium postgresql openssl nftables iproute2 procps util-linux fping
# What the benchmarks compare against (`make bench-deps`; not needed by the tests).
BENCH_DEBS := iputils-ping prometheus-smokeping-prober
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-detection check debs bench-deps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

debs bench-deps: PACKAGES = $(if $(filter bench-deps,$@),$(DEBS) $(BENCH_DEBS),$(DEBS))
debs bench-deps:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/pingmesh demo

check: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: debs $(STAMP) check
	$(BIN)/pytest

# Only the fault lab's fault → incident scenarios (root; about 5 minutes; part of `make test`).
test-detection: debs $(STAMP)
	$(BIN)/pytest -m detection

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
