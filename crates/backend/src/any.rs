//! The backend chosen by the network config, dispatched statically: adding a backend is one
//! arm here and one folder beside this file.

use crate::config::BackendConfig;
use crate::vxlan::VxlanNetworks;
use crate::{
    hostgw, udp, vxlan, wg, Backend, BackendError, DatapathCounters, ExternalInterface,
    ReconcileReport,
};
use flannel_core::{Lease, LeaseAttrs};
use ipnet::IpNet;

/// The backend chosen by the network config, dispatched statically.
pub enum AnyBackend {
    Vxlan(vxlan::VxlanBackend),
    HostGw(hostgw::HostGwBackend),
    Udp(udp::backend::UdpBackend),
    Wireguard(wg::backend::WireguardBackend),
}

impl AnyBackend {
    /// Sets up the backend `cfg` names on interface `ext`, for the families in `nets` (with
    /// the VtepMACs our previous lease published, for vxlan).
    pub async fn register(
        cfg: BackendConfig,
        nl: flannel_net::Netlink,
        ext: ExternalInterface,
        nets: VxlanNetworks,
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
        Ok(match cfg {
            BackendConfig::Vxlan(c) => {
                Self::Vxlan(vxlan::VxlanBackend::register(nl, c, ext, nets).await?)
            }
            BackendConfig::HostGw => {
                let networks: Vec<IpNet> = nets
                    .v4
                    .map(|(n, _)| IpNet::V4(n))
                    .into_iter()
                    .chain(nets.v6.map(|(n, _)| IpNet::V6(n)))
                    .collect();
                Self::HostGw(hostgw::HostGwBackend::register(nl, ext, &networks)?)
            }
            BackendConfig::Udp(c) => {
                Self::Udp(udp::backend::UdpBackend::register(nl, ext, v4_only("udp")?, c).await?)
            }
            BackendConfig::Wireguard(c) => Self::Wireguard(
                wg::backend::WireguardBackend::register(
                    nl,
                    ext,
                    nets.v4.map(|(n, _)| n),
                    nets.v6.map(|(n, _)| n),
                    c,
                )
                .await?,
            ),
        })
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! each {
    ($self:expr, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Vxlan($b) => $call,
            AnyBackend::HostGw($b) => $call,
            AnyBackend::Udp($b) => $call,
            AnyBackend::Wireguard($b) => $call,
        }
    };
}

impl Backend for AnyBackend {
    fn lease_attrs(&self) -> LeaseAttrs {
        each!(self, b => b.lease_attrs())
    }

    fn mtu(&self) -> u32 {
        each!(self, b => b.mtu())
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        each!(self, b => b.reconcile(own, leases).await)
    }

    async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        each!(self, b => b.apply_delta(own, changed, removed).await)
    }

    async fn repair(
        &mut self,
        changes: &[flannel_net::monitor::Change],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        each!(self, b => b.repair(changes).await)
    }

    fn tick(&mut self) {
        each!(self, b => b.tick())
    }

    fn expected(&self, own: &Lease, leases: &[Lease]) -> Vec<flannel_core::state::KernelEntry> {
        each!(self, b => b.expected(own, leases))
    }

    fn devices(&self) -> Vec<String> {
        each!(self, b => b.devices())
    }

    fn datapath_counters(&self) -> Option<DatapathCounters> {
        each!(self, b => b.datapath_counters())
    }

    fn expected_change(&mut self, change: &flannel_net::monitor::Change) -> bool {
        each!(self, b => b.expected_change(change))
    }
}
