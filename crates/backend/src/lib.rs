//! flannel-backend: how leases become packets' paths.
//!
//! A backend registers its device for this node, tells what to publish in the lease
//! (`BackendType`/`BackendData`) and the MTU for pods, and reconciles the kernel against the set
//! of known leases whenever asked (lease events, netlink events, timer).

pub mod vxlan;

use flannel_core::{Lease, LeaseAttrs};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The interface flannel sends encapsulated traffic through (upstream `ExternalInterface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own IPv4 address.
    pub iface_addr: Ipv4Addr,
    /// The address published to peers: `--public-ip`, else `iface_addr`.
    pub ext_addr: Ipv4Addr,
    /// The interface's IPv6 address, when IPv6 is enabled.
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// `--public-ipv6`, else `iface_v6_addr`.
    pub ext_v6_addr: Option<Ipv6Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Net(#[from] flannel_net::NetError),
    #[error("invalid {backend} backend config: {msg}")]
    Config { backend: &'static str, msg: String },
    #[error("{0}")]
    Device(String),
}

/// What one reconcile pass changed; zero everywhere means the kernel already matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    pub failed: usize,
    pub device_recreated: bool,
}

pub trait Backend: Send {
    /// `BackendType`, `BackendData` and the public IP to publish in our lease.
    fn lease_attrs(&self) -> LeaseAttrs;

    /// `FLANNEL_MTU`.
    fn mtu(&self) -> u32;

    /// Makes the kernel match the desired state for `own` and every known lease.
    fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> impl Future<Output = Result<ReconcileReport, BackendError>> + Send;
}
