//! Writes the binary seeds (manifests, plans, frames) into `fuzz/seeds/<target>/`, made by the
//! crates' own encoders from a small real tree. Run by `fuzz/seeds.sh`.
use std::fs;
use std::path::Path;

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let d = dir.join(target);
    fs::create_dir_all(&d)?;
    fs::write(d.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = Path::new(&std::env::args().nth(1).ok_or("usage: seeds OUT_DIR")?).to_path_buf();
    let tmp = std::env::temp_dir().join(format!("hanfs-fuzz-seeds-{}", std::process::id()));
    let (v1, v2) = (tmp.join("v1"), tmp.join("v2"));
    for v in [&v1, &v2] {
        fs::create_dir_all(v.join("etc/sub"))?;
        fs::write(v.join("etc/hostname"), b"node1\n")?;
        std::os::unix::fs::symlink("hostname", v.join("etc/link"))?;
        fs::write(v.join("etc/sub/a"), vec![7u8; 3000])?;
    }
    fs::write(v2.join("etc/hostname"), b"node2\n")?;
    fs::write(v2.join("etc/new"), b"new file\n")?;
    fs::hard_link(v2.join("etc/new"), v2.join("etc/new2"))?;
    fs::remove_file(v2.join("etc/sub/a"))?;
    fs::write(v2.join("etc/sub/b"), vec![7u8; 3000])?;
    let m1 = tree::scan(&v1, &[])?;
    let m2 = tree::scan(&v2, &[])?;
    put(&out, "tree_manifest", "v1", &m1.to_bytes()?)?;
    put(&out, "tree_manifest", "v2", &m2.to_bytes()?)?;
    let p = tree::diff(&m1, &m2);
    put(&out, "tree_plan", "v1-v2", &p.to_bytes()?)?;
    put(&out, "tree_plan", "empty-v2", &tree::diff(&tree::Manifest::default(), &m2).to_bytes()?)?;
    use proto::{reply, req, AbsPath, Name, RelPath};
    let name = |s: &str| Name::parse(s).map_err(std::io::Error::other);
    let to = [
        proto::ToAgent::Hello(req::Hello { version: 1, controller: "mn".into() }),
        proto::ToAgent::Open(req::Open {
            image: name("rhels8")?,
            path: RelPath::parse("install/netboot/rhels8").map_err(std::io::Error::other)?,
        }),
        proto::ToAgent::Plan(req::Plan { len: 1234, zstd: true }),
        proto::ToAgent::Chunk(b"chunk data".to_vec()),
        proto::ToAgent::Blob { index: 3, encoding: proto::Encoding::Delta, len: 99, zstd: false },
        proto::ToAgent::Exports(req::Exports { text: "/install *(ro)\n".into() }),
        proto::ToAgent::StateliteOpen(req::StateliteOpen {
            root: AbsPath::parse("/statelite").map_err(std::io::Error::other)?,
            node: name("cn1")?,
        }),
        proto::ToAgent::StateliteRead(req::StateliteRead { path: b"etc/hostname".to_vec() }),
    ];
    for (i, m) in to.iter().enumerate() {
        put(&out, "proto_frames", &format!("to-{i}"), &proto::encode(m)?)?;
    }
    let digest = |s: String| s.parse::<proto::Digest>().map_err(std::io::Error::other);
    let state = proto::ImageState { name: name("rhels8")?, generation: 4, digest: digest(m2.digest())? };
    let from = [
        proto::FromAgent::Hello(reply::Hello { version: 1, agent: "sn1".into() }),
        proto::FromAgent::Opened(reply::Opened { state: state.clone(), drifted: None }),
        proto::FromAgent::Need(reply::Need { indexes: vec![0, 2, 5], resumed: 1 }),
        proto::FromAgent::Verified(reply::Verified { recorded: state, actual: digest(m1.digest())? }),
        proto::FromAgent::Error { reason: "no space".into() },
    ];
    for (i, m) in from.iter().enumerate() {
        put(&out, "proto_frames", &format!("from-{i}"), &proto::encode(m)?)?;
    }
    fs::remove_dir_all(&tmp)?;
    Ok(())
}
