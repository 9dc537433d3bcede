//! rustls configurations for mutual TLS with the `ring` provider.

use crate::{Error, Result};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// What each end loads: the CA that signs peers, its own chain and key.
pub struct Identity {
    pub roots: Arc<RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The name in the certificate (first DNS name, else the common name).
    pub name: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(p: &Path, msg: impl std::fmt::Display) -> Error {
    Error::File { path: p.display().to_string(), msg: msg.to_string() }
}

fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let v: Vec<_> = CertificateDer::pem_file_iter(p)
        .map_err(|e| file_err(p, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(p, e))?;
    if v.is_empty() {
        return Err(file_err(p, "no PEM certificate in the file"));
    }
    Ok(v)
}

impl Identity {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity> {
        let mut roots = RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c).map_err(|e| file_err(ca, e))?;
        }
        let chain = certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
        let name = cert_name(&chain[0]).map_err(|e| file_err(cert, e))?;
        Ok(Identity { roots: Arc::new(roots), chain, key, name })
    }

    pub fn from_files(f: &model::TlsFiles) -> Result<Identity> {
        Identity::load(Path::new(&f.ca), Path::new(&f.cert), Path::new(&f.key))
    }

    /// The agent's side: TLS 1.3, a client certificate from our CA required, and it must name
    /// `controller`: any other certificate of the cluster CA (another SN's) is refused in the
    /// handshake, before a single frame is read.
    pub fn server_config(&self, controller: &str) -> Result<Arc<ServerConfig>> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let verifier = Arc::new(ControllerOnly { inner, name: controller.to_string() });
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    /// A relay listener's side (image fan-out): any client certificate that chains to the CA is
    /// let through the handshake; which SN may fetch what is decided per run by the relay (the
    /// name must be a child the controller announced, with its token). Never the control port.
    pub fn relay_server_config(&self) -> Result<Arc<ServerConfig>> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    /// The controller's side: the agent's certificate must chain to our CA and name the SN.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

/// The CA's verdict first, then the name: only the controller's certificate may drive an agent.
#[derive(Debug)]
struct ControllerOnly {
    inner: Arc<dyn ClientCertVerifier>,
    name: String,
}

impl ClientCertVerifier for ControllerOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let names = cert_names(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if names.iter().any(|n| n.eq_ignore_ascii_case(&self.name)) {
            Ok(ok)
        } else {
            tracing::warn!("refused a client certificate naming {names:?}: only `{}` drives this agent", self.name);
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server name the controller expects in an agent's certificate: the SN's name.
pub fn server_name(sn: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(sn.to_string()).map_err(|e| Error::Tls(format!("`{sn}` as a TLS name: {e}")))
}

/// The identity a certificate carries: its first DNS subject alternative name, else its common name.
pub fn cert_name(der: &CertificateDer<'_>) -> Result<String> {
    cert_names(der)?.into_iter().next().ok_or_else(|| Error::Cert("no DNS name or common name".into()))
}

/// Every name a certificate carries: its DNS subject alternative names, or (only when it has none,
/// as RFC 6125 says) its common name.
pub fn cert_names(der: &CertificateDer<'_>) -> Result<Vec<String>> {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| Error::Cert(e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push((*d).to_string());
            }
        }
    }
    if out.is_empty() {
        if let Some(cn) = c.subject().iter_common_name().next() {
            if let Ok(s) = cn.as_str() {
                out.push(s.to_string());
            }
        }
    }
    Ok(out)
}
