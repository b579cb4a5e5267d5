//! The vxlan backend (upstream `pkg/backend/vxlan`): device `flannel.<VNI>` over IPv4 and
//! `flannel-v6.<VNI>` over IPv6, and on each, per peer, a permanent neighbour entry, a
//! permanent FDB entry and an onlink route, reconciled as data. Both families go through the
//! same code: an [`Overlay`] per family.

use super::config::VxlanConfig;
use super::delta::{apply_to_mirror, peers_of, plan_delta, DeltaPlan, PeerEntry};
use super::desired::desired_peers_with;
use crate::batch::pipelined_failures;
use crate::diff::diff;
use crate::route_guard::RouteGuard;
use crate::routes::RoutePlan;
use crate::{Backend, BackendError, ExternalInterface, ReconcileReport};
use flannel_core::lease::VxlanData;
use flannel_core::state::KernelEntry;
use flannel_core::{Family, Lease, LeaseAttrs, MacAddr};
use flannel_net::monitor::Change;
use flannel_net::netlink::{gw_routes_on, is_vxlan};
use flannel_net::{Link, NetOps, Netlink, RouteWrite, VxlanSpec};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use tracing::{debug, info, warn};

/// What the vxlan backend is asked to carry: the cluster network of each enabled family, and
/// the VtepMAC our previous lease published for it, if any.
#[derive(Debug, Clone, Default)]
pub struct VxlanNetworks {
    pub v4: Option<(Ipv4Net, Option<MacAddr>)>,
    pub v6: Option<(Ipv6Net, Option<MacAddr>)>,
}

pub struct VxlanBackend<N: NetOps = Netlink> {
    nl: N,
    cfg: VxlanConfig,
    ext: ExternalInterface,
    /// IPv4 first, then IPv6.
    overlays: Vec<Overlay>,
    /// Our own deletions whose notifications are still on their way (not drift).
    expected: HashSet<Change>,
}

/// One family's overlay: its device and what we programmed on it.
struct Overlay {
    family: Family,
    /// The cluster network: addresses inside it on our device that are not ours get removed.
    network: IpNet,
    spec: VxlanSpec,
    index: u32,
    /// Destinations routed on the last pass (see `RouteGuard::claimed`).
    claimed: BTreeSet<IpNet>,
    /// What the last full pass left for each peer, kept current by the incremental path.
    /// `None` until a full pass succeeds, with DirectRouting, and after any failed write.
    mirror: Option<Mirror>,
    /// The guard of the last full pass that read the kernel (with or without a mirror):
    /// foreign routes and addresses change rarely, and a lease they newly conflict with fails
    /// its exclusive route write (then a full pass). The incremental path and the state
    /// snapshot judge leases by it, as the pass did.
    guard: Option<RouteGuard>,
    /// Whether a full pass has set the device up (later changes to it are repairs).
    configured: bool,
    /// DirectRouting: the peers' public addresses found on our segment by the last full pass.
    direct: BTreeSet<IpAddr>,
}

/// The kernel state we programmed, as of the last full pass plus our writes since.
struct Mirror {
    peers: BTreeMap<IpNet, PeerEntry>,
}

impl<N: NetOps> VxlanBackend<N> {
    /// Creates or adopts the device of each family in `nets`. An existing compatible device is
    /// kept as it is (its MAC stays what peers already know); an incompatible one is replaced.
    /// A new device takes the stored MAC when given, else a random one.
    pub async fn register(
        nl: N,
        cfg: VxlanConfig,
        ext: ExternalInterface,
        nets: VxlanNetworks,
    ) -> Result<Self, BackendError> {
        if cfg.gbp {
            warn!("vxlan GBP is not supported by flannel-rs yet; ignoring it");
        }
        let mut overlays = Vec::new();
        let wanted = [
            nets.v4.map(|(n, mac)| (IpNet::V4(n), mac)),
            nets.v6.map(|(n, mac)| (IpNet::V6(n), mac)),
        ];
        for (network, mac) in wanted.into_iter().flatten() {
            let family = Family::of_net(&network);
            let local = match family {
                Family::V4 => IpAddr::V4(ext.ext_addr),
                Family::V6 => IpAddr::V6(ext.ext_v6_addr.ok_or_else(|| {
                    BackendError::Device(format!(
                        "IPv6 is enabled but {} has no IPv6 address for {} (set --public-ipv6 or give the interface one)",
                        ext.name,
                        cfg.device_name(family)
                    ))
                })?),
            };
            let spec = VxlanSpec {
                name: cfg.device_name(family),
                vni: cfg.vni,
                local,
                dev: ext.index,
                port: cfg.port,
                mtu: cfg.device_mtu(family, ext.mtu),
                mac: mac.unwrap_or_else(MacAddr::random),
                learning: cfg.learning,
            };
            overlays.push(Overlay::new(family, network, spec));
        }
        let mut b = Self {
            nl,
            cfg,
            ext,
            overlays,
            expected: HashSet::new(),
        };
        for o in &mut b.overlays {
            o.ensure_device(&b.nl, true).await?;
        }
        Ok(b)
    }

