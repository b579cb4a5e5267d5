//! The host-gw backend (upstream `pkg/backend/hostgw`): a route per peer subnet via the peer's
//! public IP on the external interface. Needs every node on one L2 segment.

use crate::skiplog::SkipLog;
use crate::{BackendError, ExternalInterface, ReconcileReport};
use flannel_core::diff::diff;
use flannel_core::hostgw::desired_routes;
use flannel_core::{Lease, LeaseAttrs};
use flannel_net::Netlink;
use futures::future::join_all;
use std::collections::BTreeMap;
use tracing::{info, warn};

pub struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    skips: SkipLog,
}

impl HostGwBackend {
    pub fn register(nl: Netlink, ext: ExternalInterface) -> Result<Self, BackendError> {
        if ext.ext_addr != ext.iface_addr {
            return Err(BackendError::Config {
                backend: "host-gw",
                msg: format!(
                    "your PublicIP ({}) differs from interface IP ({}), meaning that probably you're on a NAT, which is not supported by host-gw backend",
                    ext.ext_addr, ext.iface_addr
                ),
            });
        }
        Ok(Self {
            nl,
            ext,
            skips: SkipLog::default(),
        })
    }

    pub fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.ext.ext_addr,
            public_ipv6: self.ext.ext_v6_addr,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    pub fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    pub async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let (desired, skipped) = desired_routes(own.subnet, leases);
        self.skips.report(&skipped);
        let idx = self.ext.index;
        // What we own on the interface, plus whatever currently routes a subnet we want (a wrong
        // gateway there gets replaced; routes of others for other destinations are never touched).
        let mut actual = self.nl.own_routes_via_link(idx).await?;
        let all = self.nl.routes_via_link(idx).await?;
        actual.extend(all.into_iter().filter(|(d, _)| desired.contains_key(d)));
        Ok(apply_routes(&self.nl, idx, &desired, &actual, false).await)
    }
}

/// Applies a route diff on link `idx` as two pipelined batches (removals, then additions).
pub(crate) async fn apply_routes(
    nl: &Netlink,
    idx: u32,
    desired: &BTreeMap<ipnet::Ipv4Net, std::net::Ipv4Addr>,
    actual: &BTreeMap<ipnet::Ipv4Net, std::net::Ipv4Addr>,
    onlink: bool,
) -> ReconcileReport {
    let plan = diff(desired, actual);
    let mut report = ReconcileReport::default();
    let removed = join_all(plan.remove.iter().map(|(d, g)| nl.del_route(*d, *g, idx))).await;
    let added = join_all(
        plan.upsert
            .iter()
            .map(|(d, g)| nl.replace_route(*d, *g, idx, onlink)),
    )
    .await;
    for ((d, g), r) in plan.remove.iter().zip(&removed) {
        match r {
            Ok(()) => {
                info!(subnet = %d, via = %g, "removed route to a peer that has no lease any more")
            }
            Err(e) => warn!(error = %e, "removing a route failed; retrying on the next pass"),
        }
    }
    for ((d, g), r) in plan.upsert.iter().zip(&added) {
        match r {
            Ok(()) => info!(subnet = %d, via = %g, "programmed route to peer"),
            Err(e) => warn!(error = %e, "adding a route failed; retrying on the next pass"),
        }
    }
    report.removed = removed.iter().filter(|r| r.is_ok()).count();
    report.added = added.iter().filter(|r| r.is_ok()).count();
    report.failed = removed.iter().chain(&added).filter(|r| r.is_err()).count();
    report
}
