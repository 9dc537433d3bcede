//! From the cluster model to the exports one SN serves.

use crate::error::ExportError;
use crate::types::{Entry, Exports, FsLocation, LocKind, Locations};
use model::{Cluster, Dialect, Image, ServiceNode};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Linux options of an image export (before `fsid=` and `replicas=`).
const LINUX_IMAGE: &[&str] = &["ro", "no_root_squash", "no_subtree_check"];
/// Linux options of a statelite export, rw or refer (before `fsid=` and `refer=`).
const LINUX_STATELITE: &[&str] = &["rw", "no_root_squash", "sync", "no_subtree_check"];

/// The exports SN `sn` serves, in render order, checked against every limit of its dialect.
///
/// Images (sorted by export path): `<sn.root>/<image.path>`, read-only, one entry per client spec on
/// Linux; `replicas=` = the SN then its backups that hold the image (none if it is alone).
/// Statelite (areas in config order), Linux: the area directory itself first, read-write with
/// `insecure` (xCAT's setupStatemnt), where the SN has any node of it; then per node (by name)
/// `<area>/<node>` read-write where the placement serves the node from this SN (plus `insecure` when
/// the node was moved here, for clients that follow the referral), `refer=` to the serving SN where
/// this SN is a migrated node's home (`sns[0]`). AIX: the area directory alone, read-write, where
/// the SN has any node of it (xCAT's AIX nodes mount the area itself; see `aix_area`).
pub fn build(cluster: &Cluster, sn: &str) -> Result<Exports, ExportError> {
    let sn = cluster.sn(sn).ok_or_else(|| ExportError::UnknownSn(sn.to_string()))?;
    let mut entries = Vec::new();

    let mut images: Vec<&Image> = cluster.images_on(&sn.name).collect();
    images.sort_by_key(|i| sn.root.join(&i.path));
    if sn.setuphanfs && sn.dialect == Dialect::Aix {
        entries.push(crate::aix::setuphanfs_entry(cluster, sn));
        images.clear();
    }
    for image in images {
        let path = sn.root.join(&image.path).to_string();
        let list: Vec<FsLocation> = cluster
            .replica_set(sn)
            .into_iter()
            .filter(|s| !s.is_sn || image.sns.iter().any(|n| n == s.name))
            .map(|s| FsLocation { path: s.root.join(&image.path).to_string(), host: s.address.fsloc() })
            .collect();
        let locations = (list.len() > 1).then_some(Locations { kind: LocKind::Replicas, list });
        match sn.dialect {
            Dialect::Linux => {
                for client in dedup(&image.clients) {
                    entries.push(Entry {
                        path: path.clone(),
                        client: Some(client.clone()),
                        options: strings(LINUX_IMAGE),
                        locations: locations.clone(),
                    });
                }
            }
            Dialect::Aix => {
                let access = aix_clients(&path, &image.clients)?;
                let mut options = strings(&["vers=4", "ro"]);
                if let Some(a) = &access {
                    options.push(format!("access={a}"));
                }
                options.push(format!("root={}", access.as_deref().unwrap_or("*")));
                entries.push(Entry { path, client: None, options, locations });
            }
        }
    }

    for area in cluster.statelite() {
        let mut nodes: Vec<_> = cluster.nodes().iter().filter(|n| n.uses_area(&area.name)).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if sn.dialect == Dialect::Aix {
            aix_area(cluster, sn, area, &nodes, &mut entries)?;
            continue;
        }
        let mut area_entries = Vec::new();
        for node in nodes {
            let path = format!("{}/{}", area.path, node.name);
            let placement = cluster.placement();
            let serving = placement.serving(&node.name).unwrap_or_default();
            let moved = placement.is_moved(&node.name);
            let locations = if serving == sn.name {
                None
            } else if moved && placement.home(&node.name) == Some(sn.name.as_str()) {
                let to = cluster.sn(serving).ok_or_else(|| ExportError::UnknownSn(serving.to_string()))?;
                Some(Locations {
                    kind: LocKind::Refer,
                    list: vec![FsLocation { path: path.clone(), host: to.address.fsloc() }],
                })
            } else {
                continue;
            };
            // A client that had the data mounted from the old SN follows the referral to this one
            // from an unprivileged port (Linux 6.1, NFSv4 migration recovery), and `secure` nfsd
            // answers it NFS4ERR_PERM: so the moved node's export here admits any source port.
            let admit_moved = moved && serving == sn.name;
            let mut options = strings(LINUX_STATELITE);
            if admit_moved {
                options.push("insecure".to_string());
            }
            for client in dedup(&area.clients) {
                area_entries.push(Entry {
                    path: path.clone(),
                    client: Some(client.clone()),
                    options: options.clone(),
                    locations: locations.clone(),
                });
            }
        }
        // The area directory itself, read-write, on a Linux SN with any node of it (served or
        // referred): xCAT's initrd mounts the parent, makes `<node>`, then remounts `<area>/<node>`
        // (xcat-core 7733d16f, xCAT-server/share/xcat/netboot/rh/dracut_033/xcatroot lines 219, 237,
        // 257), and exports it with xCAT's own options, `insecure` included (SvrUtils.pm
        // setupStatemnt, lines 1742 and 1751). nfsd reaches `<area>/<node>`'s own export (and its
        // `refer=`) through this one only where the node directory is a mount point of its own
        // (fs/nfsd/vfs.c nfsd_cross_mnt), which the agent makes (`statelite_mounts`).
        if !area_entries.is_empty() {
            let mut options = strings(LINUX_STATELITE);
            options.push("insecure".to_string());
            for client in dedup(&area.clients) {
                entries.push(Entry {
                    path: area.path.to_string(),
                    client: Some(client.clone()),
                    options: options.clone(),
                    locations: None,
                });
            }
        }
        entries.append(&mut area_entries);
    }

    if sn.dialect == Dialect::Linux {
        // An image's fsid comes from its path on the MN, so every replica of it has the same fsid
        // whatever the SN's root; other exports' from their own path.
        let mut keys: BTreeMap<&str, String> = BTreeMap::new();
        for e in &entries {
            let key = cluster
                .images_on(&sn.name)
                .find(|i| sn.root.join(&i.path).as_str() == e.path)
                .map(|i| cluster.image_source(i).to_string())
                .unwrap_or_else(|| e.path.clone());
            keys.insert(e.path.as_str(), key);
        }
        // Two exports with one key (a statelite path equal to an image's MN path): keep them apart.
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        for (path, key) in keys.iter_mut() {
            if let Some(owner) = owners.get(key.as_str()) {
                if owner != path {
                    *key = path.to_string();
                }
            }
            owners.entry(key.clone()).or_insert(path);
        }
        let ids = crate::fsid::assign(keys.values().map(String::as_str));
        let fsids: BTreeMap<String, u32> = keys.iter().map(|(p, k)| (p.to_string(), ids[k])).collect();
        for e in &mut entries {
            e.options.push(format!("fsid={}", fsids[&e.path]));
        }
    }
    let ex = Exports { dialect: sn.dialect, entries };
    crate::limits::check(&ex)?;
    Ok(ex)
}

