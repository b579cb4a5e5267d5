//! The host-gw backend (upstream `pkg/backend/hostgw`): a route per peer subnet via the peer's
//! public IP on the external interface. Needs every node on one L2 segment.

use crate::routes::RoutePlan;
use crate::{BackendError, ExternalInterface, ReconcileReport};
use flannel_core::hostgw::desired_routes;
use flannel_core::{Lease, LeaseAttrs};
use flannel_net::netlink::gw_routes_on;
use flannel_net::Netlink;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;

pub struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    /// The cluster network: leases outside it are never routed.
    network: Ipv4Net,
    /// Destinations routed on the last pass (see `RouteGuard::claimed`).
    claimed: BTreeSet<Ipv4Net>,
}

impl HostGwBackend {
    pub fn register(
        nl: Netlink,
        ext: ExternalInterface,
        network: Ipv4Net,
    ) -> Result<Self, BackendError> {
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
            network,
            claimed: BTreeSet::new(),
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
        let idx = self.ext.index;
        let table = self.nl.main_routes_v4().await?;
        let guard =
            crate::guard::read(&self.nl, &table, self.network, &[], idx, &self.claimed).await?;
        let (desired, skipped) = desired_routes(own.subnet, leases, &guard);
        let adopt = crate::guard::adoptable(&table, &[], &desired);
        let plan = RoutePlan::new(
            idx,
            false,
            &desired,
            &gw_routes_on(&table, idx, true),
            &adopt,
        );
        let mut report = plan.remove(&self.nl).await;
        let (added, failed) = plan.upsert(&self.nl).await;
        report.absorb(added);
        self.claimed = desired
            .keys()
            .filter(|d| !failed.contains(d))
            .copied()
            .collect();
        report.skipped = skipped;
        Ok(report)
    }
}
