//! Stable `fsid=` numbers for Linux exports.
//!
//! nfsd identifies an export in its file handles by fsid. Without `fsid=` it derives one from the
//! device or file system UUID, which differs between SNs and changes when a replica is rebuilt, so
//! clients would see stale handles after a failover. hanfs derives the fsid from a path (for an
//! image its path on the MN, see `build`): FNV-1a (32 bit, fixed forever so numbers never change
//! between hanfs versions) kept to 31 bits, never 0 (`fsid=0` is the NFSv4 pseudo-root). Paths on one SN are taken in
//! sorted order; a path whose number is taken (or 0) is re-hashed with a counter (`path\0` + `1`,
//! `2`, ...) until free. The result depends only on the set of paths, and in practice (collisions
//! are ~n²/2³³) only on the path.

use std::collections::{BTreeMap, BTreeSet};

/// FNV-1a, 32 bit.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The fsid a path gets when nothing else on the SN collides with it.
pub fn fsid_of(path: &str) -> u32 {
    candidate(fnv1a32, path, 0)
}

/// fsids are kept to 31 bits: nfs-utils stores `fsid=` in a C `int` and shows larger values as
/// negative numbers (`exportfs -s` printed `fsid=-1701936838` for 2593030458).
pub const FSID_MASK: u32 = 0x7fff_ffff;

fn candidate(hash: fn(&[u8]) -> u32, path: &str, k: u32) -> u32 {
    let h = if k == 0 { hash(path.as_bytes()) } else { hash(format!("{path}\0{k}").as_bytes()) };
    h & FSID_MASK
}

/// Unique, non-zero fsids for a set of export paths.
pub fn assign<'a>(paths: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    assign_with(fnv1a32, paths)
}

/// [`assign`] with another hash (tests force collisions with it).
pub fn assign_with<'a>(hash: fn(&[u8]) -> u32, paths: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let sorted: BTreeSet<&str> = paths.into_iter().collect();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for p in sorted {
        let mut k = 0;
        let mut id = candidate(hash, p, k);
        while id == 0 || used.contains(&id) {
            k += 1;
            id = candidate(hash, p, k);
        }
        used.insert(id);
        out.insert(p.to_string(), id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        // FNV-1a test vectors: hanfs fsids must be the same in every version.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(
            fsid_of("/install/netboot/rh8/x86_64/compute/rootimg"),
            fsid_of("/install/netboot/rh8/x86_64/compute/rootimg")
        );
    }

    #[test]
    fn stable_and_unique() {
        let paths = ["/install/a", "/install/b", "/nodedata/cn001", "/nodedata/cn002"];
        let a = assign(paths);
        let b = assign(paths.iter().rev().copied());
        assert_eq!(a, b, "order of input must not matter");
        let ids: BTreeSet<u32> = a.values().copied().collect();
        assert_eq!(ids.len(), paths.len());
        assert!(!ids.contains(&0));
        assert!(ids.iter().all(|&i| i <= FSID_MASK), "fits a C int: {ids:?}");
        for p in paths {
            assert_eq!(a[p], fsid_of(p));
        }
    }

    #[test]
    fn collisions_are_resolved_deterministically() {
        // A weak hash that collides and hits 0 often, so the re-hash path is exercised.
        fn weak(b: &[u8]) -> u32 {
            b.len() as u32 % 7
        }
        let m = assign_with(weak, ["/ab", "/abcdef", "/cd", "/e"]);
        assert_eq!(m["/ab"], 3);
        assert_eq!(m["/abcdef"], 2, "0 is skipped");
        assert_eq!(m["/cd"], 5, "collides with /ab, re-hashed");
        assert_eq!(m["/e"], 4, "collides with /abcdef's second try");
        assert_eq!(m, assign_with(weak, ["/e", "/cd", "/abcdef", "/ab"]));
    }
}
