//! The Node watch. A list (in pages), then a watch from the list's resourceVersion with
//! bookmarks; a 410 (history gone) re-lists, the end of a watch (its timeout, a dropped
//! connection) watches again from the last version seen, errors back off (100 ms → 5 s) and are
//! logged once per distinct problem.
//!
//! What the watch learns goes into a [`NodeStore`] keyed by node name that keeps only what each
//! node means for flannel (its lease, or why it is none) and marks the nodes that changed. The
//! watch never waits for its reader: a burst of 5000 nodes is 5000 entries in a map, read in
//! one go by whoever is ready (upstream's bounded channel deadlocked there).

use super::annotations::Annotations;
use super::conn::{req, Conn};
use super::lines::{LineError, WatchLines};
use super::node::{node_lease, NodeLease, NodeLite};
use crate::recurring::Recurring;
use crate::SubnetError;
use crate::{Claim, Owner};
use flannel_core::iface::Families;
use http_body_util::BodyExt;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The server ends each watch after about this long (client-go picks 5–10 minutes).
const WATCH_SECONDS: u64 = 290;
/// No event, not even a bookmark, for this long: the watch is dead; start another.
const IDLE_LIMIT: Duration = Duration::from_secs(WATCH_SECONDS + 30);
/// Nodes per list page. A real Node is ~10 KB, so a page of 100 is ~1 MB of JSON held at once
/// (500 measured 8-10 MiB more peak RSS at 5000 nodes, for ~0.1 s less start time).
const PAGE: usize = 100;

#[derive(Default)]
struct Inner {
    /// What each node means, and when it was created (which of two nodes claiming one
    /// subnet was there first).
    nodes: HashMap<String, (NodeLease, i64)>,
    /// Node names whose meaning changed since the reader last looked.
    dirty: BTreeSet<String>,
    synced: bool,
}

/// What every node means now, and which changed.
#[derive(Default)]
pub struct NodeStore {
    inner: Mutex<Inner>,
    pub(crate) changed: Notify,
    /// Counters: lists, watches started, watch errors.
    pub(crate) stats: Mutex<WatchStats>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    pub lists: u64,
    pub watches: u64,
    pub errors: u64,
}

/// A node's name, what it means and when it was created.
pub(crate) type Meaning = (String, NodeLease, i64);

impl NodeStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what `name` means now; marks it when that changed. Logs a node that cannot be
    /// used once per reason.
    fn set(&self, name: &str, meaning: Option<(NodeLease, i64)>) -> bool {
        let mut s = self.lock();
        if s.nodes.get(name) == meaning.as_ref() {
            return false;
        }
        if let Some((NodeLease::Bad(why), _)) = &meaning {
            warn!("skipping node {name}: {why}");
        }
        match meaning {
            Some(m) => s.nodes.insert(name.to_string(), m),
            None => s.nodes.remove(name),
        };
        s.dirty.insert(name.to_string());
        true
    }

    /// Replaces everything with a full listing (nodes missing from it are gone).
    fn replace_all(&self, all: HashMap<String, (NodeLease, i64)>) {
        let gone: Vec<String> = self
            .lock()
            .nodes
            .keys()
            .filter(|n| !all.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.set(&n, None);
        }
        for (n, m) in all {
            self.set(&n, Some(m));
        }
        self.lock().synced = true;
        self.changed.notify_one();
    }

    /// Takes the changed nodes with their claims now (`None`: gone or not a lease).
    pub fn take_changes(&self) -> Vec<(String, Option<Claim>)> {
        let mut s = self.lock();
        let dirty = std::mem::take(&mut s.dirty);
        dirty
            .into_iter()
            .map(|n| {
                let claim = match s.nodes.get(&n) {
                    Some((NodeLease::Lease(l), since)) => {
                        Some(Claim::new(Owner::new(&n), l.clone(), *since))
                    }
                    _ => None,
                };
                (n, claim)
            })
            .collect()
    }

    /// Every claim now.
    pub fn claims(&self) -> Vec<Claim> {
        self.lock()
            .nodes
            .iter()
            .filter_map(|(n, m)| match m {
                (NodeLease::Lease(l), since) => Some(Claim::new(Owner::new(n), l.clone(), *since)),
                _ => None,
            })
            .collect()
    }

    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    fn count(&self, f: impl FnOnce(&mut WatchStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

#[derive(Deserialize)]
struct NodeList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<NodeLite>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    cont: Option<String>,
}

/// What every node means, listed page by page (each page is reduced to meanings before the
/// next is asked for, so 5000 full nodes are never held at once), and the listing's
/// resourceVersion.
async fn list_nodes(
    conn: &Conn,
    meaning: impl Fn(NodeLite) -> Meaning,
) -> Result<(HashMap<String, (NodeLease, i64)>, String), SubnetError> {
    let mut all = HashMap::new();
    let mut cont = String::new();
    let mut rv = String::new();
    loop {
        let mut path = format!("/api/v1/nodes?limit={PAGE}");
        if !cont.is_empty() {
            path.push_str("&continue=");
            path.push_str(&cont);
        }
        let page: NodeList = conn
            .request("list", "nodes", || {
                req(http::Method::GET, &path, None, Vec::new())
            })
            .await?;
        if rv.is_empty() {
            rv = page.metadata.resource_version.unwrap_or_default();
        }
        all.extend(
            page.items
                .into_iter()
                .map(&meaning)
                .map(|(name, m, since)| (name, (m, since))),
        );
        match page.metadata.cont.filter(|c| !c.is_empty()) {
            Some(c) => cont = c,
            None => return Ok((all, rv)),
        }
    }
}

/// The API server's answer to a resourceVersion newer than its own (its storage lost its
/// history: restored from a backup, a new etcd): a 504 "Too large resource version", which
/// client-go's reflector answers by listing again.
fn too_large(code: u16, message: &str) -> bool {
    code == 504 && message.contains("Too large resource version")
}

/// Why the watch cannot go on from its resourceVersion, when that is the error: history
/// compacted away (410), or the server never had it (too large).
fn history_gone(e: &SubnetError) -> Option<&str> {
    match e {
        SubnetError::Kube {
            code: Some(c), msg, ..
        } if *c == 410 || too_large(*c, msg) => Some(msg),
        _ => None,
    }
}

/// Starts a watch: its stream of events, or the server's refusal.
async fn open_watch(
    client: &kube::Client,
    r: http::Request<Vec<u8>>,
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
        .map_err(|e| super::conn::kube_err("watch", "nodes", e))?;
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
        target: "nodes".into(),
        msg,
        code: Some(status.as_u16()),
    })
}

