#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real mutual TLS on loopback: a client from our CA talks, one from another CA is refused.

use std::time::Duration;
use transport::{ca, Identity};

const T: Duration = Duration::from_secs(5);

fn id(dir: &std::path::Path, name: &str) -> Identity {
    Identity::load(&dir.join("ca.pem"), &dir.join(format!("{name}.pem")), &dir.join(format!("{name}.key"))).unwrap()
}

async fn serve_once(server: Identity) -> (String, tokio::task::JoinHandle<Result<String, String>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let acc = tokio_rustls::TlsAcceptor::from(server.server_config("mn").unwrap());
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut c = transport::accept(s, Some(&acc), T).await.map_err(|e| e.to_string())?;
        let m: proto::ToAgent = c.recv().await.map_err(|e| e.to_string())?;
        c.request(&proto::FromAgent::Pong).await.map_err(|e| e.to_string())?;
        assert_eq!(m, proto::ToAgent::Ping);
        Ok(c.peer.clone())
    });
    (addr, h)
}

#[tokio::test]
async fn mutual_tls_and_foreign_ca() {
    let good = tempfile::tempdir().unwrap();
    let evil = tempfile::tempdir().unwrap();
    ca::init(good.path()).unwrap();
    ca::init(evil.path()).unwrap();
    assert!(ca::init(good.path()).is_err(), "a CA is never overwritten");
    ca::issue(good.path(), "sn1", &["127.0.0.1".into()]).unwrap();
    ca::issue(good.path(), "mn", &[]).unwrap();
    ca::issue(evil.path(), "mn", &[]).unwrap();
    assert_eq!(id(good.path(), "sn1").name, "sn1");

    let (addr, h) = serve_once(id(good.path(), "sn1")).await;
    let mut c =
        transport::connect(&addr, "sn1", Some(id(good.path(), "mn").client_config().unwrap()), T).await.unwrap();
    c.request(&proto::ToAgent::Ping).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), proto::FromAgent::Pong);
    assert!(h.await.unwrap().unwrap().starts_with("mn "));

    // A client certificate from another CA: the agent ends the handshake.
    let (addr, h) = serve_once(id(good.path(), "sn1")).await;
    let r = async {
        let mut c = transport::connect(&addr, "sn1", Some(id(evil.path(), "mn").client_config().unwrap()), T).await?;
        c.request(&proto::ToAgent::Ping).await?;
        c.recv().await
    }
    .await;
    assert!(r.is_err());
    let e = h.await.unwrap().unwrap_err();
    assert!(e.contains("TLS"), "{e}");

    // Another SN's certificate from the same CA: refused in the handshake, no frame is read.
    ca::issue(good.path(), "sn2", &[]).unwrap();
    let (addr, h) = serve_once(id(good.path(), "sn1")).await;
    let r = async {
        let mut c = transport::connect(&addr, "sn1", Some(id(good.path(), "sn2").client_config().unwrap()), T).await?;
        c.request(&proto::ToAgent::Ping).await?;
        c.recv().await
    }
    .await;
    assert!(r.is_err(), "sn2 drove sn1's agent: {r:?}");
    let e = h.await.unwrap().unwrap_err();
    assert!(e.contains("TLS") && e.contains("NotValidForName"), "{e}");

    // A controller named otherwise in the agent's config is the only one accepted.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = l.local_addr().unwrap().to_string();
    let acc = tokio_rustls::TlsAcceptor::from(id(good.path(), "sn1").server_config("sn2").unwrap());
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut c = transport::accept(s, Some(&acc), T).await.map_err(|e| e.to_string())?;
        let m: proto::ToAgent = c.recv().await.map_err(|e| e.to_string())?;
        c.request(&proto::FromAgent::Pong).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((m, c.peer.clone()))
    });
    let mut c =
        transport::connect(&addr2, "sn1", Some(id(good.path(), "sn2").client_config().unwrap()), T).await.unwrap();
    c.request(&proto::ToAgent::Ping).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), proto::FromAgent::Pong);
    assert!(h.await.unwrap().unwrap().1.starts_with("sn2 "));

    // The controller refuses an agent whose certificate names another SN.
    let (addr, _h) = serve_once(id(good.path(), "sn1")).await;
    let r = transport::connect(&addr, "sn2", Some(id(good.path(), "mn").client_config().unwrap()), T).await;
    assert!(r.is_err());
}
