//! flannel-backend: how leases become packets' paths.
//!
//! A backend registers its device for this node, tells what to publish in the lease
//! (`BackendType`/`BackendData`) and the MTU for pods, and reconciles the kernel against the set
//! of known leases whenever asked (lease events, netlink events, timer).

mod any;
pub mod batch;
pub mod config;
pub mod datapath;
pub mod diff;
pub mod guard;
pub mod hostgw;
pub mod peers;
pub mod route_guard;
pub mod routes;
pub mod udp;
pub mod vxlan;
pub mod wg;

pub use any::AnyBackend;
pub use config::{BackendConfig, SUPPORTED};

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

impl ExternalInterface {
    /// An IPv4-only interface whose own address is the one published (no `--public-ip`).
    pub fn v4(index: u32, name: &str, mtu: u32, addr: Ipv4Addr) -> Self {
        Self {
            index,
            name: name.into(),
            mtu,
            iface_addr: addr,
            ext_addr: addr,
            iface_v6_addr: None,
            ext_v6_addr: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Net(#[from] flannel_net::NetError),
    #[error("backend type {0:?} is not supported by this flannel-rs build (supported: {list})", list = config::SUPPORTED.join(", "))]
    Unsupported(String),
    #[error("invalid {backend} backend config: {msg}")]
    Config { backend: &'static str, msg: String },
    #[error("{0}")]
    Device(String),
}

/// What one reconcile pass changed; zero everywhere means the kernel already matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    pub failed: usize,
    pub device_recreated: bool,
    /// Of the writes, those that put back an entry we had applied before (drift healed).
    pub repairs: Repairs,
    /// Leases left out, and why (the daemon logs them with their datastore key).
    pub skipped: Vec<crate::peers::Skipped>,
}

/// Entries we had applied, later found missing or different, and rewritten, by kind. The
/// first write of an entry is not a repair; writing it again after it drifted is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    pub route: usize,
    pub neighbour: usize,
    pub fdb: usize,
    pub device: usize,
    pub address: usize,
}

impl Repairs {
    /// The kinds as metric label values, with their counts.
    pub fn by_kind(&self) -> [(&'static str, usize); 5] {
        [
            ("route", self.route),
            ("neighbour", self.neighbour),
            ("fdb", self.fdb),
            ("device", self.device),
            ("address", self.address),
        ]
    }

    pub fn total(&self) -> usize {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }

    fn absorb(&mut self, o: Repairs) {
        self.route += o.route;
        self.neighbour += o.neighbour;
        self.fdb += o.fdb;
        self.device += o.device;
        self.address += o.address;
    }
}

impl ReconcileReport {
    /// Adds the counts of `other` to these.
    pub fn absorb(&mut self, other: ReconcileReport) {
        self.added += other.added;
        self.removed += other.removed;
        self.failed += other.failed;
        self.device_recreated |= other.device_recreated;
        self.repairs.absorb(other.repairs);
        self.skipped.extend(other.skipped);
    }

    /// Each skipped lease once (a lease skipped in both families is reported by each).
    pub fn dedup_skipped(&mut self) {
        self.skipped.sort();
        self.skipped.dedup();
    }

    /// Whether the pass changed or failed anything.
    pub fn changed(&self) -> bool {
        self.added + self.removed + self.failed > 0 || self.device_recreated
    }
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

    /// Applies a few lease changes without reading the kernel back: `changed` are added or
    /// changed peers, `removed` the last known state of peers that went. `None` when this
    /// backend (or its present state) needs a full [`Backend::reconcile`] instead; a report
    /// with failures means the same (the backend forgot what it had and starts over).
    fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> impl Future<Output = Result<Option<ReconcileReport>, BackendError>> + Send {
        let _ = (own, changed, removed);
        std::future::ready(Ok(None))
    }

    /// Puts back entries of ours that the kernel reported deleted (`changes`, none of them
    /// expected), without reading the kernel back. `None` when the changes need a full
    /// [`Backend::reconcile`] (one is not ours to place, lost notifications, no mirror); a
    /// report with failures means the same.
    fn repair(
        &mut self,
        changes: &[flannel_net::monitor::Change],
    ) -> impl Future<Output = Result<Option<ReconcileReport>, BackendError>> + Send {
        let _ = changes;
        std::future::ready(Ok(None))
    }

    /// Cheap periodic work on the short timer (`--iptables-resync`): counters to report.
    fn tick(&mut self) {}

    /// The kernel entries this backend keeps for `leases` now (for the state snapshot and
    /// `flannelctl doctor`): computed, not read from the kernel.
    fn expected(&self, own: &Lease, leases: &[Lease]) -> Vec<flannel_core::state::KernelEntry> {
        let _ = (own, leases);
        Vec::new()
    }

    /// The devices this backend owns (none for host-gw).
    fn devices(&self) -> Vec<String> {
        Vec::new()
    }

    /// The userspace data path's counters, for metrics (udp and wireguard).
    fn datapath_counters(&self) -> Option<DatapathCounters> {
        None
    }

    /// Whether a kernel change is one this backend made itself (a deletion whose notification
    /// was on its way) rather than drift that needs a reconcile.
    fn expected_change(&mut self, change: &flannel_net::monitor::Change) -> bool {
        let _ = change;
        false
    }
}

/// Counters of a userspace data path, shared with its worker threads.
#[derive(Clone)]
pub enum DatapathCounters {
    Udp(std::sync::Arc<datapath::counters::Counters>),
    Wireguard(std::sync::Arc<datapath::counters::Counters>),
}