/// The watch loop; runs until the task is dropped.
pub(crate) async fn run(conn: Arc<Conn>, ann: Annotations, fam: Families, store: Arc<NodeStore>) {
    let meaning = |mut n: NodeLite| -> Meaning {
        n.retain_ours(&ann);
        let name = n.metadata.name.clone();
        (name, node_lease(&n, &ann, fam), n.metadata.created())
    };
    let mut rv: Option<String> = None;
    let mut backoff = BACKOFF_MIN;
    let mut trouble = Recurring::default();
    let mut relist_said = false;
    loop {
        let from = match rv.clone() {
            Some(v) => v,
            None => match list_nodes(&conn, meaning).await {
                Ok((all, list_rv)) => {
                    store.count(|s| s.lists += 1);
                    crate::stats::STATS.listed();
                    store.replace_all(all);
                    crate::stats::STATS.progressed();
                    debug!(resource_version = %list_rv, "listed nodes");
                    rv = Some(list_rv.clone());
                    list_rv
                }
                Err(e) => {
                    store.count(|s| s.errors += 1);
                    trouble.failed("listing nodes failed", &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let path = format!(
            "/api/v1/nodes?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}"
        );
        let started = {
            let client = conn.client();
            let r = req(http::Method::GET, &path, None, Vec::new());
            tokio::time::timeout(super::conn::REQUEST_TIMEOUT, open_watch(&client, r)).await
        };
        let mut stream = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if matches!(
                    e,
                    SubnetError::Kube {
                        code: Some(401),
                        ..
                    }
                ) {
                    info!("the API server refused our credentials; reading them again");
                    if let Err(e) = conn.rebuild().await {
                        warn!(error = %e, "reading the credentials again failed");
                    }
                }
                if let Some(why) = history_gone(&e) {
                    // Not an outage: only a new listing can catch up (said once until the
                    // watch works again).
                    if !relist_said {
                        info!("the node watch cannot resume from resourceVersion {from} ({why}); listing again");
                        relist_said = true;
                    }
                    rv = None;
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
                store.count(|s| s.errors += 1);
                trouble.failed("starting the node watch failed", &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                store.count(|s| s.errors += 1);
                trouble.failed("starting the node watch failed", &"no answer within 10 s");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        store.count(|s| s.watches += 1);
        crate::stats::STATS.watch_started();
        let mut failed = false;
        loop {
            let next = tokio::time::timeout(IDLE_LIMIT, stream.next::<NodeLite>()).await;
            let ev = match next {
                Ok(Some(Ok(ev))) => ev,
                Ok(None) => break, // the server ended the watch: watch again from `rv`
                // An error answered inside the stream: as an ERROR event.
                Ok(Some(Err(LineError::Status { code, message }))) => {
                    kube::core::WatchEvent::Error(Box::new(
                        kube::core::Status::failure(&message, "").with_code(code),
                    ))
                }
                Ok(Some(Err(e))) => {
                    store.count(|s| s.errors += 1);
                    trouble.failed("the node watch failed", &e);
                    failed = true;
                    break;
                }
                Err(_) => {
                    trouble.failed(
                        "the node watch went silent",
                        &format!("nothing for {} s", IDLE_LIMIT.as_secs()),
                    );
                    failed = true;
                    break;
                }
            };
            backoff = BACKOFF_MIN;
            trouble.ok("the node watch works again");
            crate::stats::STATS.progressed();
            relist_said = false;
            use kube::core::WatchEvent as W;
            match ev {
                W::Added(n) | W::Modified(n) => {
                    let v = n.metadata.resource_version.clone();
                    let (name, m, since) = meaning(n);
                    if store.set(&name, Some((m, since))) {
                        store.changed.notify_one();
                    }
                    rv = v.or(rv);
                }
                W::Deleted(n) => {
                    let v = n.metadata.resource_version.clone();
                    if store.set(&n.metadata.name, None) {
                        store.changed.notify_one();
                    }
                    rv = v.or(rv);
                }
                W::Bookmark(b) => rv = Some(b.metadata.resource_version),
                W::Error(s) if s.code == 410 || too_large(s.code, &s.message) => {
                    if !relist_said {
                        info!(
                            "the node watch cannot resume from resourceVersion {from} ({}); listing again",
                            s.message
                        );
                        relist_said = true;
                    }
                    rv = None;
                    break;
                }
                W::Error(s) => {
                    store.count(|st| st.errors += 1);
                    trouble.failed(
                        "the node watch failed",
                        &format!("{} ({})", s.message, s.code),
                    );
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}
