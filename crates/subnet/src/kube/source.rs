//! A collection of the Kubernetes API as a [`Source`] of the list-watch driver, for any kind,
//! cluster-scoped or namespaced (`/api/v1/nodes`, `/api/v1/pods` for every namespace,
//! `/apis/networking.k8s.io/v1/networkpolicies`): a list in pages, then a watch from the
//! list's resourceVersion with bookmarks. A 410 or "too large resource version" re-lists; the
//! end of a watch (its timeout) watches again from the last version seen; a 401 reads the
//! credentials again; a watch silent for longer than its timeout is started over.
//!
//! Each page and event goes to the source's [`Consumer`], reduced there to what it means: the
//! source never holds more than one page of full objects.

use super::conn::{req, Conn};
use super::lines::{LineError, WatchLines};
use crate::listwatch::{Failure, Next, Source};
use crate::SubnetError;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The server ends each watch after about this long (client-go picks 5–10 minutes).
pub(crate) const WATCH_SECONDS: u64 = 290;
/// No event, not even a bookmark, for this long: the watch is dead; start another.
const IDLE_LIMIT: Duration = Duration::from_secs(WATCH_SECONDS + 30);
/// Objects per list page. A real Node is ~10 KB, so a page of 100 is ~1 MB of JSON held at
/// once (500 measured 8-10 MiB more peak RSS at 5000 nodes, for ~0.1 s less start time).
pub(crate) const PAGE: usize = 100;

/// What the source needs of an object: its resourceVersion.
pub trait Object: DeserializeOwned + Clone + Send + 'static {
    fn resource_version(&self) -> Option<&str>;
}

/// Where a source hands what it learns.
pub trait Consumer<T>: Send {
    /// One page of a listing, in order.
    fn page(&mut self, items: Vec<T>);
    /// The listing is complete: everything not in it is gone.
    fn listed(&mut self);
    /// An object created or changed.
    fn applied(&mut self, obj: T);
    /// An object deleted (its last state).
    fn deleted(&mut self, obj: T);
}

pub struct KubeSource<T, C> {
    conn: Arc<Conn>,
    /// The collection's path, `/api/v1/nodes`.
    path: String,
    /// Its resource name for errors (`nodes`) and its kind for logs (`node`).
    resource: &'static str,
    kind: &'static str,
    consumer: C,
    _t: PhantomData<fn() -> T>,
}

impl<T: Object, C: Consumer<T>> KubeSource<T, C> {
    pub(crate) fn new(
        conn: Arc<Conn>,
        path: &str,
        resource: &'static str,
        kind: &'static str,
        consumer: C,
    ) -> Self {
        Self {
            conn,
            path: path.into(),
            resource,
            kind,
            consumer,
            _t: PhantomData,
        }
    }
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct List<T> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    cont: Option<String>,
}

/// The API server's answer to a resourceVersion newer than its own (its storage lost its
/// history: restored from a backup, a new etcd): a 504 "Too large resource version", which
/// client-go's reflector answers by listing again.
fn too_large(code: u16, message: &str) -> bool {
    code == 504 && message.contains("Too large resource version")
}

impl<T: Object, C: Consumer<T>> Source for KubeSource<T, C> {
    type Version = String;
    type Stream = WatchLines<kube::client::Body>;

    fn version_word(&self) -> &'static str {
        "resourceVersion"
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn list(&mut self) -> Result<String, Failure> {
        let mut cont = String::new();
        let mut rv = String::new();
        loop {
            let mut path = format!("{}?limit={PAGE}", self.path);
            if !cont.is_empty() {
                path.push_str("&continue=");
                path.push_str(&cont);
            }
            let page: List<T> = self
                .conn
                .request("list", self.resource, || {
                    req(http::Method::GET, &path, None, Vec::new())
                })
                .await
                .map_err(|e| Failure::Failed {
                    what: format!("listing {}s failed", self.kind),
                    why: e.to_string(),
                })?;
            if rv.is_empty() {
                rv = page.metadata.resource_version.unwrap_or_default();
            }
            self.consumer.page(page.items);
            match page.metadata.cont.filter(|c| !c.is_empty()) {
                Some(c) => cont = c,
                None => break,
            }
        }
        self.consumer.listed();
        Ok(rv)
    }

