# vzrep: `make demo` and `make test` do all the set-up themselves on a fresh Debian machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_STAMP := .apt-done
# Debian packages the core needs (others are added by the fragments in mk/); gcc builds the
# source's scan kernel (source_agent/native) when the package is installed.
APT_PACKAGES ?= qemu-utils e2fsprogs openssh-client openssh-server rsync gcc libc6-dev

.PHONY: all demo test check lint typecheck unit fuzz bench bench-transport bench-loops clean sysdeps sysdeps-core venv

all: test

$(STAMP): pyproject.toml setup.py $(wildcard source_agent/native/*.c source_agent/native/*.h source_agent/native/blake3/*)
	test -x $(PY) || python3 -m venv $(VENV) || { $(MAKE) --no-print-directory APT_PACKAGES=python3-venv EXTRA_APT_PACKAGES= sysdeps && python3 -m venv $(VENV); }
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]' --config-settings editable_mode=compat  # a path in a .pth: no import hook (~15 ms off every start)
	touch $(STAMP)

venv: $(STAMP)

# Install the system tools that are missing; `apt-get update` runs once, before the first install.
# `make demo` needs only the core tools; the test suite also needs the areas' (EXTRA_APT_PACKAGES).
sysdeps-core:
	@$(MAKE) --no-print-directory sysdeps EXTRA_APT_PACKAGES=

sysdeps:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ ! -f $(APT_STAMP) ]; then apt-get update -qq && touch $(APT_STAMP); fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: sysdeps-core venv
	$(PY) -m bench.demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check protocol

typecheck: venv
	$(VENV)/bin/mypy protocol source_agent target_agent vzcommon appliance

unit: sysdeps venv
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; exit $$rc

# The whole suite, as CI runs it: static checks, the tests, then the appliance image build and boot
# test (about 4 minutes). `make check` is the same without the appliance image.
test: sysdeps venv lint typecheck unit appliance-test

check: sysdeps venv lint typecheck unit

fuzz: venv
	VZREP_FUZZ_INPUTS=2000000 $(VENV)/bin/pytest -q tests/protocol/test_fuzz.py

bench: sysdeps venv
	$(PY) -m bench.run $(BENCH_ARGS)

# What asyncssh alone costs to move scenario (b)'s bytes, next to a vzrep pass of the same bytes.
bench-transport: sysdeps venv
	$(PY) -m bench.transport

# Both agents on uvloop (the default) against asyncio's own loop, alternated pairs of full and incremental passes.
bench-loops: sysdeps venv
	$(PY) -m bench.loops

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info source_agent/native/_blockscan*.so

# Area fragments (vSphere/vcsim, appliance image, ...) add targets and EXTRA_APT_PACKAGES.
-include mk/*.mk
# Prerequisites the fragments add (vcsim for the vSphere tests); listed here, after the includes.
unit: $(UNIT_PREREQS)