    fn overlay(&self, family: Family) -> Option<&Overlay> {
        self.overlays.iter().find(|o| o.family == family)
    }

    /// The index of the family's device (0 without that overlay).
    pub fn device_index(&self, family: Family) -> u32 {
        self.overlay(family).map_or(0, |o| o.index)
    }

    /// The MAC of the family's device.
    pub fn vtep_mac(&self, family: Family) -> Option<MacAddr> {
        self.overlay(family).map(|o| o.spec.mac)
    }

    fn backend_data(&self, family: Family) -> Option<flannel_core::raw_json::RawJson> {
        self.overlay(family).map(|o| {
            flannel_core::raw_json::RawJson::from_value(
                &VxlanData {
                    vni: self.cfg.vni,
                    vtep_mac: o.spec.mac,
                }
                .to_value(),
            )
        })
    }
}

impl Overlay {
    fn new(family: Family, network: IpNet, spec: VxlanSpec) -> Self {
        Self {
            family,
            network,
            spec,
            index: 0,
            claimed: BTreeSet::new(),
            mirror: None,
            guard: None,
            configured: false,
            direct: BTreeSet::new(),
        }
    }

    fn compatible(&self, l: &Link) -> bool {
        let Some(v) = l.vxlan.as_ref().filter(|_| is_vxlan(l)) else {
            return false;
        };
        v.vni == Some(self.spec.vni)
            && v.local.is_none_or(|ip| ip == self.spec.local)
            && v.dev.is_none_or(|d| d == 0 || d == self.spec.dev)
            && (self.spec.port == 0 || v.port.is_none_or(|p| p == self.spec.port))
            && v.learning.is_none_or(|x| x == self.spec.learning)
    }

    /// Makes sure the device exists and is compatible; returns whether it had to be created.
    /// `adopt_mac`: at registration an existing device's MAC becomes ours (peers know it); later
    /// passes restore our MAC instead (see `ensure_device_config`).
    async fn ensure_device(
        &mut self,
        nl: &impl NetOps,
        adopt_mac: bool,
    ) -> Result<bool, BackendError> {
        let name = self.spec.name.clone();
        if let Some(l) = nl.link_by_name(&name).await? {
            if self.compatible(&l) {
                if let (true, Some(mac)) = (adopt_mac, l.mac) {
                    self.spec.mac = mac;
                }
                self.index = l.index;
                return Ok(false);
            }
            warn!(device = %name, "existing device does not match the vxlan config; recreating it");
            nl.delete_link(l.index).await?;
        }
        nl.create_vxlan(&self.spec).await?;
        let l = nl.link_by_name(&name).await?.ok_or_else(|| {
            BackendError::Device(format!("{name} vanished right after it was created"))
        })?;
        if l.mac != Some(self.spec.mac) {
            return Err(BackendError::Device(format!(
                "{name} has MAC {:?} instead of {} (is a udev MACAddressPolicy overriding it?)",
                l.mac.map(|m| m.to_string()),
                self.spec.mac
            )));
        }
        self.index = l.index;
        info!(device = %name, mac = %self.spec.mac, mtu = self.spec.mtu, local = %self.spec.local, "created vxlan device");
        Ok(true)
    }

