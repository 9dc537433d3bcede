//! `cargo run -p nfs3 --example nfs3_serve -- DIR [ADDR] [--open] [--insecure] [--export=/NAME]`: serve DIR
//! read-only over NFSv3 (default 127.0.0.1:2049, export `/`; `--open` turns the permission
//! guard off, `--insecure` accepts unprivileged client ports) until killed; prints the port once listening. The integration rig runs it.
//! `nfs3_serve DIR --walk`: time one walk of DIR into the handle index and exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let open = args.iter().any(|a| a == "--open");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let dir = PathBuf::from(pos.first().expect("usage: nfs3_serve DIR [ADDR] [--open] [--export=/NAME]"));
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
    let export = args.iter().find_map(|a| a.strip_prefix("--export=")).unwrap_or("/");
    let opts = nfs3::Options {
        export_name: Some(export.into()),
        check_permissions: !open,
        insecure: args.iter().any(|a| a == "--insecure"),
        ..Default::default()
    };
    let server = nfs3::serve(&dir, addr, opts).await.unwrap();
    println!("{}", server.local_addr().port());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
