# hanfs: `make demo` runs the whole job locally; `make test` installs what the tests need and runs them all.
SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the tests drive for real: rdiff (librsync), exportfs (nfs-utils), the UML kernel
# rig, libnfs' nfs-cat, PostgreSQL and MariaDB for the xCAT import, rsync for the benchmarks, rpm
# to check the package `make package` builds.
DEB_PACKAGES := rdiff nfs-kernel-server user-mode-linux busybox-static kmod cpio iproute2 dash \
	libnfs-utils postgresql mariadb-server rsync attr acl util-linux rpm python3 e2fsprogs openssl
HANFS ?= $(or $(CARGO_TARGET_DIR),target)/debug/hanfs

.PHONY: all build deps test unit lint deny integration soak-failover package demo bench bench-sync bench-nochange bench-statelite bench-lag bench-scale bench-memory bench-apply fuzz fuzz-seeds clean

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
	@command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The dependency graph against deny.toml: licenses, bans (duplicate versions) and sources always;
# advisories (RustSec) only when its database can be fetched, else it says why it skipped them.
ADVISORY_DB := https://github.com/rustsec/advisory-db
deny:
	@command -v cargo-deny >/dev/null || { echo "make deny: cargo-deny is missing (make deps installs it)" >&2; exit 1; }
	$(CARGO) deny --locked check licenses bans sources
	@if timeout 30 git ls-remote $(ADVISORY_DB) HEAD >/dev/null 2>&1; then \
		echo "$(CARGO) deny --locked check advisories"; $(CARGO) deny --locked check advisories; \
	else \
		echo "make deny: advisories SKIPPED: the RustSec database ($(ADVISORY_DB)) cannot be reached from here"; \
	fi

# One build, then every test in parallel (nextest), then the real-kernel rig.
test: deps lint deny
	$(CARGO) nextest run --workspace --locked --no-fail-fast
	HANFS=$(HANFS) integration/run.sh

unit:
	$(CARGO) nextest run --workspace --locked

integration: build
	HANFS=$(HANFS) integration/run.sh

# Issue #12's no-false-failover goal, not in `make test`: the rig's soak-failover scenario alone,
# `hanfs daemon` (default health settings, failover = "auto") for SOAK_SECS with one SN's network
# delayed and lossy (sch_netem in the UML guest); passes with 0 fences and 0 failed node reads.
SOAK_SECS ?= 600
soak-failover:
	$(CARGO) build -p hanfs --locked
	HANFS=$(HANFS) HANFS_RIG_SOAK_SECS=$(SOAK_SECS) HANFS_RIG_TIMEOUT=$$(( $(SOAK_SECS) + 300 )) integration/run.sh