/// AIX statelite: the area directory itself, once, read-write, where the SN has any node of it
/// (served here, or moved away from here, whose running client may still have it mounted).
///
/// xCAT's AIX nodes mount only the area and make `<node>` inside it, as root (xcat-core 7733d16f,
/// xCAT/postscripts/aixlitesetup:53-80: `mount -o llock [-o <statelite.mntopts>] SERVER:<area>`,
/// then `mkdir -m 755 -p <mnt>/<node>`); the boot script xCAT patches into the SPOT mounts the same
/// area (xCAT-server/lib/xcat/plugins/aixinstall.pm:7603, 7625, `$::MOUNT SERVER:<area>`), with
/// `mount -o vers=4` under `site.useNFSv4onAIX` and plain `mount` otherwise (:147, :170-177). So the
/// export admits NFS versions 3 (AIX mount's default, aixlitesetup) and 4 (`vers=3:4`), gives root
/// to its clients (`root=`; root makes the node directories) and is never per node: AIX exports no
/// directory inside another export of the same file system (exports(4)), and no client would ever
/// walk into a `refer=` at `<area>/<node>` (see [`aix_unreferred`]). xCAT itself exports the area
/// only on Linux (SvrUtils.pm setupStatemnt, called from anaconda.pm:699, sles.pm:529,
/// debian.pm:1520); on AIX it is left to the admin, which is what this export is.
fn aix_area(
    cluster: &Cluster,
    sn: &ServiceNode,
    area: &model::Statelite,
    nodes: &[&model::Node],
    entries: &mut Vec<Entry>,
) -> Result<(), ExportError> {
    let placement = cluster.placement();
    let here = nodes.iter().any(|n| {
        placement.serving(&n.name) == Some(sn.name.as_str())
            || (placement.is_moved(&n.name) && placement.home(&n.name) == Some(sn.name.as_str()))
    });
    if !here {
        return Ok(());
    }
    let path = area.path.as_str();
    if let Some(e) = entries.iter().find(|e| within(path, &e.path) || within(&e.path, path)) {
        let why = if sn.setuphanfs && e.path == sn.root.as_str() {
            format!(
                "statelite area inside {}, which SN `{}` exports whole (setuphanfs); move the area out of it",
                sn.root, sn.name
            )
        } else {
            format!(
                "statelite area and export {} nest, and AIX exports no directory inside another of one file \
                 system (exports(4)); move the area out of it",
                e.path
            )
        };
        return Err(ExportError::Unrepresentable { export: path.to_string(), why });
    }
    let access = aix_clients(path, &area.clients)?;
    let mut options = strings(&["vers=3:4", "rw"]);
    if let Some(a) = &access {
        options.push(format!("access={a}"));
    }
    options.push(format!("root={}", access.as_deref().unwrap_or("*")));
    entries.push(Entry { path: path.to_string(), client: None, options, locations: None });
    Ok(())
}

