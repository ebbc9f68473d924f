# vgpu-registry developer entry points. Each target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
BIN := target/debug/vgpu-admin
DIST := dist
WHEEL_TOOLS := $(VENV)/.wheel-tools

.PHONY: help build demo test test-rust test-python test-python-pkg test-plugin lint venv wheel dom0-bin clean FORCE \
	shells rpm rpmbuild test-rpm test-xo xo-pack node soak test-soak fuzz

help:
	@echo "make demo   build and walk the main workflow on the bundled XAPI simulator"
	@echo "make test   every suite (what CI runs)"
	@echo "make build  debug binaries"
	@echo "make wheel  the shippable abi3 manylinux2014 wheel of vgpu_registry in $(DIST)/"
	@echo "make dom0-bin  vgpu-admin linked for dom0's glibc 2.17, in $(DIST)/"
	@echo "make rpm   the dom0 RPM of both in $(DIST)/ (RPM_RELEASE=N for another release)"
	@echo "make xo-pack   the Xen Orchestra plugin xo-server-vgpu (npm pack tarball) in $(DIST)/"
	@echo "make soak  mixed CLI and plugin load on a simulated pool for SOAK_SECONDS (default 180)"
	@echo "make fuzz   every fuzz target for FUZZ_SECONDS (default 60) under cargo-fuzz"

build:
	$(CARGO) build --workspace

$(VENV)/.stamp: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.stamp

$(WHEEL_TOOLS): $(VENV)/.stamp rust/python/build-requirements.txt
	$(VPY) -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
		-r rust/python/build-requirements.txt
	touch $@

# What the wheel is built from: a change to any of these (and only these) rebuilds it.
WHEEL_SOURCES := Cargo.toml Cargo.lock rust/registry/Cargo.toml rust/xapi/Cargo.toml \
	rust/python/Cargo.toml rust/python/pyproject.toml rust/python/build-requirements.txt \
	rust/python/check_wheel.py \
	$(shell find rust/registry/src rust/xapi/src rust/python/src rust/python/python -type f \
		-not -path '*/__pycache__/*' -not -name '*.pyc')
WHEEL_STAMP := $(DIST)/.wheel-stamp

# `make wheel` builds only when a source is newer than the last build, or no wheel is left.
wheel: $(WHEEL_STAMP)

# One cp36-abi3 wheel, linked against glibc 2.17 by zig, refused if it needs a newer GLIBC_.
$(WHEEL_STAMP): $(WHEEL_SOURCES) $(if $(wildcard $(DIST)/vgpu_registry-*.whl),,FORCE) | $(WHEEL_TOOLS)
	rm -f $(DIST)/vgpu_registry-*.whl $@
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" maturin build --release --zig --compatibility manylinux2014 \
		-m rust/python/Cargo.toml --out $(DIST)/
	$(VPY) rust/python/check_wheel.py $(DIST)/vgpu_registry-*.whl 2.17
	touch $@

FORCE:

# vgpu-admin for dom0: linked against glibc 2.17 by zig, refused if it needs a newer GLIBC_.
dom0-bin: $(WHEEL_TOOLS)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CARGO) zigbuild --release \
		--target x86_64-unknown-linux-gnu.2.17 -p vgpu-admin
	mkdir -p $(DIST)
	cp target/x86_64-unknown-linux-gnu/release/vgpu-admin $(DIST)/vgpu-admin
	@newest=$$(objdump -T $(DIST)/vgpu-admin | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1); \
	echo "$(DIST)/vgpu-admin: newest $$newest"; \
	[ "$$(printf '%s\nGLIBC_2.17\n' "$$newest" | sort -V | tail -n 1)" = GLIBC_2.17 ] || \
	{ echo "$(DIST)/vgpu-admin needs $$newest, newer than dom0's glibc 2.17"; exit 1; }

# The dom0 RPM (packaging/vgpu-registry.spec) of the two artefacts above: release $(RPM_RELEASE) of the
# workspace version, in $(DIST)/. rpmbuild is Debian's `rpm` package, installed when missing.
RPM_RELEASE ?= 1
rpm: dom0-bin wheel rpmbuild
	RPM_RELEASE=$(RPM_RELEASE) packaging/build-rpm.sh $(DIST)

rpmbuild:
	@if ! command -v rpmbuild >/dev/null; then \
		command -v apt-get >/dev/null || { echo "install rpmbuild (Debian: the rpm package): make rpm needs it"; exit 1; }; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rpm; \
	fi

demo: build
	PYTHON=$(PYTHON) tests/demo/run-demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Includes the short fuzz run (rust/fuzz-check): the committed corpus replayed, and
