//! The etcd client behind the subnet manager: one client per endpoint, connected lazily, so an
//! etcd that is down at start is waited for like any outage, and authenticated lazily, so
//! credentials need no etcd at start either. Once authenticated, a client refreshes its token
//! by itself whenever etcd calls it invalid (simple tokens live in etcd's memory and die when
//! it restarts), as Go's client does.
//!
//! Every call goes to the endpoint that answered last and moves on to the next one when that
//! endpoint cannot be reached (refused, unreachable, no answer in time), as Go's client does:
//! upstream's default `--etcd-endpoints` names `127.0.0.1:4001` first, where etcd v3 does not
//! listen. (etcd-client's own balancing over several endpoints sends a request to a dead one
//! and fails it.) An answer from etcd itself (a failed comparison, a refused token) is the
//! caller's, never a reason to move on.

use super::{tls, EtcdOptions, REQUEST_TIMEOUT};
use crate::error::EtcdCause;
use crate::SubnetError;
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// etcd's answer to credentials when authentication is off; Go's client goes on without a
/// token then, and so do we.
const AUTH_NOT_ENABLED: &str = "authentication is not enabled";

/// One endpoint's client.
struct Endpoint {
    url: String,
    client: Client,
    /// Whether the credentials are in this client (its token refresh needs them there).
    authenticated: AtomicBool,
}

#[derive(Clone)]
pub(crate) struct Conn {
    endpoints: Arc<Vec<Endpoint>>,
    /// The endpoint calls go to first: the last one that answered.
    current: Arc<AtomicUsize>,
    creds: Option<(String, String)>,
}

/// Whether an error says the endpoint could not be reached (worth trying the next one),
/// rather than an answer of etcd's.
pub(crate) fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
        }
        _ => false,
    }
}

impl Conn {
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, SubnetError> {
        let plan = tls::plan(opts)?;
        if plan.warn {
            warn!("{}", plan.description);
        } else {
            info!("{}", plan.description);
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_auto_token_refresh(true);
        if let Some(t) = plan.options {
            co = co.with_tls(t);
        }
        if opts.endpoints.is_empty() {
            return Err(SubnetError::Endpoints("is empty".into()));
        }
        let mut endpoints = Vec::new();
        for url in &opts.endpoints {
            // Without credentials the client only builds its channel here; etcd is first
            // asked by the first request.
            let client = tokio::time::timeout(
                REQUEST_TIMEOUT,
                Client::connect([url.as_str()], Some(co.clone())),
            )
            .await
            .map_err(|_| SubnetError::Timeout {
                op: "connect",
                key: url.clone(),
                secs: REQUEST_TIMEOUT.as_secs(),
            })?
            .map_err(|e| SubnetError::Connect {
                endpoints: url.clone(),
                cause: e.into(),
            })?;
            endpoints.push(Endpoint {
                url: url.clone(),
                client,
                authenticated: AtomicBool::new(false),
            });
        }
        let creds =
            (!opts.username.is_empty()).then(|| (opts.username.clone(), opts.password.clone()));
        Ok(Self {
            endpoints: Arc::new(endpoints),
            current: Arc::default(),
            creds,
        })
    }

    /// Endpoint `i`'s client, authenticated first when credentials are configured.
    async fn client_at(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let ep = &self.endpoints[i];
        let mut c = ep.client.clone();
        if let (false, Some(creds)) = (ep.authenticated.load(Ordering::Acquire), &self.creds) {
            match c.update_user(Some(creds.clone())).await {
                Err(e) if e.to_string().contains(AUTH_NOT_ENABLED) => {
                    warn!(user = %creds.0, endpoint = %ep.url, "etcd authentication is not enabled: going on without a token");
                }
                Err(e) => return Err(e),
                Ok(()) => info!(user = %creds.0, endpoint = %ep.url, "authenticated to etcd"),
            }
            ep.authenticated.store(true, Ordering::Release);
        }
        Ok(c)
    }

    /// Runs `f` on the endpoint that answered last, moving on to the next endpoint while one
    /// cannot be reached; the last error when none can. `op` and `key` name the call in
    /// errors.
    pub async fn call<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, SubnetError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Acquire) % n;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let attempt = async {
                let c = self.client_at(i).await?;
                f(c).await
            };
            let err = match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(v)) => {
                    if i != start {
                        info!(endpoint = %self.endpoints[i].url, "etcd answers at this endpoint; using it");
                    }
                    self.current.store(i, Ordering::Release);
                    return Ok(v);
                }
                Ok(Err(e)) if !unreachable(&e) => {
                    return Err(SubnetError::Etcd {
                        op,
                        key: key.to_string(),
                        cause: e.into(),
                    })
                }
                Ok(Err(e)) => SubnetError::Etcd {
                    op,
                    key: key.to_string(),
                    cause: EtcdCause(e),
                },
                Err(_) => SubnetError::Timeout {
                    op,
                    key: key.to_string(),
                    secs: REQUEST_TIMEOUT.as_secs(),
                },
            };
            if n > 1 {
                debug!(endpoint = %self.endpoints[i].url, error = %err, "etcd endpoint unreachable; trying the next one");
            }
            last = Some(err);
        }
        // Next time, start after the one tried first.
        let _ = self.current.compare_exchange(
            start,
            (start + 1) % n,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        Err(last.unwrap_or(SubnetError::Endpoints("is empty".into())))
    }

    /// Fetches a new token after etcd refused ours (the watch has no automatic refresh).
    pub async fn reauthenticate(&self) -> Result<(), SubnetError> {
        let user = self.creds.as_ref().map(|c| c.0.clone()).unwrap_or_default();
        self.call("authenticate as", &user, |c| async move {
            c.refresh_token().await
        })
        .await
    }
}

/// Whether etcd refused a request or cancelled a watch because of our token.
pub(crate) fn is_auth_failure(text: &str) -> bool {
    text.contains("invalid auth token") || text.contains("Unauthenticated")
}
