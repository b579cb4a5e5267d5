//! How flanneld secures its etcd connection, decided from the `--etcd-*` flags and the
//! endpoints' schemes, and said in one log line.
//!
//! Upstream (Go clientv3) drops TLS for `http://` endpoints, requires it for `https://` ones
//! (with the system's roots when no client pair is given, ignoring `--etcd-cafile`), and uses
//! it for scheme-less endpoints only with a client pair. We do the same, except that
//! `--etcd-cafile` is always used to check an https server: a private CA without a client
//! certificate is a normal setup.

use super::EtcdOptions;
use crate::SubnetError;
use etcd_client::{Certificate, Identity, TlsOptions};

/// What the connection will be, for the log and for building the client.
#[derive(Debug)]
pub(crate) struct TlsPlan {
    pub options: Option<TlsOptions>,
    /// One line saying what really happens.
    pub description: String,
    /// Whether the description is a warning (plain text, unverifiable server).
    pub warn: bool,
}

/// What a PEM file must hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// Reads a PEM file and checks that it holds what the flag says, so that a wrong or swapped
/// file is named at start instead of failing deep in the TLS handshake.
fn read_pem(flag: &str, path: &str, want: Pem) -> Result<Vec<u8>, SubnetError> {
    let bad = |msg: String| SubnetError::TlsFile {
        flag: flag.to_string(),
        path: path.to_string(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let has_cert = text.contains("-----BEGIN CERTIFICATE-----");
    let has_key = text.contains("PRIVATE KEY-----");
    match want {
        Pem::Certificate if has_cert => Ok(bytes),
        Pem::PrivateKey if has_key => Ok(bytes),
        Pem::Certificate if has_key => Err(bad(
            "holds a private key, not a certificate (are --etcd-certfile and --etcd-keyfile swapped?)"
                .into(),
        )),
        Pem::PrivateKey if has_cert => Err(bad(
            "holds a certificate, not a private key (are --etcd-certfile and --etcd-keyfile swapped?)"
                .into(),
        )),
        Pem::Certificate => Err(bad("holds no PEM certificate".into())),
        Pem::PrivateKey => Err(bad("holds no PEM private key".into())),
    }
}

pub(crate) fn plan(opts: &EtcdOptions) -> Result<TlsPlan, SubnetError> {
    let https = opts
        .endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = opts
        .endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    if https > 0 && https < opts.endpoints.len() {
        return Err(SubnetError::Endpoints(format!(
            "{}: mixing https:// with other etcd endpoints is not supported; give every endpoint as https://",
            opts.endpoints.join(",")
        )));
    }
    let pair = !opts.keyfile.is_empty() && !opts.certfile.is_empty();
    let half = opts.keyfile.is_empty() != opts.certfile.is_empty();
    let ca = !opts.cafile.is_empty();
    let half_note = if half {
        " (--etcd-certfile and --etcd-keyfile are only used together: the one given is ignored)"
    } else {
        ""
    };
    // Plain text: http:// endpoints always (as upstream); scheme-less ones without a pair.
    if https == 0 && (http == opts.endpoints.len() || !pair) {
        let unused = if pair || ca {
            "; the TLS files given are not used with http:// endpoints (use https://)"
        } else {
            ""
        };
        return Ok(TlsPlan {
            options: None,
            description: format!("talking to etcd in plain text{unused}{half_note}"),
            warn: true,
        });
    }
    let mut tls = TlsOptions::new();
    let server = if ca {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem(
            "--etcd-cafile",
            &opts.cafile,
            Pem::Certificate,
        )?));
        format!("server certificate checked against {}", opts.cafile)
    } else {
        tls = tls.with_native_roots();
        "server certificate checked against the system's CA roots (no --etcd-cafile given)".into()
    };
    let client = if pair {
        let cert = read_pem("--etcd-certfile", &opts.certfile, Pem::Certificate)?;
        let key = read_pem("--etcd-keyfile", &opts.keyfile, Pem::PrivateKey)?;
        tls = tls.identity(Identity::from_pem(cert, key));
        format!("client certificate {}", opts.certfile)
    } else {
        "no client certificate".into()
    };
    Ok(TlsPlan {
        options: Some(tls),
        description: format!("talking to etcd over TLS: {server}; {client}{half_note}"),
        warn: half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(endpoints: &[&str], ca: &str, cert: &str, key: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            cafile: ca.into(),
            certfile: cert.into(),
            keyfile: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn http_endpoints_stay_plain_and_say_why_files_are_unused() {
        let p = plan(&opts(&["http://a:2379"], "/x/ca.pem", "", "")).unwrap();
        assert!(p.options.is_none() && p.warn);
        assert!(
            p.description.contains("not used with http://"),
            "{}",
            p.description
        );
        let p = plan(&opts(&["a:2379"], "", "", "")).unwrap();
        assert!(p.options.is_none());
    }

    #[test]
    fn https_without_a_ca_uses_system_roots_and_mixing_is_refused() {
        let p = plan(&opts(&["https://a:2379"], "", "", "")).unwrap();
        assert!(p.options.is_some());
        assert!(
            p.description.contains("system's CA roots"),
            "{}",
            p.description
        );
        let e = plan(&opts(&["https://a:2379", "http://b:2379"], "", "", "")).unwrap_err();
        assert!(e.to_string().contains("mixing https://"), "{e}");
    }

    #[test]
    fn files_are_checked_for_what_they_hold() {
        let dir = std::env::temp_dir().join(format!("flannel-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        let key = dir.join("k.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        assert!(plan(&opts(&["https://a:1"], c, c, k)).is_ok());
        let e = plan(&opts(&["https://a:1"], c, k, c))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--etcd-certfile") && e.contains("swapped"),
            "{e}"
        );
        let e = plan(&opts(&["https://a:1"], "/nonexistent/ca.pem", "", ""))
            .unwrap_err()
            .to_string();
        assert_eq!(e.matches("/nonexistent/ca.pem").count(), 1, "{e}");
        assert!(e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