    /// The subnet's network address as /32 (/128), other addresses inside the cluster network
    /// removed, MTU, up, our MAC. Returns the address changes and the device changes.
    async fn ensure_device_config(
        &self,
        nl: &impl NetOps,
        own: IpNet,
    ) -> Result<(usize, usize), BackendError> {
        let (mut addr_changes, mut changes) = (0, 0);
        let want = IpNet::new(own.network(), own.max_prefix_len()).unwrap_or(own);
        let addrs = nl.addrs(Some(self.index), self.family).await?;
        for (_, a) in &addrs {
            if *a != want && self.network.contains(&a.addr()) {
                info!(address = %a, "removing stale address from {}", self.spec.name);
                nl.del_addr(self.index, *a).await?;
                addr_changes += 1;
            }
        }
        if !addrs.iter().any(|(_, a)| *a == want) {
            nl.add_addr(self.index, want).await?;
            addr_changes += 1;
        }
        if let Some(l) = nl.link_by_index(self.index).await? {
            if l.mtu != self.spec.mtu {
                nl.set_mtu(self.index, self.spec.mtu).await?;
                changes += 1;
            }
            if !l.up {
                nl.set_up(self.index).await?;
                changes += 1;
            }
            // Peers send to the MAC our lease publishes: a MAC changed by hand goes back.
            if l.mac != Some(self.spec.mac) {
                warn!(device = %self.spec.name, found = ?l.mac.map(|m| m.to_string()), "vxlan device MAC was changed; restoring {}", self.spec.mac);
                nl.set_mac(self.index, self.spec.mac).await?;
                changes += 1;
            }
        }
        Ok((addr_changes, changes))
    }

    /// `DirectRouting`: which peers' public addresses are on our own L2 segment, i.e. `ip route
    /// get` finds them on the external interface without a gateway.
    async fn direct_peers(
        &self,
        nl: &impl NetOps,
        ext: &ExternalInterface,
        leases: &[Lease],
    ) -> BTreeMap<IpAddr, bool> {
        let mut out = BTreeMap::new();
        for v in leases.iter().filter_map(|l| l.view(self.family)) {
            let Some(ip) = v.public else { continue };
            if out.contains_key(&ip) || ip == self.spec.local {
                continue;
            }
            let direct = matches!(
                nl.route_get_full(ip).await,
                Ok(Some((oif, _, None))) if oif == ext.index
            );
            out.insert(ip, direct);
        }
        out
    }

    /// The full pass for this family's peers.
    async fn reconcile_peers(
        &mut self,
        nl: &impl NetOps,
        cfg: &VxlanConfig,
        ext: &ExternalInterface,
        expected: &mut HashSet<Change>,
        own: IpNet,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let (idx, ext_idx) = (self.index, ext.index);
        // The pass builds a new mirror: the old one goes first, so that the two never live at
        // once (1.2 MB at 20000 peers). Until the pass ends, lease events take a full pass.
        self.mirror = None;
        self.guard = None;
        let table = nl.main_routes(self.family).await?;
        let guard =
            crate::guard::read(nl, &table, self.network, &[idx], ext_idx, &self.claimed).await?;
        let direct = if cfg.direct_routing {
            self.direct_peers(nl, ext, leases).await
        } else {
            BTreeMap::new()
        };
        let (mut desired, skipped) = desired_peers_with(self.family, own, leases, &guard, &|ip| {
            direct.get(&ip).copied().unwrap_or(false)
        });
        self.direct = direct
            .iter()
            .filter(|(_, d)| **d)
            .map(|(ip, _)| *ip)
            .collect();
        // The mirror only without DirectRouting (see `Mirror`).
        let mirror_peers = (!cfg.direct_routing).then(|| peers_of(&desired));
        // Each map is moved out, so that two copies of every peer's entries never live at once
        // (the start of a 20000-peer node is its memory peak).
        let direct_routes = std::mem::take(&mut desired.direct);
        let overlay_routes = std::mem::take(&mut desired.routes);
        let want_neigh = std::mem::take(&mut desired.neighbours);
        let want_fdb = std::mem::take(&mut desired.fdb);
        // DirectRouting routes live on the external interface, where only `proto 252` ones are
        // ours; every route on our own device is ours. Foreign routes the guard let through
        // are overwritten in place.
        let direct_plan = RoutePlan::new(
            ext_idx,
            false,
            &direct_routes,
            &gw_routes_on(&table, ext_idx, true),
            &crate::guard::adoptable(&table, &[idx], &direct_routes),
        );
        let overlay_plan = RoutePlan::new(
            idx,
            true,
            &overlay_routes,
            &gw_routes_on(&table, idx, false),
            &crate::guard::adoptable(&table, &[idx], &overlay_routes),
        );
        drop(table);
        let (neigh, fdb) = tokio::try_join!(nl.neighbours(idx, self.family), nl.fdb(idx))?;
        let (pn, pf) = (diff(&want_neigh, &neigh), diff(&want_fdb, &fdb));
        let (neigh_repairs, fdb_repairs) = rewritten_entries(&self.claimed, &want_neigh, &pn, &pf);
        drop((neigh, fdb, want_neigh, want_fdb));
        if !(pn.is_empty() && pf.is_empty() && overlay_plan.is_empty()) {
            debug!(device = %self.spec.name, neighbours = ?pn, fdb = ?pf, "vxlan peer plan");
        }

        // Removals first, routes before the entries they rely on; then additions in upstream's
        // order (neighbour, FDB, route). Each group goes out pipelined.
        // Our deletions come back as notifications: they are not drift.
        for d in direct_plan.removals().chain(overlay_plan.removals()) {
            expected.insert(Change::RouteGone(d));
        }
        for (ip, _) in &pn.remove {
            expected.insert(Change::NeighbourGone(idx, *ip));
        }
        for (m, _) in &pf.remove {
            expected.insert(Change::FdbGone(idx, *m));
        }
        let mut report = direct_plan.remove(nl).await;
        report.absorb(overlay_plan.remove(nl).await);
        write_entries(nl, idx, &pn, &pf, (neigh_repairs, fdb_repairs), &mut report).await;
        let (overlay, mut failed) = overlay_plan.upsert(nl).await;
        let (direct, direct_failed) = direct_plan.upsert(nl).await;
        report.absorb(overlay);
        report.absorb(direct);
        failed.extend(direct_failed);
        report.repairs.route += overlay_plan.repairs(&self.claimed, &failed)
            + direct_plan.repairs(&self.claimed, &failed);
        self.claimed = overlay_routes
            .keys()
            .chain(direct_routes.keys())
            .filter(|d| !failed.contains(d))
            .copied()
            .collect();
        report.skipped = skipped;
        self.mirror = mirror_peers
            .filter(|_| report.failed == 0)
            .map(|peers| Mirror { peers });
        self.guard = Some(guard);
        Ok(report)
    }