# VGPU_FUZZ_CASES (default 256) property-based cases per fuzz target and strategy.
test-rust:
	$(CARGO) test --workspace

# The long fuzz run: each target of rust/fuzz for FUZZ_SECONDS under cargo-fuzz (installed when
# missing; built with the stable toolchain), or, where cargo-fuzz cannot build, FUZZ_CASES
# property-based cases per target and strategy. FUZZ_TARGETS to run only some.
FUZZ_SECONDS ?= 60
FUZZ_CASES ?= 20000
fuzz:
	CARGO=$(CARGO) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_CASES=$(FUZZ_CASES) rust/fuzz/run.sh

# The completion and manual suites run zsh and fish (to parse their completion scripts) and groff
# (to check the manual pages); the security suites run strace (to see every program started):
# Debian's packages, installed when missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
shells:
	@if ! command -v zsh >/dev/null || ! command -v fish >/dev/null || ! command -v groff >/dev/null || ! command -v strace >/dev/null; then \
		command -v apt-get >/dev/null || { echo "install zsh, fish, groff and strace: tests/cli and tests/plugin need them"; exit 1; }; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			zsh fish groff-base strace; \
	fi

test-python: build venv shells
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) -m pytest -q tests/xapi_sim tests/mediator_sim tests/cli

# The vgpu_registry package from the wheel in dist/, installed into a venv of CPython 3.6 and of
# 3.12 and run against the XAPI simulator; also checked against `vgpu-admin functions` (the
# core's function table and error codes). A missing interpreter or wheel fails it.
test-python-pkg: build venv wheel
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) -m pytest -q -p no:cacheprovider tests/python

# The plugin run the way xapi runs it, under CPython 2.7 (CLI bridge; XenAPI and six from PyPI),
# 3.6 (the wheel from dist/) and 3.12 (both paths). A missing interpreter fails the suite
# (VGPU_ALLOW_MISSING_INTERPRETERS=1 skips instead, for a developer's machine only).
test-plugin: build venv wheel shells
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) PYTHON=$(CURDIR)/$(VPY) tests/plugin/run-all.sh

# The RPM of `make rpm` queried, installed into scratch roots (rpm --root), its vgpu-admin and its
# plugin (CPython 3.6 with the installed extension, 2.7 through the installed vgpu-admin) run against
# the XAPI simulator, upgraded to a second release and erased; and packaging/vgpu.conf checked
# against the keys and defaults of the core. CI=true turns any skip into a failure.
test-rpm: build venv rpm
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) -m pytest -q -p no:cacheprovider -rfEs tests/rpm

# The Xen Orchestra plugin (xo-integration/) needs Node.js >= 20 and npm.
XO_DIR := xo-integration
node:
	@command -v node >/dev/null && command -v npm >/dev/null || \
		{ echo "xo-integration needs Node.js >= 20 and npm on the PATH"; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || \
		{ echo "xo-integration needs Node.js >= 20, found $$(node --version)"; exit 1; }

# xo-server-vgpu as an installable npm tarball.
xo-pack: node
	mkdir -p $(DIST)
	rm -f $(DIST)/xo-server-vgpu-*.tgz
	cd $(XO_DIR) && npm pack --pack-destination $(CURDIR)/$(DIST)

# Its suites (node --test), with the devDependencies from the committed lock file; they run the
# XAPI simulator, the real plugin and this checkout's vgpu-admin.
test-xo: build venv node
	cd $(XO_DIR) && npm ci --no-audit --no-fund
	cd $(XO_DIR) && VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) PYTHON=$(CURDIR)/$(VPY) npm test

# A short soak (tests/soak/soak.py, ~25 s of load) and the races it found, reproduced one by one.
test-soak: build venv
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) -m pytest -q -p no:cacheprovider tests/soak

# The soak at length: writers and readers through the CLI and the plugin on every host of a
# simulated pool, with XAPI latency injected; prints its figures (docs/reliability.md) and exits
# non-zero on a lost or duplicated registration, `database is locked` or an undocumented failure.
SOAK_SECONDS ?= 180
soak: build venv
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) tests/soak/soak.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

test: lint test-rust test-python test-python-pkg test-plugin test-rpm test-xo test-soak
	@echo "make test: all suites passed"

clean:
	$(CARGO) clean
	rm -rf $(VENV) dist $(XO_DIR)/node_modules

# The plugin's cost per call is measured with the extension from the wheel in $(DIST)/.
.PHONY: bench
bench: venv wheel
	$(CARGO) build --release -p vgpu-admin
	$(VPY) tests/bench/bench.py