    async fn watch(&mut self, from: &String) -> Result<Self::Stream, Failure> {
        let path = format!(
            "{}?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}",
            self.path
        );
        let what = format!("starting the {} watch failed", self.kind);
        let client = self.conn.client();
        let r = req(http::Method::GET, &path, None, Vec::new());
        let started = tokio::time::timeout(
            super::conn::REQUEST_TIMEOUT,
            open_watch(&client, r, self.resource),
        )
        .await;
        match started {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                if let SubnetError::Kube {
                    code: Some(401), ..
                } = e
                {
                    info!("the API server refused our credentials; reading them again");
                    if let Err(e) = self.conn.rebuild().await {
                        warn!(error = %e, "reading the credentials again failed");
                    }
                }
                match &e {
                    SubnetError::Kube {
                        code: Some(c), msg, ..
                    } if *c == 410 || too_large(*c, msg) => Err(Failure::HistoryGone(msg.clone())),
                    _ => Err(Failure::Failed {
                        what,
                        why: e.to_string(),
                    }),
                }
            }
            Err(_) => Err(Failure::Failed {
                what,
                why: "no answer within 10 s".into(),
            }),
        }
    }

    async fn next(&mut self, stream: &mut Self::Stream) -> Next<String> {
        use kube::core::WatchEvent as W;
        let what = format!("the {} watch failed", self.kind);
        let ev = match tokio::time::timeout(IDLE_LIMIT, stream.next::<T>()).await {
            Ok(Some(Ok(ev))) => ev,
            // The server ended the watch: watch again from the last version.
            Ok(None) => return Next::Closed,
            // An error answered inside the stream: as an ERROR event.
            Ok(Some(Err(LineError::Status { code, message }))) => W::Error(Box::new(
                kube::core::Status::failure(&message, "").with_code(code),
            )),
            Ok(Some(Err(e))) => {
                return Next::Failed {
                    what,
                    why: e.to_string(),
                }
            }
            Err(_) => {
                return Next::Failed {
                    what: format!("the {} watch went silent", self.kind),
                    why: format!("nothing for {} s", IDLE_LIMIT.as_secs()),
                }
            }
        };
        match ev {
            W::Added(o) | W::Modified(o) => {
                let v = o.resource_version().map(String::from);
                self.consumer.applied(o);
                Next::Moved(v)
            }
            W::Deleted(o) => {
                let v = o.resource_version().map(String::from);
                self.consumer.deleted(o);
                Next::Moved(v)
            }
            W::Bookmark(b) => Next::Moved(Some(b.metadata.resource_version)),
            W::Error(s) if s.code == 410 || too_large(s.code, &s.message) => {
                Next::Relist(s.message)
            }
            W::Error(s) => Next::Failed {
                what,
                why: format!("{} ({})", s.message, s.code),
            },
        }
    }
}

/// Starts a watch: its stream of events, or the server's refusal.
async fn open_watch(
    client: &kube::Client,
    r: http::Request<Vec<u8>>,
    resource: &'static str,
) -> Result<WatchLines<kube::client::Body>, SubnetError> {
    let (mut parts, body) = r.into_parts();
    // Every event as it is sent, not a compressed stream.
    parts.headers.insert(
        "accept-encoding",
        http::HeaderValue::from_static("identity"),
    );
    let r = http::Request::from_parts(parts, kube::client::Body::from(body));
    let res = client
        .send(r)
        .await
        .map_err(|e| super::conn::kube_err("watch", resource, e))?;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(WatchLines::new(res.into_body()));
    }
    // A refusal is a small Status object; no more than 64 KiB of it is read.
    let body = http_body_util::Limited::new(res.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = match serde_json::from_slice::<kube::core::Status>(&body) {
        Ok(s) if !s.message.is_empty() => s.message,
        Ok(s) => s.reason,
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    };
    Err(SubnetError::Kube {
        op: "watch",
        target: resource.into(),
        msg,
        code: Some(status.as_u16()),
    })
}
