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

.PHONY: all demo test check lint typecheck unit bench bench-transport bench-loops clean sysdeps sysdeps-core venv lock test-latest

all: test

# Every Python package comes from the committed lock (requirements/dev.txt: runtime, dev and the
# build tools, each pinned with its hashes), so a fresh machine installs exactly what was tested.
# The project itself is then built without build isolation, by the locked setuptools.
# VENV=.venv-latest (make test-latest) installs the newest releases pyproject.toml allows instead.
LOCK := requirements/dev.txt
LATEST_VENV := .venv-latest
ifeq ($(VENV),$(LATEST_VENV))
INSTALL_DEPS = $(PY) -m pip install -q --upgrade pip setuptools wheel && \
	$(PY) -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]' --config-settings editable_mode=compat
else
INSTALL_DEPS = $(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK) && \
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
endif

$(STAMP): pyproject.toml setup.py $(LOCK) $(wildcard source_agent/native/*.c source_agent/native/*.h source_agent/native/blake3/*)
	test -x $(PY) || python3 -m venv $(VENV) || { $(MAKE) --no-print-directory APT_PACKAGES=python3-venv EXTRA_APT_PACKAGES= sysdeps && python3 -m venv $(VENV); }
	$(INSTALL_DEPS)  # editable_mode=compat: a path in a .pth, no import hook (~15 ms off every start)
	$(PY) -m pip check -q
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
	$(VENV)/bin/mypy protocol source_agent target_agent vzcommon appliance vsphere pairing failback fuzz

unit: sysdeps venv
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; exit $$rc

# The whole suite, as CI runs it: static checks, the tests, then the appliance image build and boot
# test (about 4 minutes). `make check` is the same without the appliance image.
test: sysdeps venv lint typecheck unit appliance-test

check: sysdeps venv lint typecheck unit

# Regenerate both locks from pyproject.toml (and requirements/build.in) with the locked uv: the newest
# releases the ranges allow, universal markers, hashes for every file. runtime.txt (what the appliance
# installs) is constrained by dev.txt, so the two never disagree.
UV_COMPILE = $(VENV)/bin/uv pip compile -q --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock"
lock: venv
	$(UV_COMPILE) --upgrade pyproject.toml requirements/build.in --extra dev -o requirements/dev.txt
	$(UV_COMPILE) --upgrade pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt

# The suite (without the appliance image) in a separate venv with the newest releases pyproject.toml
# allows: drift in a dependency shows here before a user meets it. Run it before `make lock` and
# before a release; not part of `make test`.
test-latest: sysdeps
	rm -f $(LATEST_VENV)/.installed
	$(MAKE) --no-print-directory VENV=$(LATEST_VENV) check

bench: sysdeps venv
	$(PY) -m bench.run $(BENCH_ARGS)

# What asyncssh alone costs to move scenario (b)'s bytes, next to a vzrep pass of the same bytes.
bench-transport: sysdeps venv
	$(PY) -m bench.transport

# Both agents on uvloop (the default) against asyncio's own loop, alternated pairs of full and incremental passes.
bench-loops: sysdeps venv
	$(PY) -m bench.loops

clean:
	rm -rf $(VENV) $(LATEST_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info source_agent/native/_blockscan*.so

# Area fragments (vSphere/vcsim, appliance image, ...) add targets and EXTRA_APT_PACKAGES.
-include mk/*.mk
# Prerequisites the fragments add (vcsim for the vSphere tests); listed here, after the includes.
unit: $(UNIT_PREREQS)
