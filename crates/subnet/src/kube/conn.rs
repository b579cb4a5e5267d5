//! The connection to the Kubernetes API, as client-go's `BuildConfigFromFlags` makes it:
//! `--kubeconfig-file` (with `--kube-api-url` overriding its server), else `--kube-api-url`
//! with the in-cluster credentials when there are any, else in-cluster
//! (`KUBERNETES_SERVICE_HOST/PORT`, the service-account token and CA). Every request has a
//! deadline; when the server answers 401 the client is made again (token and CA read again:
//! a rotated service-account token is picked up at once) and the request retried once.

use crate::SubnetError;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use std::sync::RwLock;
use std::time::Duration;

/// How long a single (non-watch) request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the API server is and who we are.
#[derive(Debug, Clone, Default)]
pub struct ApiSource {
    /// `--kubeconfig-file`.
    pub kubeconfig: String,
    /// `--kube-api-url`.
    pub api_url: String,
}

pub(crate) struct Conn {
    source: ApiSource,
    client: RwLock<kube::Client>,
    /// Where the API is, for messages.
    pub server: String,
}

fn file_err(path: &str, e: impl std::fmt::Display) -> SubnetError {
    SubnetError::File {
        path: path.to_string(),
        msg: e.to_string(),
    }
}

/// kube's errors as ours: the HTTP status when the server answered, the cause otherwise.
pub(crate) fn kube_err(op: &'static str, target: &str, e: kube::Error) -> SubnetError {
    let (msg, code) = match &e {
        kube::Error::Api(s) => (
            if s.message.is_empty() {
                s.reason.clone()
            } else {
                s.message.clone()
            },
            Some(s.code),
        ),
        other => (flannel_core::errtext::of(other), None),
    };
    SubnetError::Kube {
        op,
        target: target.to_string(),
        msg,
        code,
    }
}

impl Conn {
    async fn config(source: &ApiSource) -> Result<kube::Config, SubnetError> {
        let url = |u: &str| {
            u.parse::<http::Uri>()
                .map_err(|e| file_err("--kube-api-url", format!("{u:?} is not a URL: {e}")))
        };
        let mut cfg = if !source.kubeconfig.is_empty() {
            let kc = Kubeconfig::read_from(&source.kubeconfig)
                .map_err(|e| file_err(&source.kubeconfig, flannel_core::errtext::of(&e)))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| file_err(&source.kubeconfig, flannel_core::errtext::of(&e)))?
        } else {
            match kube::Config::incluster() {
                Ok(c) => c,
                Err(e) if !source.api_url.is_empty() => {
                    tracing::debug!(error = %e, "no in-cluster credentials; talking to --kube-api-url without them");
                    kube::Config::new(url(&source.api_url)?)
                }
                Err(e) => {
                    return Err(file_err(
                        "in-cluster config",
                        format!(
                            "{} (set --kubeconfig-file or --kube-api-url outside a pod)",
                            flannel_core::errtext::of(&e)
                        ),
                    ))
                }
            }
        };
        if !source.api_url.is_empty() {
            cfg.cluster_url = url(&source.api_url)?;
        }
        cfg.read_timeout = None;
        // kube-rs retries 429, 503 and 504 itself, up to 15 times: a watch from a
        // resourceVersion the server does not have ("Too large resource version", a 504)
        // would be retried for minutes instead of reaching the watch loop, which lists again.
        // Every caller here has its own backoff.
        cfg.default_retry = false;
        // No CA named and verification off (`insecure-skip-tls-verify`, or an http URL): an
        // empty root store, because without one kube-rs loads the system's roots first, and
        // the image has none (/etc/ssl/certs), so the client could not even be made.
        if cfg.accept_invalid_certs && cfg.root_cert.is_none() {
            cfg.root_cert = Some(Vec::new());
        }
        Ok(cfg)
    }

    async fn build(source: &ApiSource) -> Result<(kube::Client, String), SubnetError> {
        let cfg = Self::config(source).await?;
        let server = cfg.cluster_url.to_string();
        let named_ca = cfg.root_cert.is_some();
        let client = kube::Client::try_from(cfg).map_err(|e| {
            let mut msg = flannel_core::errtext::of(&e);
            if !named_ca {
                // In the image there are no system roots to fall back on.
                msg.push_str(
                    " (no certificate-authority is given for the API server, and this system \
                     has no CA bundle in /etc/ssl/certs: name the cluster's CA in the \
                     kubeconfig, or run in a pod with its service account)",
                );
            }
            file_err("Kubernetes client config", msg)
        })?;
        Ok((client, server))
    }

    pub async fn new(source: ApiSource) -> Result<Self, SubnetError> {
        let (client, server) = Self::build(&source).await?;
        Ok(Self {
            source,
            client: RwLock::new(client),
            server,
        })
    }

    pub fn client(&self) -> kube::Client {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the client again (token and CA files read again).
    pub async fn rebuild(&self) -> Result<(), SubnetError> {
        let (c, _) = Self::build(&self.source).await?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = c;
        Ok(())
    }

    /// One request, decoded as `T`; a 401 rebuilds the client and tries once more.
    pub async fn request<T: DeserializeOwned>(
        &self,
        op: &'static str,
        target: &str,
        make: impl Fn() -> http::Request<Vec<u8>>,
    ) -> Result<T, SubnetError> {
        for attempt in 0..2 {
            let client = self.client();
            let r = tokio::time::timeout(REQUEST_TIMEOUT, client.request::<T>(make())).await;
            match r {
                Err(_) => {
                    return Err(SubnetError::Kube {
                        op,
                        target: target.to_string(),
                        msg: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                        code: None,
                    })
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 401 && attempt == 0 => {
                    tracing::info!("the API server refused our credentials; reading them again");
                    self.rebuild().await?;
                }
                Ok(r) => return r.map_err(|e| kube_err(op, target, e)),
            }
        }
        unreachable!("the loop returns on its second pass")
    }
}

/// A request with a JSON body (or none).
pub(crate) fn req(
    method: http::Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> http::Request<Vec<u8>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/json");
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body).unwrap_or_default()
}
