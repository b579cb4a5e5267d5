//! The etcd client behind the subnet manager: connected lazily, so an etcd that is down at
//! start is waited for like any outage, and authenticated lazily, so credentials need no etcd
//! at start either. Once authenticated, the client refreshes its token by itself whenever etcd
//! calls it invalid (simple tokens live in etcd's memory and die when it restarts), as Go's
//! client does.

use super::{tls, EtcdOptions, REQUEST_TIMEOUT};
use crate::SubnetError;
use etcd_client::{Client, ConnectOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// etcd's answer to credentials when authentication is off; Go's client goes on without a
/// token then, and so do we.
const AUTH_NOT_ENABLED: &str = "authentication is not enabled";

#[derive(Clone)]
pub(crate) struct Conn {
    client: Client,
    creds: Option<(String, String)>,
    /// Whether `creds` are in the client (its token refresh needs them there).
    authenticated: Arc<AtomicBool>,
    endpoints: String,
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
        let endpoints = opts.endpoints.join(",");
        // Without credentials the client only builds its channel here; etcd is first asked by
        // the first request, which the caller retries like any other.
        let client =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&opts.endpoints, Some(co)))
                .await
                .map_err(|_| SubnetError::Timeout {
                    op: "connect",
                    key: endpoints.clone(),
                    secs: REQUEST_TIMEOUT.as_secs(),
                })?
                .map_err(|e| SubnetError::Connect {
                    endpoints: endpoints.clone(),
                    cause: e.into(),
                })?;
        let creds =
            (!opts.username.is_empty()).then(|| (opts.username.clone(), opts.password.clone()));
        Ok(Self {
            authenticated: Arc::new(AtomicBool::new(creds.is_none())),
            client,
            creds,
            endpoints,
        })
    }

    /// A client for one request, authenticated first when credentials are configured.
    pub async fn client(&self) -> Result<Client, SubnetError> {
        let mut c = self.client.clone();
        if !self.authenticated.load(Ordering::Acquire) {
            if let Some(creds) = &self.creds {
                let r =
                    tokio::time::timeout(REQUEST_TIMEOUT, c.update_user(Some(creds.clone()))).await;
                match r {
                    Err(_) => {
                        return Err(SubnetError::Timeout {
                            op: "authenticate",
                            key: self.endpoints.clone(),
                            secs: REQUEST_TIMEOUT.as_secs(),
                        })
                    }
                    Ok(Err(e)) if e.to_string().contains(AUTH_NOT_ENABLED) => {
                        warn!(user = %creds.0, "etcd authentication is not enabled: going on without a token");
                    }
                    Ok(Err(e)) => {
                        return Err(SubnetError::Etcd {
                            op: "authenticate as",
                            key: creds.0.clone(),
                            cause: e.into(),
                        })
                    }
                    Ok(Ok(())) => info!(user = %creds.0, "authenticated to etcd"),
                }
                self.authenticated.store(true, Ordering::Release);
            }
        }
        Ok(c)
    }

    /// Fetches a new token after etcd refused ours (the watch has no automatic refresh).
    pub async fn reauthenticate(&self) -> Result<(), SubnetError> {
        let c = self.client().await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, c.refresh_token()).await {
            Err(_) => Err(SubnetError::Timeout {
                op: "authenticate",
                key: self.endpoints.clone(),
                secs: REQUEST_TIMEOUT.as_secs(),
            }),
            Ok(Err(e)) => Err(SubnetError::Etcd {
                op: "authenticate as",
                key: self.creds.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
                cause: e.into(),
            }),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// Whether etcd refused a request or cancelled a watch because of our token.
pub(crate) fn is_auth_failure(text: &str) -> bool {
    text.contains("invalid auth token") || text.contains("Unauthenticated")
}
