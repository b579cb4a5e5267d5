//! Lease events: what a datastore's watch reports, each lease with who holds it.

use flannel_core::Lease;
use std::sync::Arc;

/// Who holds a lease, as the datastore names it: the etcd key's last segment as written
/// (`10.244.1.0-24`), or the Node's name in Kubernetes mode. Two holders may claim the same
/// subnet (a Node created with another node's podCIDR, a key written by hand): they are two
/// claims, never one lease replacing the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(Arc<str>);

impl Owner {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease and its holder.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub owner: Owner,
    pub lease: Lease,
    /// When the datastore first held it, in its own order (etcd: the key's create revision;
    /// Kubernetes: the Node's creation time in seconds). Decides which of two overlapping
    /// claims was there first when both are learnt at once (a listing); 0 when unknown.
    pub since: i64,
}

impl Claim {
    pub fn new(owner: Owner, lease: Lease, since: i64) -> Self {
        Self {
            owner,
            lease,
            since,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// The complete current set (after connecting, and after a compaction made history unusable).
    Snapshot(Vec<Claim>),
    /// A holder's lease, new or changed.
    Added(Claim),
    /// A holder holds no lease any more.
    Removed(Owner),
}
