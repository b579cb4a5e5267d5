//! flannel-backend: how leases become packets' paths.
//!
//! A backend registers its device for this node, tells what to publish in the lease
//! (`BackendType`/`BackendData`) and the MTU for pods, and reconciles the kernel against the set
//! of known leases whenever asked (lease events, netlink events, timer).

pub mod batch;
pub mod datapath;
pub mod guard;
pub mod hostgw;
pub mod routes;
pub mod udp;
pub mod vxlan;
pub mod wg;

use flannel_core::{Lease, LeaseAttrs};
use ipnet::IpNet;
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    pub failed: usize,
    pub device_recreated: bool,
    /// Of the writes, those that put back an entry we had applied before (drift healed).
    pub repairs: Repairs,
    /// Leases left out, and why (the daemon logs them with their datastore key).
    pub skipped: Vec<flannel_core::peers::Skipped>,
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

    /// Whether a kernel change is one this backend made itself (a deletion whose notification
    /// was on its way) rather than drift that needs a reconcile.
    fn expected_change(&mut self, change: &flannel_net::monitor::Change) -> bool {
        let _ = change;
        false
    }
}

/// Puts back a device's MTU and up state (TUN devices of the udp and wireguard backends); a
/// change after the first full pass (`configured`) counts as a device repair.
pub(crate) async fn keep_mtu_and_up<N: flannel_net::NetOps>(
    nl: &N,
    index: u32,
    mtu: u32,
    configured: bool,
    report: &mut ReconcileReport,
) -> Result<(), BackendError> {
    let Some(l) = nl.link_by_index(index).await? else {
        return Ok(());
    };
    if l.mtu != mtu || !l.up {
        report.repairs.device += usize::from(configured);
    }
    if l.mtu != mtu {
        nl.set_mtu(index, mtu).await?;
        report.added += 1;
    }
    if !l.up {
        nl.set_up(index).await?;
        report.added += 1;
    }
    Ok(())
}

/// The peer subnets of `family` a lease burst touches (our own excluded: a change to it takes
/// a full pass), sorted.
pub(crate) fn touched_subnets(
    family: flannel_core::Family,
    own: IpNet,
    changed: &[Lease],
    removed: &[Lease],
) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = changed
        .iter()
        .chain(removed)
        .filter_map(|l| l.subnet_of(family))
        .filter(|s| *s != own)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The backend chosen by the network config, dispatched statically.
pub enum AnyBackend {
    Vxlan(vxlan::VxlanBackend),
    HostGw(hostgw::HostGwBackend),
    Udp(udp::backend::UdpBackend),
    Wireguard(wg::backend::WireguardBackend),
}

/// Backend types this build implements.
pub const SUPPORTED: &[&str] = &["vxlan", "host-gw", "udp", "wireguard"];

impl AnyBackend {
    /// Sets up the backend named by the config's `Backend.Type` on interface `ext`, for the
    /// families in `nets` (with the VtepMACs our previous lease published, for vxlan).
    pub async fn register(
        backend_type: &str,
        backend: &serde_json::Value,
        nl: flannel_net::Netlink,
        ext: ExternalInterface,
        nets: vxlan::VxlanNetworks,
    ) -> Result<Self, BackendError> {
        let v4_only = |name: &'static str| {
            if nets.v6.is_some() {
                tracing::warn!("IPv6 is enabled, but the {name} backend programs the IPv4 overlay only in this flannel-rs build");
            }
            nets.v4.map(|(n, _)| n).ok_or(BackendError::Config {
                backend: name,
                msg: "needs an IPv4 Network".into(),
            })
        };
        match backend_type {
            "vxlan" => {
                let cfg = flannel_core::vxlan::VxlanConfig::from_backend(backend)
                    .map_err(|e| BackendError::Config { backend: "vxlan", msg: e.to_string() })?;
                Ok(Self::Vxlan(vxlan::VxlanBackend::register(nl, cfg, ext, nets).await?))
            }
            "host-gw" => {
                let networks: Vec<IpNet> = nets
                    .v4
                    .map(|(n, _)| IpNet::V4(n))
                    .into_iter()
                    .chain(nets.v6.map(|(n, _)| IpNet::V6(n)))
                    .collect();
                Ok(Self::HostGw(hostgw::HostGwBackend::register(nl, ext, &networks)?))
            }
            "udp" => Ok(Self::Udp(udp::backend::UdpBackend::register(nl, ext, v4_only("udp")?, backend).await?)),
            "wireguard" => Ok(Self::Wireguard(
                wg::backend::WireguardBackend::register(nl, ext, nets.v4.map(|(n, _)| n), nets.v6.map(|(n, _)| n), backend).await?,
            )),
            other => Err(BackendError::Config {
                backend: "any",
                msg: format!("backend type {other:?} is not supported by this flannel-rs build (supported: {})", SUPPORTED.join(", ")),
            }),
        }
    }
}

impl Backend for AnyBackend {
    fn lease_attrs(&self) -> LeaseAttrs {
        match self {
            Self::Vxlan(b) => b.lease_attrs(),
            Self::HostGw(b) => b.lease_attrs(),
            Self::Udp(b) => b.lease_attrs(),
            Self::Wireguard(b) => b.lease_attrs(),
        }
    }

    fn mtu(&self) -> u32 {
        match self {
            Self::Vxlan(b) => b.mtu(),
            Self::HostGw(b) => b.mtu(),
            Self::Udp(b) => b.mtu(),
            Self::Wireguard(b) => b.mtu(),
        }
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        match self {
            Self::Vxlan(b) => b.reconcile(own, leases).await,
            Self::HostGw(b) => b.reconcile(own, leases).await,
            Self::Udp(b) => b.reconcile(own, leases).await,
            Self::Wireguard(b) => b.reconcile(own, leases).await,
        }
    }

    async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        match self {
            Self::Vxlan(b) => b.apply_delta(own, changed, removed).await,
            Self::HostGw(b) => b.apply_delta(own, changed, removed).await,
            Self::Udp(b) => Ok(b.apply_delta(own, changed, removed)),
            // A full pass costs little here: no kernel entry per peer.
            Self::Wireguard(_) => Ok(None),
        }
    }

    async fn repair(
        &mut self,
        changes: &[flannel_net::monitor::Change],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        match self {
            Self::Vxlan(b) => b.repair(changes).await,
            Self::HostGw(b) => b.repair(changes).await,
            Self::Udp(_) | Self::Wireguard(_) => Ok(None),
        }
    }

    fn tick(&mut self) {
        match self {
            Self::Udp(b) => b.report_drops(),
            Self::Wireguard(b) => b.report_drops(),
            _ => {}
        }
    }

    fn expected(&self, own: &Lease, leases: &[Lease]) -> Vec<flannel_core::state::KernelEntry> {
        match self {
            Self::Vxlan(b) => b.expected(own, leases),
            Self::HostGw(b) => b.expected(own, leases),
            Self::Udp(b) => b.expected(own, leases),
            Self::Wireguard(b) => b.expected(own, leases),
        }
    }

    fn devices(&self) -> Vec<String> {
        match self {
            Self::Vxlan(b) => b.devices(),
            Self::HostGw(b) => b.devices(),
            Self::Udp(b) => b.devices(),
            Self::Wireguard(b) => b.devices(),
        }
    }

    fn expected_change(&mut self, change: &flannel_net::monitor::Change) -> bool {
        match self {
            Self::Vxlan(b) => b.expected_change(change),
            Self::HostGw(b) => b.expected_change(change),
            Self::Udp(_) | Self::Wireguard(_) => false,
        }
    }
}