    /// This family's part of `VxlanBackend::apply_delta` (the mirror is there).
    async fn apply_delta(
        &mut self,
        nl: &impl NetOps,
        expected: &mut HashSet<Change>,
        own: IpNet,
        changed: &[Lease],
        removed: &[Lease],
    ) -> ReconcileReport {
        let (Some(m), Some(guard)) = (self.mirror.as_mut(), self.guard.as_ref()) else {
            return ReconcileReport::default();
        };
        let (desired, skipped) = desired_peers_with(self.family, own, changed, guard, &|_| false);
        let want = peers_of(&desired);
        let touched = crate::routes::touched_subnets(self.family, own, changed, removed);
        let plan = plan_delta(&m.peers, &touched, &want);
        let idx = self.index;
        for (d, _) in &plan.del_routes {
            expected.insert(Change::RouteGone(*d));
        }
        for ip in &plan.del_neighbours {
            expected.insert(Change::NeighbourGone(idx, *ip));
        }
        for (mac, _) in &plan.del_fdb {
            expected.insert(Change::FdbGone(idx, *mac));
        }
        // Removals, routes before the entries they rely on; then additions in upstream's order.
        let mut failures = pipelined_failures(
            plan.del_routes
                .iter()
                .copied()
                .map(|(d, g)| nl.del_route(d, g, idx)),
        )
        .await;
        let (a, b) = futures::join!(
            pipelined_failures(
                plan.del_neighbours
                    .iter()
                    .copied()
                    .map(|ip| nl.del_neighbour(idx, ip))
            ),
            pipelined_failures(
                plan.del_fdb
                    .iter()
                    .copied()
                    .map(|(mac, d)| nl.del_fdb(idx, mac, d))
            ),
        );
        failures.absorb(a);
        failures.absorb(b);
        let (a, b) = futures::join!(
            pipelined_failures(
                plan.set_neighbours
                    .iter()
                    .copied()
                    .map(|(ip, mac)| nl.set_neighbour(idx, ip, mac))
            ),
            pipelined_failures(
                plan.set_fdb
                    .iter()
                    .copied()
                    .map(|(mac, d)| nl.set_fdb(idx, mac, d))
            ),
        );
        failures.absorb(a);
        failures.absorb(b);
        failures.absorb(
            pipelined_failures(plan.routes.iter().copied().map(|(d, g, replace)| {
                let how = if replace {
                    RouteWrite::Replace
                } else {
                    RouteWrite::Create
                };
                nl.write_route(d, g, idx, true, how)
            }))
            .await,
        );
        let mut report = ReconcileReport {
            removed: plan.del_routes.len() + plan.del_neighbours.len() + plan.del_fdb.len(),
            added: plan.set_neighbours.len() + plan.set_fdb.len() + plan.routes.len(),
            skipped,
            ..Default::default()
        };
        for (d, g) in &plan.del_routes {
            debug!(subnet = %d, via = %g, "removed route to a peer that has no lease any more");
            self.claimed.remove(d);
        }
        for (d, g, _) in &plan.routes {
            debug!(subnet = %d, via = %g, "programmed route to peer");
            self.claimed.insert(*d);
        }
        if failures.is_empty() {
            apply_to_mirror(&mut m.peers, &touched, &want);
        } else {
            for e in &failures.first {
                warn!(error = %e, "an incremental write failed; a full pass follows");
            }
            report.failed = failures.count;
            self.mirror = None;
        }
        report
    }

