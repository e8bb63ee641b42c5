# Two commands do everything: `make serve` and `make test`. Each installs what is missing
# first (Debian packages, the server's venv, the sandboxes' Python runtime) and is fast
# when nothing changed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= /usr/bin/python3
VENV        := .venv
# outside the checkout on purpose: sandboxes see it at the same path, and a checkout may
# live under /tmp, which every sandbox covers with its own
RUNTIME     := /opt/execbox/python
APT_PKGS    := gcc libc6-dev python3 python3-venv python3-dev nodejs bash libseccomp2 bubblewrap iproute2 procps \
               redis-server
NUMPY       := numpy==2.4.6
HOST        ?= 127.0.0.1
PORT        ?= 8080
PYTEST_ARGS ?=

.PHONY: help install system-deps serve test lint format bench soak fuzz doctor clean

help:
	@echo "make serve   install what is missing, then start execbox on $(HOST):$(PORT)"
	@echo "make test    install what is missing, then ruff and the whole test suite"
	@echo "make bench   latency and throughput against bubblewrap and cold starts"
	@echo "make soak    10 minutes of mixed load; fails if the server or host leaks"
	@echo "make fuzz    schemathesis and the path fuzzers with a large budget"
	@echo "make doctor  what this host allows"

NATIVE      := src/execbox/sandbox/_native.so

install: system-deps $(VENV)/.installed $(RUNTIME)/.installed-$(NUMPY) $(NATIVE)

# execbox's C parts (native.py; each .c file says why it is C): the sandbox's seal and the
# cloner's loop, one plain C library loaded with ctypes
$(NATIVE): src/execbox/sandbox/seal.c src/execbox/sandbox/cloner.c | system-deps
	gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $^

# Debian packages, installed only when one is missing (apt-get update only then, too).
system-deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# The interpreter sandboxes run: Debian's python3 (all under /usr, which the sandbox
# root already binds) with numpy in its own venv. The stamp names the numpy pin, so a
# new pin reinstalls.
$(RUNTIME)/.installed-$(NUMPY): | system-deps
	@test -x $(RUNTIME)/bin/python || $(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/pip install -q --disable-pip-version-check $(NUMPY)
	@touch $@

serve: install
	$(VENV)/bin/execbox serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: $(VENV)/.installed
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

test: install lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/execbox bench $(BENCH_ARGS)

# 10 minutes of mixed normal and abusive load against a real server; fails on growth
soak: install
	$(VENV)/bin/python bench/soak.py --seconds $${SOAK_SECONDS:-600}

# schemathesis over the whole OpenAPI document and the path fuzzers, with a larger budget
fuzz: install
	EXECBOX_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(VENV)/bin/python -m pytest -q \
	  tests/conformance/test_schemathesis.py tests/fuzz

doctor: install
	$(VENV)/bin/execbox doctor

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
