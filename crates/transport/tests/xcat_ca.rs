#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Per-SN certificates issued from xCAT's own CA (issue 8 point 11), as crates/xcat/README.md
//! tells an administrator to: the CA made by xCAT's `setup-xcat-ca.sh` (tests/data/xcat-ca), its
//! certificate copied to `ca.pem` beside its key, `hanfs ca issue`. Judged by OpenSSL itself
//! (`openssl verify -purpose`) and by a mutual TLS session between the MN's and an SN's
//! certificates.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use transport::{ca, Identity};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/xcat-ca");

/// A hanfs CA directory made from xCAT's files the documented way.
fn xcat_ca_dir(key: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(DATA).join("ca-cert.pem"), d.path().join("ca.pem")).unwrap();
    std::fs::copy(Path::new(DATA).join(key), d.path().join("ca-key.pem")).unwrap();
    d
}

fn openssl() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            assert!(std::env::var_os("CI").is_none(), "openssl is missing (make deps installs it)");
            eprintln!("SKIP: no openssl on this machine, so OpenSSL cannot judge the certificates");
            false
        }
    }
}

fn verify(dir: &Path, name: &str, purpose: &str) -> (bool, String) {
    let o = Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg(dir.join(format!("{name}.pem")))
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn certificates_issued_from_xcats_ca_are_accepted_by_openssl_for_both_ends() {
    if !openssl() {
        return;
    }
    let d = xcat_ca_dir("ca-key.pem");
    ca::issue(d.path(), "sn1", &["10.0.1.1".into()]).unwrap();
    ca::issue(d.path(), "mn", &[]).unwrap();
    for (name, purpose) in [("sn1", "sslserver"), ("sn1", "sslclient"), ("mn", "sslclient"), ("mn", "sslserver")] {
        let (ok, out) = verify(d.path(), name, purpose);
        assert!(ok, "openssl verify -purpose {purpose} {name}: {out}");
    }
    // The issuer is xCAT's CA, by name and by key: another CA's certificate is not accepted.
    let other = tempfile::tempdir().unwrap();
    ca::init(other.path()).unwrap();
    ca::issue(other.path(), "sn1", &[]).unwrap();
    std::fs::copy(Path::new(DATA).join("ca-cert.pem"), other.path().join("ca.pem.xcat")).unwrap();
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(other.path().join("ca.pem.xcat"))
        .arg(other.path().join("sn1.pem"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "a certificate of another CA verified against xCAT's");
}

#[test]
fn a_pkcs1_key_of_older_openssl_is_refused_by_name_and_nothing_is_written() {
    let d = xcat_ca_dir("ca-key.pkcs1.pem");
    let e = ca::issue(d.path(), "sn1", &[]).unwrap_err().to_string();
    assert!(e.contains("ca-key.pem"), "the refusal names the key file: {e}");
    assert!(!d.path().join("sn1.pem").exists() && !d.path().join("sn1.key").exists());
}

#[tokio::test]
async fn the_mn_and_an_sn_with_certificates_from_xcats_ca_talk_mutual_tls() {
    const T: Duration = Duration::from_secs(5);
    let d = xcat_ca_dir("ca-key.pem");
    ca::issue(d.path(), "sn1", &[]).unwrap();
    ca::issue(d.path(), "mn", &[]).unwrap();
    let id = |n: &str| {
        Identity::load(&d.path().join("ca.pem"), &d.path().join(format!("{n}.pem")), &d.path().join(format!("{n}.key")))
            .unwrap()
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let acc = tokio_rustls::TlsAcceptor::from(id("sn1").server_config("mn").unwrap());
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut c = transport::accept(s, Some(&acc), T).await.map_err(|e| e.to_string())?;
        let m: proto::ToAgent = c.recv().await.map_err(|e| e.to_string())?;
        assert_eq!(m, proto::ToAgent::Ping);
        c.request(&proto::FromAgent::Pong).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(c.peer.clone())
    });
    let mut c = transport::connect(&addr, "sn1", Some(id("mn").client_config().unwrap()), T).await.unwrap();
    c.request(&proto::ToAgent::Ping).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), proto::FromAgent::Pong);
    assert!(h.await.unwrap().unwrap().starts_with("mn "));
}
