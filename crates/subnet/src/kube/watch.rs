//! The Node watch: the generic Kubernetes source (`source`) over `/api/v1/nodes`, driven by
//! the list-watch driver, feeding a [`NodeStore`].
//!
//! What the watch learns goes into the store keyed by node name, which keeps only what each
//! node means for flannel (its lease, or why it is none) and marks the nodes that changed. The
//! watch never waits for its reader: a burst of 5000 nodes is 5000 entries in a map, read in
//! one go by whoever is ready (upstream's bounded channel deadlocked there).

use super::annotations::Annotations;
use super::conn::Conn;
use super::node::{node_lease, NodeLease, NodeLite};
use super::source::{Consumer, KubeSource, Object};
use crate::listwatch::{drive, Pauses, Reporting};
use crate::stats::DatastoreStats;
use crate::{Claim, Owner};
use flannel_core::iface::Families;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::warn;

/// Errors back off from 100 ms to 5 s; a watch the server ended is opened again at once.
pub(crate) const PAUSES: Pauses = Pauses {
    min: Duration::from_millis(100),
    max: Duration::from_secs(5),
    after_close: false,
};

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
}

impl Object for NodeLite {
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

/// Reduces each node to what it means before it reaches the store: a listing's pages are
/// gathered and replace everything at its end.
struct NodeConsumer {
    ann: Annotations,
    fam: Families,
    store: Arc<NodeStore>,
    listing: HashMap<String, (NodeLease, i64)>,
}

impl NodeConsumer {
    fn meaning(&self, mut n: NodeLite) -> Meaning {
        n.retain_ours(&self.ann);
        let name = n.metadata.name.clone();
        (
            name,
            node_lease(&n, &self.ann, self.fam),
            n.metadata.created(),
        )
    }
}

impl Consumer<NodeLite> for NodeConsumer {
    fn page(&mut self, items: Vec<NodeLite>) {
        for n in items {
            let (name, m, since) = self.meaning(n);
            self.listing.insert(name, (m, since));
        }
    }

    fn listed(&mut self) {
        self.store.replace_all(std::mem::take(&mut self.listing));
    }

    fn applied(&mut self, n: NodeLite) {
        let (name, m, since) = self.meaning(n);
        if self.store.set(&name, Some((m, since))) {
            self.store.changed.notify_one();
        }
    }

    fn deleted(&mut self, n: NodeLite) {
        if self.store.set(&n.metadata.name, None) {
            self.store.changed.notify_one();
        }
    }
}

/// The watch loop; runs until the task is dropped.
pub(crate) async fn run(
    conn: Arc<Conn>,
    ann: Annotations,
    fam: Families,
    store: Arc<NodeStore>,
    stats: Arc<DatastoreStats>,
) {
    let consumer = NodeConsumer {
        ann,
        fam,
        store,
        listing: HashMap::new(),
    };
    let source = KubeSource::new(conn, "/api/v1/nodes", "nodes", "node", consumer);
    let report = Reporting {
        stats,
        listed: None,
    };
    drive(source, None, PAUSES, report).await
}