    /// Writes back entries that were deleted behind our back, in upstream's order.
    async fn put_back(&mut self, nl: &impl NetOps, mut plan: DeltaPlan) -> ReconcileReport {
        plan.set_neighbours.sort();
        plan.set_neighbours.dedup();
        plan.set_fdb.sort();
        plan.set_fdb.dedup();
        plan.routes.sort();
        plan.routes.dedup();
        let idx = self.index;
        let mut failures = pipelined_failures(
            plan.set_neighbours
                .iter()
                .copied()
                .map(|(ip, mac)| nl.set_neighbour(idx, ip, mac)),
        )
        .await;
        failures.absorb(
            pipelined_failures(
                plan.set_fdb
                    .iter()
                    .copied()
                    .map(|(mac, d)| nl.set_fdb(idx, mac, d)),
            )
            .await,
        );
        failures.absorb(
            pipelined_failures(
                plan.routes
                    .iter()
                    .copied()
                    .map(|(d, g, _)| nl.write_route(d, g, idx, true, RouteWrite::Create)),
            )
            .await,
        );
        let mut report = ReconcileReport {
            added: plan.set_neighbours.len() + plan.set_fdb.len() + plan.routes.len(),
            ..Default::default()
        };
        if failures.is_empty() {
            report.repairs.neighbour = plan.set_neighbours.len();
            report.repairs.fdb = plan.set_fdb.len();
            report.repairs.route = plan.routes.len();
        }
        if report.added > 0 {
            info!(
                device = %self.spec.name,
                neighbours = plan.set_neighbours.len(),
                fdb = plan.set_fdb.len(),
                routes = plan.routes.len(),
                "deleted peer entries put back"
            );
        }
        if !failures.is_empty() {
            for e in &failures.first {
                warn!(error = %e, "putting a deleted entry back failed; a full pass follows");
            }
            report.failed = failures.count;
            self.mirror = None;
        }
        report
    }
}

/// A pass's neighbour and FDB writes on device `idx`: removals, then additions (neighbour
/// before FDB, as upstream orders them), each group pipelined. A rewrite counts as a repair
/// (`repairs`: neighbours, FDB entries) once it is done; failures are logged and counted.
async fn write_entries(
    nl: &impl NetOps,
    idx: u32,
    pn: &crate::diff::Plan<IpAddr, MacAddr>,
    pf: &crate::diff::Plan<MacAddr, IpAddr>,
    (neigh_repairs, fdb_repairs): (usize, usize),
    report: &mut ReconcileReport,
) {
    let mut failures = pipelined_failures(
        pn.remove
            .iter()
            .copied()
            .map(|(ip, _)| nl.del_neighbour(idx, ip)),
    )
    .await;
    failures.absorb(
        pipelined_failures(
            pf.remove
                .iter()
                .copied()
                .map(|(m, d)| nl.del_fdb(idx, m, d)),
        )
        .await,
    );
    report.removed += pn.remove.len() + pf.remove.len();
    let set_neigh = pipelined_failures(
        pn.upsert
            .iter()
            .copied()
            .map(|(ip, m)| nl.set_neighbour(idx, ip, m)),
    )
    .await;
    let set_fdb = pipelined_failures(
        pf.upsert
            .iter()
            .copied()
            .map(|(m, d)| nl.set_fdb(idx, m, d)),
    )
    .await;
    // A rewrite counts as a repair once it is done.
    if set_neigh.is_empty() {
        report.repairs.neighbour += neigh_repairs;
    }
    if set_fdb.is_empty() {
        report.repairs.fdb += fdb_repairs;
    }
    failures.absorb(set_neigh);
    failures.absorb(set_fdb);
    report.added += pn.upsert.len() + pf.upsert.len();
    for e in &failures.first {
        warn!(error = %e, "reconcile step failed; will retry on the next pass");
    }
    if failures.count > failures.first.len() {
        warn!(
            more = failures.count - failures.first.len(),
            "more reconcile steps failed"
        );
    }
    report.failed += failures.count;
}

