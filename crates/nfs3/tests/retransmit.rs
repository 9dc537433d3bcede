//! A call retransmitted on the same connection with the same xid gets an answer, as from kernel
//! nfsd. The Linux client does that after `timeo` (xCAT's NFS-root mounts: 1.4 s) and discards
//! what it had read of the first reply, so a server that stays silent on it (as `nfs3_server`'s
//! own 60 s transaction tracker does) stalls the node a minute per slow reply: the rig's netem
//! soak showed a node's image reads stopping so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads one whole reply record and returns its xid.
async fn reply_xid(s: &mut tokio::net::TcpStream) -> u32 {
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.unwrap();
    let mut rest = vec![0u8; (u32::from_be_bytes(hdr[..4].try_into().unwrap()) & 0x7fff_ffff) as usize - 4];
    s.read_exact(&mut rest).await.unwrap();
    u32::from_be_bytes(hdr[4..].try_into().unwrap())
}

#[test]
fn a_retransmitted_call_is_answered_again() {
    let (_tmp, root, _) = common::sample_tree();
    common::run(async {
        let opts = nfs3::Options { export_name: Some("/".into()), insecure: true, ..nfs3::Options::default() };
        let server = nfs3::serve(&root, "127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
        for round in 0..3 {
            s.write_all(&common::null_call(0x5eed)).await.unwrap();
            let xid = tokio::time::timeout(Duration::from_secs(5), reply_xid(&mut s))
                .await
                .unwrap_or_else(|_| panic!("transmission {round} of xid 0x5eed was not answered"));
            assert_eq!(xid, 0x5eed, "the reply carries the client's own xid");
        }
        // Other xids on the same connection are answered as before.
        s.write_all(&common::null_call(7)).await.unwrap();
        assert_eq!(reply_xid(&mut s).await, 7);
    });
}
