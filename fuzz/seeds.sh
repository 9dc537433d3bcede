#!/bin/bash
# Writes the fuzz seeds into fuzz/seeds/<target>/ from the tests' and the repository's own inputs:
# the example configs, the exports and xCAT fixtures, librsync signatures and deltas made by the
# real `rdiff`, and manifests, plans and frames made by the crates' encoders (examples/seeds.rs).
set -euo pipefail
cd "$(dirname "$0")"
S=seeds
rm -rf "$S" && mkdir -p "$S"/{model_cluster,model_agent,exports_linux,exports_aix,xcat_tabdump,delta_signature,delta_patch}
cp ../dist/hanfs.toml "$S/model_cluster/dist"
for f in ../exports/*/cluster.toml ../crates/xcat/tests/fixtures/expected.toml; do
	cp "$f" "$S/model_cluster/$(basename "$(dirname "$f")")"
done
cp ../dist/agent.toml "$S/model_agent/dist"
printf 'name = "sn1"\nroot = "/install"\nlisten = "0.0.0.0:7600"\nnfs3 = "0.0.0.0:2049"\n' >"$S/model_agent/small"
for f in ../exports/*/*.exports; do cp "$f" "$S/exports_linux/$(basename "$(dirname "$f")")-$(basename "$f")"; done
for f in ../exports/*/*.aix-exports; do cp "$f" "$S/exports_aix/$(basename "$f")"; done
for f in ../crates/xcat/tests/fixtures/cluster/*.csv; do cp "$f" "$S/xcat_tabdump/$(basename "$f")"; done
# librsync's own formats, from the real tool (the MD4 flavour hanfs reads, and the stock BLAKE2
# one it must refuse cleanly).
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
head -c 5000 /dev/urandom >"$t/old"
{ head -c 2000 "$t/old"; echo inserted; tail -c 2500 "$t/old"; } >"$t/new"
rdiff -H md4 -R rollsum -S 8 -b 512 signature "$t/old" "$S/delta_signature/md4"
rdiff signature "$t/old" "$S/delta_signature/blake2"
rdiff -H md4 -R rollsum -S 8 -b 512 signature "$t/old" "$t/sig"
rdiff delta "$t/sig" "$t/new" "$t/delta"
# delta_patch input: one byte of base length (the base is the next bytes), then the delta.
head -c 200 "$t/old" >"$t/small"
{ printf 'hello small new file, with some of the old: '; head -c 100 "$t/small"; } >"$t/snew"
rdiff -H md4 -R rollsum -S 8 -b 64 signature "$t/small" "$t/ssig"
rdiff delta "$t/ssig" "$t/snew" "$t/sdelta"
{ printf '\xc8'; cat "$t/small" "$t/sdelta"; } >"$S/delta_patch/copy"
{ printf '\x00'; cat "$t/delta"; } >"$S/delta_patch/literal"
cargo run -q --example seeds -- "$S"
du -sh "$S"