/// How many of a full pass's neighbour and FDB writes rewrite an entry of a peer the previous
/// pass had routed (`claimed`; a peer's neighbour is its subnet's first address): repairs, not
/// new peers. Costs nothing when nothing is written.
fn rewritten_entries(
    claimed: &BTreeSet<IpNet>,
    want_neigh: &BTreeMap<IpAddr, MacAddr>,
    pn: &crate::diff::Plan<IpAddr, MacAddr>,
    pf: &crate::diff::Plan<MacAddr, IpAddr>,
) -> (usize, usize) {
    if claimed.is_empty() || (pn.upsert.is_empty() && pf.upsert.is_empty()) {
        return (0, 0);
    }
    let before: HashSet<IpAddr> = claimed.iter().map(|n| n.network()).collect();
    let neigh = pn
        .upsert
        .iter()
        .filter(|(ip, _)| before.contains(ip))
        .count();
    let macs: HashSet<MacAddr> = want_neigh
        .iter()
        .filter(|(ip, _)| before.contains(*ip))
        .map(|(_, m)| *m)
        .collect();
    let fdb = pf.upsert.iter().filter(|(m, _)| macs.contains(m)).count();
    (neigh, fdb)
}

impl<N: NetOps> VxlanBackend<N> {
    /// See `Backend::expected`: per peer the route, neighbour and FDB entry on the family's
    /// device (DirectRouting peers: a route through the external interface), with the guard
    /// of the last full pass.
    fn expected_entries(&self, own: &Lease, leases: &[Lease]) -> Vec<KernelEntry> {
        let mut out = Vec::new();
        for o in &self.overlays {
            let Some(own_subnet) = own.subnet_of(o.family) else {
                continue;
            };
            let guard = RouteGuard::last_or(o.guard.as_ref(), o.network);
            let (d, _) = desired_peers_with(o.family, own_subnet, leases, &guard, &|ip| {
                o.direct.contains(&ip)
            });
            let dev = &o.spec.name;
            out.extend(d.neighbours.iter().map(|(ip, mac)| KernelEntry::Neighbour {
                ip: *ip,
                mac: *mac,
                dev: dev.clone(),
            }));
            out.extend(d.fdb.iter().map(|(mac, dst)| KernelEntry::Fdb {
                mac: *mac,
                dst: *dst,
                dev: dev.clone(),
            }));
            out.extend(d.routes.iter().map(|(dst, gw)| KernelEntry::Route {
                dst: *dst,
                gw: Some(*gw),
                dev: dev.clone(),
            }));
            out.extend(d.direct.iter().map(|(dst, gw)| KernelEntry::Route {
                dst: *dst,
                gw: Some(*gw),
                dev: self.ext.name.clone(),
            }));
        }
        out
    }
}

