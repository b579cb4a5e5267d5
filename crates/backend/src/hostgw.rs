//! The host-gw backend (upstream `pkg/backend/hostgw`): a route per peer subnet via the peer's
//! public IP on the external interface. Needs every node on one L2 segment.

use crate::routes::RoutePlan;
use crate::{BackendError, ExternalInterface, ReconcileReport};
use flannel_core::hostgw::desired_routes;
use flannel_core::route_guard::RouteGuard;
use flannel_core::{Lease, LeaseAttrs};
use flannel_net::monitor::Change;
use flannel_net::netlink::gw_routes_on;
use flannel_net::{Family, NetOps, Netlink, RouteWrite};
use ipnet::{IpNet, Ipv4Net};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use tracing::info;

pub struct HostGwBackend<N: NetOps = Netlink> {
    nl: N,
    ext: ExternalInterface,
    /// The cluster network: leases outside it are never routed.
    network: Ipv4Net,
    /// Destinations routed on the last pass (see `RouteGuard::claimed`).
    claimed: BTreeSet<IpNet>,
    /// The guard and our routes as of the last full pass plus our writes since (see the vxlan
    /// backend's mirror); `None` until a full pass succeeds and after a failed write.
    mirror: Option<(RouteGuard, BTreeMap<IpNet, IpAddr>)>,
    /// Our own route deletions whose notifications are on their way.
    expected: HashSet<Change>,
}

impl<N: NetOps> HostGwBackend<N> {
    pub fn register(nl: N, ext: ExternalInterface, network: Ipv4Net) -> Result<Self, BackendError> {
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
            mirror: None,
            expected: HashSet::new(),
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
        let table = self.nl.main_routes(Family::V4).await?;
        let guard = crate::guard::read(
            &self.nl,
            &table,
            IpNet::V4(self.network),
            &[],
            idx,
            &self.claimed,
        )
        .await?;
        let (desired, skipped) = desired_routes(Family::V4, IpNet::V4(own.subnet), leases, &guard);
        let adopt = crate::guard::adoptable(&table, &[], &desired);
        let plan = RoutePlan::new(
            idx,
            false,
            &desired,
            &gw_routes_on(&table, idx, true),
            &adopt,
        );
        self.expected = plan.removals().map(Change::RouteGone).collect();
        let mut report = plan.remove(&self.nl).await;
        let (added, failed) = plan.upsert(&self.nl).await;
        report.absorb(added);
        self.claimed = desired
            .keys()
            .filter(|d| !failed.contains(d))
            .copied()
            .collect();
        report.skipped = skipped;
        self.mirror = (report.failed == 0).then_some((guard, desired));
        Ok(report)
    }

    /// The incremental path (see `Backend::apply_delta`): the touched peers' routes against
    /// the mirror, without reading the routing table back.
    pub async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let Some((guard, routes)) = self.mirror.as_mut() else {
            return Ok(None);
        };
        let (desired, skipped) = desired_routes(Family::V4, IpNet::V4(own.subnet), changed, guard);
        let touched = crate::touched_subnets(own, changed, removed);
        let ours: BTreeMap<IpNet, IpAddr> = touched
            .iter()
            .filter_map(|s| routes.get(s).map(|g| (*s, *g)))
            .collect();
        let plan = RoutePlan::new(self.ext.index, false, &desired, &ours, &BTreeSet::new());
        self.expected.extend(plan.removals().map(Change::RouteGone));
        let mut report = plan.remove(&self.nl).await;
        let (added, _) = plan.upsert(&self.nl).await;
        report.absorb(added);
        report.skipped = skipped;
        if report.failed > 0 {
            self.mirror = None;
            return Ok(Some(report));
        }
        for s in &touched {
            match desired.get(s) {
                Some(g) => {
                    routes.insert(*s, *g);
                    self.claimed.insert(*s);
                }
                None => {
                    routes.remove(s);
                    self.claimed.remove(s);
                }
            }
        }
        Ok(Some(report))
    }

    /// See `Backend::repair`: a deleted route of ours is written again; a neighbour or FDB
    /// change is not ours (host-gw owns routes only); anything else takes a full pass.
    pub async fn repair(
        &mut self,
        changes: &[Change],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let Some((_, routes)) = self.mirror.as_ref() else {
            return Ok(None);
        };
        let mut lost = Vec::new();
        for c in changes {
            match c {
                Change::RouteGone(d) => match routes.get(d) {
                    Some(g) => lost.push((*d, *g)),
                    // Someone else's route: the guard may think differently of a lease now.
                    None => return Ok(None),
                },
                Change::NeighbourGone(..) | Change::FdbGone(..) => {}
                Change::Other => return Ok(None),
            }
        }
        let idx = self.ext.index;
        let mut report = ReconcileReport::default();
        for (d, g) in lost {
            // Exclusive: a route someone else put there meanwhile is not overwritten; the
            // failure then takes a full pass, whose guard decides.
            match self
                .nl
                .write_route(d, g, idx, false, RouteWrite::Create)
                .await
            {
                Ok(()) => {
                    info!(subnet = %d, via = %g, "route to peer was deleted; put back");
                    report.added += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "putting a deleted route back failed; a full pass follows");
                    report.failed += 1;
                    self.mirror = None;
                }
            }
        }
        Ok(Some(report))
    }

    /// See `Backend::expected_change`.
    pub fn expected_change(&mut self, change: &Change) -> bool {
        self.expected.remove(change)
    }
}
