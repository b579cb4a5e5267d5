//! flannel-subnet: where leases live.
//!
//! A [`SubnetManager`] finds the network config, acquires and renews this node's lease, and
//! streams every lease of the cluster. [`etcd::EtcdSubnetManager`] keeps them in etcd v3 with
//! upstream's exact keys and values; a Kubernetes manager comes later.

pub mod error;
pub mod etcd;
pub mod events;
mod recurring;

pub use error::SubnetError;
pub use events::{LeaseEvent, LeaseSet};

use flannel_core::{Lease, LeaseAttrs, NetworkConfig};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// This node's lease as the datastore holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnLease {
    pub lease: Lease,
    /// How long until the datastore drops the lease unless it is renewed.
    pub ttl: Duration,
    /// The datastore's handle for the lease (etcd lease ID); 0 for a reservation without TTL.
    pub handle: i64,
}

pub trait SubnetManager: Send + Sync {
    /// The network config document, or `None` while it does not exist yet.
    fn get_network_config(
        &self,
    ) -> impl Future<Output = Result<Option<String>, SubnetError>> + Send;

    /// Takes a subnet for this node: the one already held by our PublicIP, else the previous one
    /// from subnet.env when free, else a random free one. A lost race tries another subnet.
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

    /// Streams lease events forever (snapshot first, then changes), reconnecting by itself.
    fn watch_leases(&self, tx: mpsc::Sender<LeaseEvent>) -> impl Future<Output = ()> + Send;
}