impl<N: NetOps> Backend for VxlanBackend<N> {
    /// The incremental path (see `Backend::apply_delta`): the touched peers' entries against
    /// each overlay's mirror, written without reading the kernel back.
    async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        if self.overlays.iter().any(|o| o.mirror.is_none()) {
            return Ok(None);
        }
        let mut report = ReconcileReport::default();
        let Self {
            nl,
            overlays,
            expected,
            ..
        } = self;
        for o in overlays.iter_mut() {
            let Some(own_subnet) = own.subnet_of(o.family) else {
                return Ok(None);
            };
            report.absorb(
                o.apply_delta(nl, expected, own_subnet, changed, removed)
                    .await,
            );
        }
        report.dedup_skipped();
        Ok(Some(report))
    }

    /// See `Backend::repair`: each deleted entry of a mirrored peer is written again (a route
    /// exclusively: a route someone else put there meanwhile fails, and a full pass decides).
    /// A notification about anything else we cannot place takes a full pass.
    async fn repair(
        &mut self,
        changes: &[Change],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let mut plans: Vec<DeltaPlan> = vec![DeltaPlan::default(); self.overlays.len()];
        for c in changes {
            let hit = self.overlays.iter().enumerate().find_map(|(i, o)| {
                let m = o.mirror.as_ref()?;
                let place = |plan: &mut DeltaPlan| match c {
                    Change::RouteGone(d) => {
                        m.peers.get(d).map(|e| plan.routes.push((*d, e.gw, false)))
                    }
                    Change::NeighbourGone(idx, ip) if *idx == o.index => m
                        .peers
                        .values()
                        .find(|e| e.gw == *ip)
                        .map(|e| plan.set_neighbours.push((*ip, e.mac))),
                    Change::FdbGone(idx, mac) if *idx == o.index => m
                        .peers
                        .values()
                        .find(|e| e.mac == *mac)
                        .map(|e| plan.set_fdb.push((*mac, e.public))),
                    _ => None,
                };
                let mut p = DeltaPlan::default();
                place(&mut p).map(|()| (i, p))
            });
            match (hit, c) {
                (Some((i, p)), _) => {
                    plans[i].routes.extend(p.routes);
                    plans[i].set_neighbours.extend(p.set_neighbours);
                    plans[i].set_fdb.extend(p.set_fdb);
                }
                // Entries on links that are not ours (an ARP entry expiring on eth0).
                (None, Change::NeighbourGone(idx, _) | Change::FdbGone(idx, _))
                    if !self.overlays.iter().any(|o| o.index == *idx) => {}
                // Someone else's route, lost notifications, a link or address change, or an
                // overlay without a mirror: a full pass.
                _ => return Ok(None),
            }
        }
        let mut report = ReconcileReport::default();
        for (o, plan) in self.overlays.iter_mut().zip(plans) {
            report.absorb(o.put_back(&self.nl, plan).await);
        }
        Ok(Some(report))
    }

    /// See `Backend::expected_change`.
    fn expected_change(&mut self, change: &Change) -> bool {
        self.expected.remove(change)
    }

    fn expected(&self, own: &Lease, leases: &[Lease]) -> Vec<KernelEntry> {
        self.expected_entries(own, leases)
    }

    fn devices(&self) -> Vec<String> {
        self.overlays.iter().map(|o| o.spec.name.clone()).collect()
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.ext.ext_addr,
            public_ipv6: self.ext.ext_v6_addr,
            backend_type: "vxlan".into(),
            backend_data: self.backend_data(Family::V4),
            backend_v6_data: self.backend_data(Family::V6),
        }
    }

    /// `FLANNEL_MTU`: the smaller of the devices' MTUs, so that a pod's packet fits both.
    fn mtu(&self) -> u32 {
        self.overlays
            .iter()
            .map(|o| o.spec.mtu)
            .min()
            .unwrap_or_else(|| self.cfg.device_mtu(Family::V4, self.ext.mtu))
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let mut report = ReconcileReport::default();
        let Self {
            nl,
            cfg,
            ext,
            overlays,
            expected,
        } = self;
        expected.clear();
        for o in overlays.iter_mut() {
            let Some(own_subnet) = own.subnet_of(o.family) else {
                warn!(device = %o.spec.name, "our lease has no {:?} subnet; nothing to route there", o.family);
                continue;
            };
            let recreated = o.ensure_device(nl, false).await?;
            let (addr_changes, dev_changes) = o.ensure_device_config(nl, own_subnet).await?;
            let mut r = o
                .reconcile_peers(nl, cfg, ext, expected, own_subnet, leases)
                .await?;
            r.device_recreated = recreated;
            r.added += addr_changes + dev_changes;
            // After the first pass, the device and its address are ours: a change is drift.
            if o.configured {
                r.repairs.device += usize::from(recreated || dev_changes > 0);
                r.repairs.address += if recreated { 0 } else { addr_changes };
            }
            o.configured = true;
            report.absorb(r);
        }
        report.dedup_skipped();
        Ok(report)
    }
}
