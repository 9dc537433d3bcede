# hanfs: `make demo` runs the whole job locally; `make test` installs what the tests need and runs them all.
SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the tests drive for real: rdiff (librsync), exportfs (nfs-utils), the UML kernel
# rig, libnfs' nfs-cat, PostgreSQL and MariaDB for the xCAT import, rsync for the benchmarks, rpm
# to check the package `make package` builds.
DEB_PACKAGES := rdiff nfs-kernel-server user-mode-linux busybox-static kmod cpio iproute2 dash \
	libnfs-utils postgresql mariadb-server rsync attr acl util-linux rpm
HANFS ?= $(or $(CARGO_TARGET_DIR),target)/debug/hanfs

.PHONY: all build deps test unit lint integration package demo bench bench-sync clean

all: build

build:
	$(CARGO) build --workspace --all-targets --locked

# Installs only what is missing, so a warm machine pays nothing.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root for apt-get" >&2; exit 1; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# One build, then every test in parallel (nextest), then the real-kernel rig.
test: deps lint
	$(CARGO) nextest run --workspace --locked --no-fail-fast
	HANFS=$(HANFS) integration/run.sh

unit:
	$(CARGO) nextest run --workspace --locked

integration: build
	HANFS=$(HANFS) integration/run.sh

# A .deb (cargo-deb) and an .rpm (cargo-generate-rpm) of hanfs with the systemd units, example configs
# and the xCAT postscript, then checked with dpkg-deb and rpm themselves. PROFILE=dev packages a debug
# build (quicker, for checking the packaging only).
PROFILE ?= release
PROFILE_DIR := $(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
package:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	@command -v cargo-generate-rpm >/dev/null || $(CARGO) install --locked cargo-generate-rpm
	@command -v rpm >/dev/null || $(MAKE) deps
	$(CARGO) build --locked -p hanfs --bin hanfs --profile $(PROFILE)
	rm -f $(TARGET_DIR)/debian/hanfs_*.deb $(TARGET_DIR)/generate-rpm/hanfs-*.rpm
	$(CARGO) deb --locked -p hanfs --no-build --profile $(PROFILE) $(if $(filter dev,$(PROFILE)),--fast)
	$(CARGO) generate-rpm -p crates/hanfs --profile $(PROFILE)
	dist/check-packages.sh $(TARGET_DIR)/debian/hanfs_*.deb $(TARGET_DIR)/generate-rpm/hanfs-*.rpm \
		$(TARGET_DIR)/$(PROFILE_DIR)/hanfs

# Only the binary: the demo needs no test targets. nfs-cat (libnfs-utils) is used for its NFSv3
# read-back when present.
demo:
	$(CARGO) build --locked -p hanfs --bin hanfs
	$(HANFS) demo

bench:
	$(CARGO) bench --workspace --locked
	$(MAKE) bench-sync

# hanfs sync vs rsync daemons on a real Debian image update at 1, 2 and 4 receivers (needs root; the
# images are built once by debootstrap and cached outside the tree, see bench/README.md).
bench-sync:
	$(CARGO) build --release --locked -p hanfs
	bench/make-images.sh
	HANFS=$${CARGO_TARGET_DIR:-target}/release/hanfs bench/run.sh

clean:
	$(CARGO) clean
