//! A minimal CA for hanfs: `ca.pem` + `ca.key` in a directory, certificates `<name>.pem` + `<name>.key`
//! beside them. Keys are ECDSA P-256, written mode 0600.

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::path::{Path, PathBuf};

fn err(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::File { path: p.display().to_string(), msg: e.to_string() }
}

fn write(p: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true).mode(if private { 0o600 } else { 0o644 });
    let mut f = o.open(p).map_err(|e| err(p, e))?;
    f.write_all(text.as_bytes()).map_err(|e| err(p, e))?;
    Ok(())
}

fn validity(p: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(365 * years);
}

/// Creates `dir/ca.pem` and `dir/ca.key`; refuses to overwrite an existing CA.
pub fn init(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let key = KeyPair::generate().map_err(|e| Error::Cert(e.to_string()))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Cert(e.to_string()))?;
    p.distinguished_name.push(DnType::CommonName, "hanfs CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, 20);
    let cert = p.self_signed(&key).map_err(|e| Error::Cert(e.to_string()))?;
    let pem = dir.join("ca.pem");
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write(&pem, &cert.pem(), false)?;
    Ok(pem)
}

/// The CA key file in `dir`: hanfs' `ca.key`, or xCAT's `ca-key.pem`.
fn ca_key_path(dir: &Path) -> PathBuf {
    let ours = dir.join("ca.key");
    if ours.exists() {
        ours
    } else {
        dir.join("ca-key.pem")
    }
}

/// Issues `dir/<name>.pem` + `dir/<name>.key` for both server and client use; `name` is the DNS name
/// (SN name or `mn`), `sans` adds IP addresses or further DNS names.
pub fn issue(dir: &Path, name: &str, sans: &[String]) -> Result<(PathBuf, PathBuf)> {
    model::check_name(name).map_err(|e| Error::Cert(format!("name refused: {e}")))?;
    let ca_pem_path = dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(|e| err(&ca_pem_path, e))?;
    let kp = ca_key_path(dir);
    let ca_key_pem = std::fs::read_to_string(&kp).map_err(|e| err(&kp, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| err(&kp, e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| err(&ca_pem_path, e))?;
    let mut p = CertificateParams::new(vec![name.to_string()]).map_err(|e| Error::Cert(e.to_string()))?;
    for s in sans {
        let san = match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(s.clone().try_into().map_err(|e| Error::Cert(format!("`{s}`: {e}")))?),
        };
        p.subject_alt_names.push(san);
    }
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, 5);
    let key = KeyPair::generate().map_err(|e| Error::Cert(e.to_string()))?;
    let cert = p.signed_by(&key, &issuer).map_err(|e| Error::Cert(e.to_string()))?;
    let (cp, kpath) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    write(&kpath, &key.serialize_pem(), true)?;
    write(&cp, &cert.pem(), false)?;
    Ok((cp, kpath))
}