# A .deb (cargo-deb) and an .rpm (cargo-generate-rpm) of hanfs with the systemd units, example configs
# and the xCAT postscript, then checked with dpkg-deb and rpm themselves; and the same for service
# nodes (hanfs-agent: the binary built without the `xcat` feature, so without the SQL stack).
# PROFILE=dev packages a debug build (quicker, for checking the packaging only).
PROFILE ?= release
PROFILE_DIR := $(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
package:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	@command -v cargo-generate-rpm >/dev/null || $(CARGO) install --locked cargo-generate-rpm
	@command -v rpm >/dev/null || $(MAKE) deps
	$(CARGO) build --locked -p hanfs --bin hanfs --no-default-features --profile $(PROFILE)
	mkdir -p $(TARGET_DIR)/$(PROFILE_DIR)/agent
	cp $(TARGET_DIR)/$(PROFILE_DIR)/hanfs $(TARGET_DIR)/$(PROFILE_DIR)/agent/hanfs
	$(CARGO) build --locked -p hanfs --bin hanfs --profile $(PROFILE)
	rm -f $(TARGET_DIR)/debian/hanfs*_*.deb $(TARGET_DIR)/generate-rpm/hanfs-*.rpm
	$(CARGO) deb --locked -p hanfs --no-build --profile $(PROFILE) $(if $(filter dev,$(PROFILE)),--fast)
	$(CARGO) deb --locked -p hanfs --no-build --profile $(PROFILE) $(if $(filter dev,$(PROFILE)),--fast) --variant agent
	$(CARGO) generate-rpm -p crates/hanfs --profile $(PROFILE)
	$(CARGO) generate-rpm -p crates/hanfs --profile $(PROFILE) --variant agent
	dist/check-packages.sh $(TARGET_DIR)/debian/hanfs_*.deb $(TARGET_DIR)/generate-rpm/hanfs-[0-9]*.rpm \
		$(TARGET_DIR)/$(PROFILE_DIR)/hanfs
	dist/check-packages.sh $(TARGET_DIR)/debian/hanfs-agent_*.deb $(TARGET_DIR)/generate-rpm/hanfs-agent-[0-9]*.rpm \
		$(TARGET_DIR)/$(PROFILE_DIR)/agent/hanfs

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

# No-change and one-file-change syncs of a generated 24k-entry image to 8 receivers, hanfs against
# rsync daemons (use chroot = yes) in the same run, medians of 5 (needs root; see bench/README.md).
bench-nochange:
	$(CARGO) build --release --locked -p hanfs
	HANFS=$${CARGO_TARGET_DIR:-target}/release/hanfs bench/nochange.sh

# Issue #13's small-file benchmark in the UML rig: the kernel client against kernel nfsd (sync
# export), hanfs' replicated read-write area and an unreplicated one, 1 and CLIENTS (100) clients,
# medians of ROUNDS (3) rounds (bench/statelite.sh; BENCHMARKS.md says what limits the figures).
bench-statelite:
	$(CARGO) build --release --locked -p hanfs
	HANFS=$${CARGO_TARGET_DIR:-target}/release/hanfs bench/statelite.sh

# Replication lag of a kernel-nfsd statelite area copied agent to agent (issue 13 point 4): p50/p99/max
# at 100 small writes per second over 100 node directories for 60 s (SECS, RATE, NODES to change it).
bench-lag:
	bench/lag.sh

# Issue #11's scale rig: the MN, N SNs and a bridge in their own network namespaces, links shaped
# by tc (1 Gbit/s MN uplink and per SN), a generated image update to N = 1, 4, 16, 64 by hanfs star,
# hanfs relay and parallel rsync (prsync's way), every replica checked by an independent walk;
# medians of ROUNDS (3) as a Markdown table (needs root; bench/scale.sh says what it measures).
bench-scale:
	$(CARGO) build --release --locked -p hanfs
	HANFS=$${CARGO_TARGET_DIR:-target}/release/hanfs bench/scale.sh

# Issue #11 point 6: peak RSS of the agent and the controller syncing a generated 1M-entry image
# (ENTRIES, MB to change it), then a no-change sync; the replica walked against the source.
bench-memory:
	$(CARGO) build --release --locked -p hanfs
	HANFS=$${CARGO_TARGET_DIR:-target}/release/hanfs bench/memory.sh

# Issue #11 point 3: one agent against one rsync daemon receiving the same generated update
# forwards and backwards, RUNS (3) each; the receivers' CPU side by side. FS=ext4 (or xfs) puts both
# receivers on a fresh loop-mounted filesystem with a journal, as an SN's would be.
bench-apply:
	$(CARGO) build --release --locked -p hanfs
	HANFS=$${CARGO_TARGET_DIR:-target}/release/hanfs bench/apply.sh

# cargo-fuzz targets for every parser of outside input (fuzz/, not a workspace member). Each runs
# for a fixed count, seeded from fuzz/seeds (rewrite them with `make fuzz-seeds`); the corpus grows
# in fuzz/corpus, crashes land in fuzz/artifacts/<target>. cargo-fuzz needs -Z flags: the stable
# toolchain allows them with RUSTC_BOOTSTRAP=1. The counts take ~1 min each on a 2-core machine
# (~10 min in all); FUZZ_RUNS scales every count (percent).
FUZZ_TARGETS := model_cluster:50000 model_agent:240000 exports_linux:420000 exports_aix:800000 \
	xcat_tabdump:600000 proto_frames:1700000 tree_manifest:900000 tree_plan:900000 \
	delta_signature:850000 delta_patch:1000000
FUZZ_RUNS ?= 100
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O --debug-assertions
	@cd fuzz && summary=""; failed=0; \
	for tr in $(FUZZ_TARGETS); do \
		t=$${tr%%:*}; n=$$(( $${tr##*:} * $(FUZZ_RUNS) / 100 )); \
		mkdir -p corpus/$$t artifacts/$$t; start=$$(date +%s); \
		if RUSTC_BOOTSTRAP=1 cargo fuzz run -O --debug-assertions $$t corpus/$$t seeds/$$t -- \
			-runs=$$n -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 -print_final_stats=1 \
			-artifact_prefix=artifacts/$$t/ >log.$$t 2>&1; then res=ok; else res=CRASH; failed=1; fi; \
		secs=$$(( $$(date +%s) - start )); \
		execs=$$(grep -o 'stat::number_of_executed_units: *[0-9]*' log.$$t | grep -o '[0-9]*$$' || echo '?'); \
		summary="$$summary$$(printf '%-16s %10s execs %5ss corpus %5s %s' $$t "$$execs" $$secs $$(ls corpus/$$t | wc -l) $$res)\n"; \
	done; \
	printf "\nfuzz summary (logs in fuzz/log.<target>, crashes in fuzz/artifacts/<target>):\n$$summary"; \
	exit $$failed

fuzz-seeds:
	fuzz/seeds.sh

clean:
	$(CARGO) clean