/// Why no export sends node `node` from AIX SN `from` to `to`, or `None` when one does (`from` is
/// not AIX, or the node keeps no statelite data). An AIX node mounts the statelite area itself
/// (see [`build`]), so it reaches `to` only when it mounts again: after it boots from `to` (xCAT
/// repointed, as snmove does for AIX: the data copied, then the node rebooted) or through `from`'s
/// service address moving to `to` (failover). `hanfs migrate` and `hanfs exports` print this line.
pub fn aix_unreferred(cluster: &Cluster, node: &str, from: &str, to: &str) -> Option<String> {
    cluster.sn(from).filter(|s| s.dialect == Dialect::Aix)?;
    let n = cluster.node(node)?;
    let areas: Vec<&str> =
        cluster.statelite().iter().filter(|a| n.uses_area(&a.name)).map(|a| a.path.as_str()).collect();
    if areas.is_empty() {
        return None;
    }
    Some(format!(
        "{node}: no refer= from AIX SN {from}: AIX nodes mount {} itself (xCAT's aixlitesetup), so {node} uses \
         {to} only after it boots from it (xCAT repointed) or once {from}'s service address moves there; what it \
         writes to {from} meanwhile is not on {to}: stop {node} before a planned move, boot it after",
        areas.join(" and "),
    ))
}

/// [`aix_unreferred`] for every node moved away from AIX SN `sn`, its first SN (where a Linux SN
/// would export `refer=`), in name order.
pub fn aix_moves(cluster: &Cluster, sn: &str) -> Vec<String> {
    let p = cluster.placement();
    let mut nodes: Vec<&model::Node> =
        cluster.nodes().iter().filter(|n| p.is_moved(&n.name) && p.home(&n.name) == Some(sn)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.iter().filter_map(|n| aix_unreferred(cluster, &n.name, sn, p.serving(&n.name)?)).collect()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn dedup(v: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = Vec::new();
    for c in v {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// exports(5) client specs as an AIX `access=`/`root=` list (`:`-separated), or `None` for every
/// host. `10.1.0.0/16` becomes the subnet designator `@10.1.0.0/16`; a Linux `@netgroup` becomes
/// the bare netgroup name AIX expects; hosts and IPv4 addresses pass as they are.
fn aix_clients(export: &str, clients: &[String]) -> Result<Option<String>, ExportError> {
    let mut out = Vec::new();
    for c in dedup(clients) {
        let bad = |why: &str| ExportError::Unrepresentable {
            export: export.to_string(),
            why: format!("client `{c}` {why} on AIX"),
        };
        if c == "*" {
            return Ok(None);
        }
        if c.contains(':') {
            return Err(bad("cannot be written (`:` separates AIX list items; use IPv4 or a name)"));
        }
        if c.contains('*') || c.contains('?') || c.contains('[') {
            return Err(bad("uses a wildcard, which AIX access lists do not take"));
        }
        let mapped = if let Some((net, bits)) = c.split_once('/') {
            if net.parse::<IpAddr>().is_err() || bits.parse::<u8>().is_err() {
                return Err(bad("is not an address/prefix subnet"));
            }
            format!("@{c}")
        } else if let Some(ng) = c.strip_prefix('@') {
            ng.to_string()
        } else {
            c.clone()
        };
        if !out.contains(&mapped) {
            out.push(mapped);
        }
    }
    Ok(Some(out.join(":")))
}

/// [`build`] and [`crate::render`] for one SN: the text for its exports file (Linux) or its managed
/// block (AIX).
pub fn render_sn(cluster: &Cluster, sn: &str) -> Result<String, ExportError> {
    Ok(crate::render(&build(cluster, sn)?))
}

/// Whether `path` is `dir` or lies below it (whole components).
fn within(path: &str, dir: &str) -> bool {
    let d = dir.trim_end_matches('/');
    path == dir || d.is_empty() || path.strip_prefix(d).is_some_and(|rest| rest.starts_with('/'))
}
