//! The fake's own PKI: a CA and a server certificate for the names and addresses clients use,
//! made with rcgen the first time and kept in the fake's directory (a restarted API server keeps
//! its certificates: clients hold its CA), and the rustls server config (HTTP/1.1 only).

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct Pki {
    pub ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

const CA: &str = "ca.crt";
const CERT: &str = "server.crt";
const KEY: &str = "server.key";

/// The PKI kept in `dir`, or a new one (written there) when there is none.
pub fn load_or_make(dir: &Path, sans: &[String]) -> Result<Pki, TlsError> {
    let read = |n: &str| std::fs::read(dir.join(n)).ok();
    if let (Some(ca), Some(cert), Some(key)) = (read(CA), read(CERT), read(KEY)) {
        let cert =
            CertificateDer::from_pem_slice(&cert).map_err(|e| TlsError::Pem(e.to_string()))?;
        let key =
            PrivatePkcs8KeyDer::from_pem_slice(&key).map_err(|e| TlsError::Pem(e.to_string()))?;
        // A key an earlier version left readable is made private.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.join(KEY), std::fs::Permissions::from_mode(0o600));
        return Ok(Pki {
            ca_pem: String::from_utf8_lossy(&ca).into_owned(),
            server_cert: cert,
            server_key: key.secret_pkcs8_der().to_vec(),
        });
    }
    let pki = make(sans)?;
    let write = |n: &str, data: &[u8]| {
        std::fs::write(dir.join(n), data).map_err(|e| TlsError::Pem(format!("writing {n}: {e}")))
    };
    write(CA, pki.ca_pem.as_bytes())?;
    write(CERT, pem("CERTIFICATE", &pki.server_cert).as_bytes())?;
    write_private(
        &dir.join(KEY),
        pem("PRIVATE KEY", &pki.server_key).as_bytes(),
    )
    .map_err(|e| TlsError::Pem(format!("writing {KEY}: {e}")))?;
    Ok(pki)
}

/// Writes a secret readable by its owner only (0600), whatever the umask, also over a file
/// that was there with a looser mode.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}

/// DER as PEM (base64 in 64-column lines).
fn pem(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("stored certificates: {0}")]
    Pem(String),
}

/// A fresh CA and a server certificate signed by it, for `sans` (IP addresses or DNS names).
pub fn make(sans: &[String]) -> Result<Pki, TlsError> {
    let ca = Ca::new("flannel-kube-fake CA")?;
    let (cert, key) = ca.issue(sans, "kube-apiserver (fake)", true)?;
    Ok(Pki {
        ca_pem: ca.pem.clone(),
        server_cert: cert.der().clone(),
        server_key: key.serialize_der(),
    })
}

/// A certificate authority that issues server and client certificates: the one generator of
/// the workspace (the API fake's PKI, the tests' etcd with TLS).
pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Result<Self, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = ca.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(ca, key),
        })
    }

    /// A certificate for `sans` with common name `cn`, for a server (`server`) or a client.
    pub fn issue(
        &self,
        sans: &[String],
        cn: &str,
        server: bool,
    ) -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
        use rcgen::ExtendedKeyUsagePurpose as Eku;
        let mut p = rcgen::CertificateParams::new(sans.to_vec())?;
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.use_authority_key_identifier_extension = true;
        p.extended_key_usages = vec![if server {
            Eku::ServerAuth
        } else {
            Eku::ClientAuth
        }];
        let key = rcgen::KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }

    /// Writes `<name>.pem` and `<name>.key` (0600) into `dir` for a certificate from [`Ca::issue`].
    pub fn write(
        dir: &Path,
        name: &str,
        (cert, key): &(rcgen::Certificate, rcgen::KeyPair),
    ) -> Result<(), TlsError> {
        let io = |e: std::io::Error| TlsError::Pem(format!("writing {name}: {e}"));
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).map_err(io)?;
        write_private(
            &dir.join(format!("{name}.key")),
            key.serialize_pem().as_bytes(),
        )
        .map_err(io)
    }
}

impl Pki {
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], key)?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_start_reuses_the_certificates() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_make(d.path(), &["127.0.0.1".into()]).unwrap();
        let b = load_or_make(d.path(), &["127.0.0.1".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.server_cert, b.server_cert);
        assert_eq!(a.server_key, b.server_key);
        assert!(b.server_config().is_ok());
    }
}
