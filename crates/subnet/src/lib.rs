//! flannel-subnet: where leases live.
//!
//! A [`SubnetManager`] finds the network config, acquires and renews this node's lease, and
//! streams every lease of the cluster. [`etcd::EtcdSubnetManager`] keeps them in etcd v3 with
//! upstream's exact keys and values. The daemon only sees the trait: everything it needs from a
//! datastore is a method here, so a second datastore is a second implementation, not a branch.

mod cidr_index;
pub mod error;
pub mod etcd;
pub mod events;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod kube;
pub mod lease_set;
pub mod listwatch;
mod recurring;
pub mod stats;

pub use error::SubnetError;
pub use events::{Claim, LeaseEvent, Owner};
pub use lease_set::{Conflict, LeaseSet};

use flannel_core::{ConfigError, Lease, LeaseAttrs, MacAddr, NetworkConfig};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use tokio::sync::mpsc;

/// The datastore's own handle for a lease; only the manager that made it reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseHandle(pub(crate) i64);

impl LeaseHandle {
    /// The etcd lease the key hangs on; 0 for a reservation, or a datastore without leases.
    pub fn etcd_lease_id(&self) -> i64 {
        self.0
    }
}

/// This node's lease as the datastore holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnLease {
    /// How the datastore names this node's claim (the etcd key's last segment, the Node).
    pub owner: Owner,
    pub lease: Lease,
    /// How long until the datastore drops the lease unless it is renewed; `Duration::MAX` when
    /// it never expires (a reservation, a Kubernetes node).
    pub ttl: Duration,
    pub(crate) handle: LeaseHandle,
}

impl OwnLease {
    pub fn handle(&self) -> LeaseHandle {
        self.handle
    }
}

/// The VtepMACs a previous lease of this node published, per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredMacs {
    pub v4: Option<MacAddr>,
    pub v6: Option<MacAddr>,
}

/// Public addresses the datastore prescribes for this node before the interface is chosen
/// (Kubernetes: the `node-public-ip` annotations, which replace `--public-ip`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublicIpOverride {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

pub trait SubnetManager: Send + Sync + 'static {
    /// Where the network config lives, for logs (`/coreos.com/network/config`, a file path).
    fn config_location(&self) -> String;

    /// The datastore as the operator names it: `etcd <endpoints>` or `kubernetes <server>`.
    fn datastore(&self) -> String;

    /// What an operator does when the network config does not exist yet: one sentence.
    fn config_missing_hint(&self) -> String;

    /// The network config document, or `None` while it does not exist yet.
    fn get_network_config(
        &self,
    ) -> impl Future<Output = Result<Option<String>, SubnetError>> + Send;

    /// Reads a config document the way this datastore's users expect (etcd: upstream's
    /// `CheckNetworkConfig`).
    fn parse_config(&self, text: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse_and_check(text)
    }

    /// Public addresses this node must use, when the datastore prescribes them.
    fn public_ip_override(
        &self,
    ) -> impl Future<Output = Result<PublicIpOverride, SubnetError>> + Send {
        async { Ok(PublicIpOverride::default()) }
    }

    /// The VTEP MACs our previous lease published (vxlan: `BackendData` and `BackendV6Data`),
    /// so that new devices keep them.
    fn stored_vtep_macs(&self, public_ip: Ipv4Addr) -> impl Future<Output = StoredMacs> + Send;

    /// Takes a subnet for this node. [`SubnetError::NotYet`] means "wait and ask again".
    fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> impl Future<Output = Result<OwnLease, SubnetError>> + Send;

    /// Extends the lease; fails with [`SubnetError::LeaseLost`] when the key is gone or changed.
    fn renew_lease(
        &self,
        lease: &OwnLease,
    ) -> impl Future<Output = Result<OwnLease, SubnetError>> + Send;

    /// Takes our lease back after it vanished from the datastore (expired, deleted by hand).
    fn reclaim_lease(
        &self,
        lease: &OwnLease,
    ) -> impl Future<Output = Result<OwnLease, SubnetError>> + Send;

    /// Publishes new attributes (a new VtepMAC, say) for our lease.
    fn republish(
        &self,
        lease: &OwnLease,
        attrs: &LeaseAttrs,
    ) -> impl Future<Output = Result<OwnLease, SubnetError>> + Send;

    /// Startup is complete (rules, subnet.env): Kubernetes marks the node's network available.
    fn complete_lease(
        &self,
        _lease: &OwnLease,
    ) -> impl Future<Output = Result<(), SubnetError>> + Send {
        async { Ok(()) }
    }

    /// Every lease the datastore holds now, with its holder.
    fn list_leases(&self) -> impl Future<Output = Result<Vec<Claim>, SubnetError>> + Send;

    /// Streams lease events forever (snapshot first, then changes), reconnecting by itself.
    fn watch_leases(&self, tx: mpsc::Sender<LeaseEvent>) -> impl Future<Output = ()> + Send;

    /// The lease watch's counters and its problem now (metrics, `/readyz`, the state snapshot).
    fn stats(&self) -> std::sync::Arc<stats::DatastoreStats>;

    /// Names a lease's holder for logs, as the operator finds it (an etcd key, a node).
    fn describe(&self, owner: &Owner) -> String;

    /// When our lease holds another writer's value: put ours back (true), or only report it
    /// (false: in etcd two nodes then claim one subnet, which needs a person).
    fn restores_own_lease(&self) -> bool {
        false
    }
}
