//! `cargo run -p nfs3 --example serve -- DIR [ADDR] [--open]`: serve DIR read-only over NFSv3
//! (default 127.0.0.1:2049; `--open` turns the permission guard off) until interrupted.
//! `serve DIR --walk`: time one walk of DIR into the handle index and exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let open = args.iter().any(|a| a == "--open");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let dir = PathBuf::from(pos.first().expect("usage: serve DIR [ADDR] [--open]"));
    if args.iter().any(|a| a == "--walk") {
        let fs = nfs3::ReplicaFs::open(&dir, 1, true, None).unwrap();
        let t = std::time::Instant::now();
        fs.walk();
        let rss = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss = rss.lines().find(|l| l.starts_with("VmRSS")).unwrap_or_default().to_string();
        println!("walked {} paths in {:?}; {rss}", fs.index_len(), t.elapsed());
        return;
    }
    let addr = pos.get(1).map_or("127.0.0.1:2049", |s| s.as_str()).parse().unwrap();
    let opts = nfs3::Options { export_name: Some("/".into()), check_permissions: !open, ..Default::default() };
    let server = nfs3::serve(&dir, addr, opts).await.unwrap();
    println!("{}", server.local_addr().port());
    tokio::signal::ctrl_c().await.unwrap();
}
