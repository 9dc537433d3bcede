//! A released service address takes its connections with it: `Closer::close_connections_to`
//! resets (RST, not FIN) the guarded connections made to that local address and leaves the others
//! alone, so no socket of the address's former life is left for the clients' packets to meet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One NULL call and its whole reply on `s`.
async fn null(s: &mut tokio::net::TcpStream, xid: u32) {
    s.write_all(&common::null_call(xid)).await.unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.unwrap();
    assert_eq!(&hdr[4..], &xid.to_be_bytes(), "reply to our xid");
    let mut rest = vec![0u8; (u32::from_be_bytes(hdr[..4].try_into().unwrap()) & 0x7fff_ffff) as usize - 4];
    s.read_exact(&mut rest).await.unwrap();
}

/// Sockets in /proc/net/tcp (this test's network namespace) whose local end is `ip` (hex, as
/// the kernel prints it) and `port`, in any state but LISTEN.
fn server_sockets(ip: &str, port: u16) -> usize {
    let local = format!("{ip}:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] != "0A"
        })
        .count()
}

#[test]
fn connections_to_a_released_address_are_reset_the_others_kept() {
    let (_tmp, root, _) = common::sample_tree();
    common::run(async {
        // On every address, as an agent serving a floating service address is.
        let opts = nfs3::Options { export_name: Some("/".into()), insecure: true, ..nfs3::Options::default() };
        let server = nfs3::serve(&root, "0.0.0.0:0".parse().unwrap(), opts).await.unwrap();
        let port = server.local_addr().port();
        // 127.0.0.2 stands for the service address, 127.0.0.1 for the SN's own.
        let mut released = tokio::net::TcpStream::connect(("127.0.0.2", port)).await.unwrap();
        let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        null(&mut released, 1).await;
        null(&mut kept, 2).await;
        server.closer().close_connections_to("127.0.0.2".parse().unwrap());
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), released.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "the connection to the released address is open: {r:?}");
        // The server's side is gone at once (reset, no FIN_WAIT socket left with this 4-tuple),
        // while the other connection's is still there: the kernel's table says so.
        let theirs = |ip: &str| server_sockets(ip, port);
        let t = std::time::Instant::now();
        while theirs("0200007F") != 0 {
            assert!(t.elapsed() < Duration::from_secs(3), "a socket of the released address is left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(theirs("0100007F"), 1, "the other connection is kept");
        null(&mut kept, 3).await;
        // A new connection to the address (claimed here again) is served.
        let mut again = tokio::net::TcpStream::connect(("127.0.0.2", port)).await.unwrap();
        null(&mut again, 4).await;
    });
}
