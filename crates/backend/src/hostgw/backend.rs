//! The host-gw backend (upstream `pkg/backend/hostgw`): a route per peer subnet via the peer's
//! public address on the external interface, in each enabled family (IPv4 via `PublicIP`,
//! IPv6 via `PublicIPv6`). Needs every node on one L2 segment.

use crate::hostgw::desired::desired_routes;
use crate::route_guard::RouteGuard;
use crate::routes::RoutePlan;
use crate::{Backend, BackendError, ExternalInterface, ReconcileReport};
use flannel_core::{Family, Lease, LeaseAttrs};
use flannel_net::monitor::Change;
use flannel_net::netlink::gw_routes_on;
use flannel_net::{NetOps, Netlink, RouteWrite};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use tracing::{info, warn};

pub struct HostGwBackend<N: NetOps = Netlink> {
    nl: N,
    ext: ExternalInterface,
    /// IPv4 first, then IPv6.
    families: Vec<FamilyRoutes>,
    /// Our own route deletions whose notifications are on their way.
    expected: HashSet<Change>,
}

/// One family's routes.
struct FamilyRoutes {
    family: Family,
    /// The cluster network: leases outside it are never routed.
    network: IpNet,
    /// Destinations routed on the last pass (see `RouteGuard::claimed`).
    claimed: BTreeSet<IpNet>,
    /// Our routes as of the last full pass plus our writes since (see the vxlan backend's
    /// mirror); `None` until a full pass succeeds and after a failed write.
    mirror: Option<BTreeMap<IpNet, IpAddr>>,
    /// The guard of the last full pass that read the kernel: the incremental path and the
    /// state snapshot judge leases by it, as that pass did.
    guard: Option<RouteGuard>,
}

impl<N: NetOps> HostGwBackend<N> {
    /// `networks`: the cluster network of each enabled family.
    pub fn register(
        nl: N,
        ext: ExternalInterface,
        networks: &[IpNet],
    ) -> Result<Self, BackendError> {
        let v4 = networks.iter().any(|n| n.addr().is_ipv4());
        if v4 && ext.ext_addr != ext.iface_addr {
            return Err(BackendError::Config {
                backend: "host-gw",
                msg: format!(
                    "your PublicIP ({}) differs from interface IP ({}), meaning that probably you're on a NAT, which is not supported by host-gw backend",
                    ext.ext_addr, ext.iface_addr
                ),
            });
        }
        if networks.iter().any(|n| n.addr().is_ipv6()) && ext.ext_v6_addr.is_none() {
            return Err(BackendError::Config {
                backend: "host-gw",
                msg: format!(
                    "IPv6 is enabled but {} has no IPv6 address to route peers' IPv6 subnets through",
                    ext.name
                ),
            });
        }
        let families = networks
            .iter()
            .map(|n| FamilyRoutes {
                family: Family::of_net(n),
                network: *n,
                claimed: BTreeSet::new(),
                mirror: None,
                guard: None,
            })
            .collect();
        Ok(Self {
            nl,
            ext,
            families,
            expected: HashSet::new(),
        })
    }
}

impl<N: NetOps> Backend for HostGwBackend<N> {
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.ext.ext_addr,
            public_ipv6: self.ext.ext_v6_addr,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// See `Backend::expected`: a route to each peer's subnet via its public address on the
    /// external interface.
    fn expected(&self, own: &Lease, leases: &[Lease]) -> Vec<flannel_core::state::KernelEntry> {
        let mut out = Vec::new();
        for f in &self.families {
            let Some(own_subnet) = own.subnet_of(f.family) else {
                continue;
            };
            let guard = RouteGuard::last_or(f.guard.as_ref(), f.network);
            let (routes, _) = desired_routes(f.family, own_subnet, leases, &guard);
            out.extend(routes.into_iter().map(|(dst, gw)| {
                flannel_core::state::KernelEntry::Route {
                    dst,
                    gw: Some(gw),
                    dev: self.ext.name.clone(),
                }
            }));
        }
        out
    }

    fn devices(&self) -> Vec<String> {
        Vec::new()
    }

    fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let mut report = ReconcileReport::default();
        self.expected.clear();
        let idx = self.ext.index;
        for f in &mut self.families {
            let Some(own_subnet) = own.subnet_of(f.family) else {
                warn!(
                    "our lease has no {:?} subnet; nothing to route there",
                    f.family
                );
                continue;
            };
            // The old mirror and guard go before the new ones are built (memory at 20000 peers).
            (f.mirror, f.guard) = (None, None);
            let table = self.nl.main_routes(f.family).await?;
            let guard =
                crate::guard::read(&self.nl, &table, f.network, &[], idx, &f.claimed).await?;
            let (desired, skipped) = desired_routes(f.family, own_subnet, leases, &guard);
            let adopt = crate::guard::adoptable(&table, &[], &desired);
            let plan = RoutePlan::new(
                idx,
                false,
                &desired,
                &gw_routes_on(&table, idx, true),
                &adopt,
            );
            drop(table);
            self.expected.extend(plan.removals().map(Change::RouteGone));
            let mut r = plan.remove(&self.nl).await;
            let (added, failed) = plan.upsert(&self.nl).await;
            r.absorb(added);
            r.repairs.route += plan.repairs(&f.claimed, &failed);
            f.claimed = desired
                .keys()
                .filter(|d| !failed.contains(d))
                .copied()
                .collect();
            r.skipped = skipped;
            f.mirror = (r.failed == 0).then_some(desired);
            f.guard = Some(guard);
            report.absorb(r);
        }
        report.dedup_skipped();
        Ok(report)
    }

    /// The incremental path (see `Backend::apply_delta`): the touched peers' routes against
    /// the mirror, without reading the routing table back.
    async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        if self.families.iter().any(|f| f.mirror.is_none()) {
            return Ok(None);
        }
        let mut report = ReconcileReport::default();
        for f in &mut self.families {
            let (Some(own_subnet), Some(routes), Some(guard)) =
                (own.subnet_of(f.family), f.mirror.as_mut(), f.guard.as_ref())
            else {
                return Ok(None);
            };
            let (desired, skipped) = desired_routes(f.family, own_subnet, changed, guard);
            let touched = crate::routes::touched_subnets(f.family, own_subnet, changed, removed);
            let ours: BTreeMap<IpNet, IpAddr> = touched
                .iter()
                .filter_map(|s| routes.get(s).map(|g| (*s, *g)))
                .collect();
            let plan = RoutePlan::new(self.ext.index, false, &desired, &ours, &BTreeSet::new());
            self.expected.extend(plan.removals().map(Change::RouteGone));
            let mut r = plan.remove(&self.nl).await;
            let (added, _) = plan.upsert(&self.nl).await;
            r.absorb(added);
            r.skipped = skipped;
            if r.failed > 0 {
                f.mirror = None;
                report.absorb(r);
                continue;
            }
            for s in &touched {
                match desired.get(s) {
                    Some(g) => {
                        routes.insert(*s, *g);
                        f.claimed.insert(*s);
                    }
                    None => {
                        routes.remove(s);
                        f.claimed.remove(s);
                    }
                }
            }
            report.absorb(r);
        }
        report.dedup_skipped();
        Ok(Some(report))
    }

    /// See `Backend::repair`: a deleted route of ours is written again; a neighbour or FDB
    /// change is not ours (host-gw owns routes only); anything else takes a full pass.
    async fn repair(
        &mut self,
        changes: &[Change],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let mut lost = Vec::new();
        for c in changes {
            match c {
                Change::RouteGone(d) => {
                    let route = self
                        .families
                        .iter()
                        .enumerate()
                        .find_map(|(i, f)| f.mirror.as_ref()?.get(d).map(|g| (i, *d, *g)));
                    match route {
                        Some(r) => lost.push(r),
                        // Someone else's route: the guard may think differently of a lease now.
                        None => return Ok(None),
                    }
                }
                Change::NeighbourGone(..) | Change::FdbGone(..) => {}
                Change::Other => return Ok(None),
            }
        }
        let idx = self.ext.index;
        let mut report = ReconcileReport::default();
        for (i, d, g) in lost {
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
                    report.repairs.route += 1;
                }
                Err(e) => {
                    warn!(error = %e, "putting a deleted route back failed; a full pass follows");
                    report.failed += 1;
                    self.families[i].mirror = None;
                }
            }
        }
        Ok(Some(report))
    }

    /// See `Backend::expected_change`.
    fn expected_change(&mut self, change: &Change) -> bool {
        self.expected.remove(change)
    }
}
