//! The vxlan backend (upstream `pkg/backend/vxlan`): device `flannel.<VNI>`, and per peer a
//! permanent neighbour entry, a permanent FDB entry and an onlink route, reconciled as data.

use crate::routes::RoutePlan;
use crate::{Backend, BackendError, ExternalInterface, ReconcileReport};
use flannel_core::diff::diff;
use flannel_core::lease::VxlanData;
use flannel_core::route_guard::RouteGuard;
use flannel_core::vxlan::{desired_peers_with, VxlanConfig};
use flannel_core::vxlan_delta::{apply_to_mirror, peers_of, plan_delta, PeerEntry};
use flannel_core::{Lease, LeaseAttrs, MacAddr};
use flannel_net::monitor::Change;
use flannel_net::netlink::{gw_routes_on, is_vxlan};
use flannel_net::{Family, Link, NetOps, Netlink, RouteWrite, VxlanSpec};
use ipnet::{IpNet, Ipv4Net};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use tracing::{debug, info, warn};

pub struct VxlanBackend<N: NetOps = Netlink> {
    nl: N,
    cfg: VxlanConfig,
    ext: ExternalInterface,
    /// The cluster network: addresses inside it on our device that are not ours get removed.
    network: Ipv4Net,
    spec: VxlanSpec,
    index: u32,
    /// Destinations routed on the last pass (see `RouteGuard::claimed`).
    claimed: BTreeSet<IpNet>,
    /// What the last full pass left for each peer, kept current by the incremental path.
    /// `None` until a full pass succeeds, with DirectRouting, and after any failed write.
    mirror: Option<Mirror>,
    /// Our own deletions whose notifications are still on their way (not drift).
    expected: HashSet<Change>,
}

/// The kernel state we programmed, as of the last full pass plus our writes since.
struct Mirror {
    /// The guard of the last full pass: foreign routes and addresses change rarely, and a
    /// lease they newly conflict with fails its exclusive route write (then a full pass).
    guard: RouteGuard,
    peers: BTreeMap<IpNet, PeerEntry>,
}

impl<N: NetOps> VxlanBackend<N> {
    /// Creates or adopts `flannel.<VNI>`. An existing compatible device is kept as it is (its MAC
    /// stays what peers already know); an incompatible one is replaced. A new device takes
    /// `stored_mac` when given (the MAC our previous lease published), else a random one.
    pub async fn register(
        nl: N,
        cfg: VxlanConfig,
        ext: ExternalInterface,
        network: Ipv4Net,
        stored_mac: Option<MacAddr>,
    ) -> Result<Self, BackendError> {
        if cfg.gbp {
            warn!("vxlan GBP is not supported by flannel-rs yet; ignoring it");
        }
        if ext.ext_v6_addr.is_some() {
            warn!("IPv6 is enabled: the lease carries an IPv6 subnet, but this vxlan backend programs the IPv4 overlay only (no flannel-v6.{} yet)", cfg.vni);
        }
        let spec = VxlanSpec {
            name: cfg.device_name(),
            vni: cfg.vni,
            local: ext.ext_addr,
            dev: ext.index,
            port: cfg.port,
            mtu: cfg.device_mtu(ext.mtu),
            mac: stored_mac.unwrap_or_else(MacAddr::random),
            learning: cfg.learning,
        };
        let mut b = Self {
            nl,
            cfg,
            ext,
            network,
            spec,
            index: 0,
            claimed: BTreeSet::new(),
            mirror: None,
            expected: HashSet::new(),
        };
        b.ensure_device(true).await?;
        Ok(b)
    }

    pub fn device_index(&self) -> u32 {
        self.index
    }

    pub fn vtep_mac(&self) -> MacAddr {
        self.spec.mac
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
    async fn ensure_device(&mut self, adopt_mac: bool) -> Result<bool, BackendError> {
        let name = self.spec.name.clone();
        if let Some(l) = self.nl.link_by_name(&name).await? {
            if self.compatible(&l) {
                if let (true, Some(mac)) = (adopt_mac, l.mac) {
                    self.spec.mac = mac;
                }
                self.index = l.index;
                return Ok(false);
            }
            warn!(device = %name, "existing device does not match the vxlan config; recreating it");
            self.nl.delete_link(l.index).await?;
        }
        self.nl.create_vxlan(&self.spec).await?;
        let l = self.nl.link_by_name(&name).await?.ok_or_else(|| {
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

    /// Address `<subnet network>/32`, other addresses inside the cluster network removed, MTU, up.
    async fn ensure_device_config(&self, own: &Lease) -> Result<usize, BackendError> {
        let mut changes = 0;
        let want = IpNet::V4(Ipv4Net::new(own.subnet.network(), 32).unwrap_or_default());
        let addrs = self.nl.addrs(Some(self.index), Family::V4).await?;
        for (_, a) in &addrs {
            let in_network = matches!(a, IpNet::V4(n) if self.network.contains(&n.addr()));
            if *a != want && in_network {
                info!(address = %a, "removing stale address from {}", self.spec.name);
                self.nl.del_addr(self.index, *a).await?;
                changes += 1;
            }
        }
        if !addrs.iter().any(|(_, a)| *a == want) {
            self.nl.add_addr(self.index, want).await?;
            changes += 1;
        }
        if let Some(l) = self.nl.link_by_index(self.index).await? {
            if l.mtu != self.spec.mtu {
                self.nl.set_mtu(self.index, self.spec.mtu).await?;
                changes += 1;
            }
            if !l.up {
                self.nl.set_up(self.index).await?;
                changes += 1;
            }
            // Peers send to the MAC our lease publishes: a MAC changed by hand goes back.
            if l.mac != Some(self.spec.mac) {
                warn!(device = %self.spec.name, found = ?l.mac.map(|m| m.to_string()), "vxlan device MAC was changed; restoring {}", self.spec.mac);
                self.nl.set_mac(self.index, self.spec.mac).await?;
                changes += 1;
            }
        }
        Ok(changes)
    }

    /// `DirectRouting`: which peers' public IPs are on our own L2 segment, i.e. `ip route get`
    /// finds them on the external interface without a gateway.
    async fn direct_peers(&self, leases: &[Lease]) -> BTreeMap<Ipv4Addr, bool> {
        let mut out = BTreeMap::new();
        if !self.cfg.direct_routing {
            return out;
        }
        for l in leases {
            let ip = l.attrs.public_ip;
            if out.contains_key(&ip) || ip.is_unspecified() || ip == self.ext.ext_addr {
                continue;
            }
            let direct = matches!(
                self.nl.route_get_full(IpAddr::V4(ip)).await,
                Ok(Some((oif, _, None))) if oif == self.ext.index
            );
            out.insert(ip, direct);
        }
        out
    }

    async fn reconcile_peers(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let (idx, ext) = (self.index, self.ext.index);
        let table = self.nl.main_routes(Family::V4).await?;
        let nl = &self.nl;
        let guard =
            crate::guard::read(nl, &table, self.network, &[idx], ext, &self.claimed).await?;
        let direct = self.direct_peers(leases).await;
        let (mut desired, skipped) = desired_peers_with(
            Family::V4,
            IpNet::V4(own.subnet),
            leases,
            &guard,
            &|ip| matches!(ip, IpAddr::V4(a) if direct.get(&a).copied().unwrap_or(false)),
        );
        // The mirror only without DirectRouting (see `Mirror`).
        let mirror_peers = (!self.cfg.direct_routing).then(|| peers_of(&desired));
        // Each map is moved into its family-generic form, so that two copies of every peer's
        // entries never live at once (the start of a 20000-peer node is its memory peak).
        let direct_routes = std::mem::take(&mut desired.direct);
        let overlay_routes = std::mem::take(&mut desired.routes);
        let want_neigh = std::mem::take(&mut desired.neighbours);
        let want_fdb = std::mem::take(&mut desired.fdb);
        // DirectRouting routes live on the external interface, where only `proto 252` ones are
        // ours; every route on our own device is ours. Foreign routes the guard let through
        // are overwritten in place.
        let direct_plan = RoutePlan::new(
            ext,
            false,
            &direct_routes,
            &gw_routes_on(&table, ext, true),
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
        let (neigh, fdb) = tokio::try_join!(nl.neighbours(idx, Family::V4), nl.fdb(idx))?;
        let (pn, pf) = (diff(&want_neigh, &neigh), diff(&want_fdb, &fdb));
        drop((neigh, fdb, want_neigh, want_fdb));
        if !(pn.is_empty() && pf.is_empty() && overlay_plan.is_empty()) {
            debug!(neighbours = ?pn, fdb = ?pf, "vxlan peer plan");
        }

        // Removals first, routes before the entries they rely on; then additions in upstream's
        // order (neighbour, FDB, route). Each group goes out as one pipelined batch.
        // Our deletions come back as notifications: they are not drift.
        self.expected.clear();
        for d in direct_plan.removals().chain(overlay_plan.removals()) {
            self.expected.insert(Change::RouteGone(d));
        }
        for (ip, _) in &pn.remove {
            self.expected.insert(Change::NeighbourGone(idx, *ip));
        }
        for (m, _) in &pf.remove {
            self.expected.insert(Change::FdbGone(idx, *m));
        }
        let nl = &self.nl;
        let mut report = direct_plan.remove(nl).await;
        report.absorb(overlay_plan.remove(nl).await);
        let mut results = Vec::new();
        results.extend(
            crate::batch::pipelined(
                pn.remove
                    .iter()
                    .copied()
                    .map(|(ip, _)| nl.del_neighbour(idx, ip)),
            )
            .await,
        );
        results.extend(
            crate::batch::pipelined(
                pf.remove
                    .iter()
                    .copied()
                    .map(|(m, d)| nl.del_fdb(idx, m, d)),
            )
            .await,
        );
        report.removed += pn.remove.len() + pf.remove.len();
        results.extend(
            crate::batch::pipelined(
                pn.upsert
                    .iter()
                    .copied()
                    .map(|(ip, m)| nl.set_neighbour(idx, ip, m)),
            )
            .await,
        );
        results.extend(
            crate::batch::pipelined(
                pf.upsert
                    .iter()
                    .copied()
                    .map(|(m, d)| nl.set_fdb(idx, m, d)),
            )
            .await,
        );
        report.added += pn.upsert.len() + pf.upsert.len();
        for r in results {
            if let Err(e) = r {
                warn!(error = %e, "reconcile step failed; will retry on the next pass");
                report.failed += 1;
            }
        }
        let (overlay, mut failed) = overlay_plan.upsert(nl).await;
        let (direct, direct_failed) = direct_plan.upsert(nl).await;
        report.absorb(overlay);
        report.absorb(direct);
        failed.extend(direct_failed);
        self.claimed = overlay_routes
            .keys()
            .chain(direct_routes.keys())
            .filter(|d| !failed.contains(d))
            .copied()
            .collect();
        report.skipped = skipped;
        self.mirror = mirror_peers
            .filter(|_| report.failed == 0)
            .map(|peers| Mirror { guard, peers });
        Ok(report)
    }

    /// The incremental path (see `Backend::apply_delta`): the touched peers' entries against
    /// the mirror, written without reading the kernel back.
    pub async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let Some(m) = self.mirror.as_mut() else {
            return Ok(None);
        };
        let (desired, skipped) = desired_peers_with(
            Family::V4,
            IpNet::V4(own.subnet),
            changed,
            &m.guard,
            &|_| false,
        );
        let want = peers_of(&desired);
        let touched = crate::touched_subnets(own, changed, removed);
        let plan = plan_delta(&m.peers, &touched, &want);
        let (nl, idx) = (&self.nl, self.index);
        for (d, _) in &plan.del_routes {
            self.expected.insert(Change::RouteGone(*d));
        }
        for ip in &plan.del_neighbours {
            self.expected.insert(Change::NeighbourGone(idx, *ip));
        }
        for (mac, _) in &plan.del_fdb {
            self.expected.insert(Change::FdbGone(idx, *mac));
        }
        let mut failures = Vec::new();
        let mut report = ReconcileReport::default();
        // Removals, routes before the entries they rely on; then additions in upstream's order.
        for r in crate::batch::pipelined(
            plan.del_routes
                .iter()
                .copied()
                .map(|(d, g)| nl.del_route(d, g, idx)),
        )
        .await
        {
            failures.extend(r.err());
        }
        let dels = crate::batch::pipelined(
            plan.del_neighbours
                .iter()
                .copied()
                .map(|ip| nl.del_neighbour(idx, ip)),
        );
        let fdb_dels = crate::batch::pipelined(
            plan.del_fdb
                .iter()
                .copied()
                .map(|(mac, d)| nl.del_fdb(idx, mac, d)),
        );
        let (a, b) = futures::join!(dels, fdb_dels);
        failures.extend(a.into_iter().chain(b).filter_map(Result::err));
        let sets = crate::batch::pipelined(
            plan.set_neighbours
                .iter()
                .copied()
                .map(|(ip, mac)| nl.set_neighbour(idx, ip, mac)),
        );
        let fdb_sets = crate::batch::pipelined(
            plan.set_fdb
                .iter()
                .copied()
                .map(|(mac, d)| nl.set_fdb(idx, mac, d)),
        );
        let (a, b) = futures::join!(sets, fdb_sets);
        failures.extend(a.into_iter().chain(b).filter_map(Result::err));
        let writes = crate::batch::pipelined(plan.routes.iter().copied().map(|(d, g, replace)| {
            let how = if replace {
                RouteWrite::Replace
            } else {
                RouteWrite::Create
            };
            nl.write_route(d, g, idx, true, how)
        }))
        .await;
        failures.extend(writes.into_iter().filter_map(Result::err));
        report.removed = plan.del_routes.len() + plan.del_neighbours.len() + plan.del_fdb.len();
        report.added = plan.set_neighbours.len() + plan.set_fdb.len() + plan.routes.len();
        report.skipped = skipped;
        for (d, g) in &plan.del_routes {
            info!(subnet = %d, via = %g, "removed route to a peer that has no lease any more");
            self.claimed.remove(d);
        }
        for (d, g, _) in &plan.routes {
            info!(subnet = %d, via = %g, "programmed route to peer");
            self.claimed.insert(*d);
        }
        if failures.is_empty() {
            apply_to_mirror(&mut m.peers, &touched, &want);
        } else {
            for e in &failures {
                warn!(error = %e, "an incremental write failed; a full pass follows");
            }
            report.failed = failures.len();
            self.mirror = None;
        }
        Ok(Some(report))
    }

    /// See `Backend::repair`: each deleted entry of a mirrored peer is written again (a route
    /// exclusively: a route someone else put there meanwhile fails, and a full pass decides).
    /// A notification about anything else we cannot place takes a full pass.
    pub async fn repair(
        &mut self,
        changes: &[Change],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let Some(m) = self.mirror.as_ref() else {
            return Ok(None);
        };
        let idx = self.index;
        let mut plan = flannel_core::vxlan_delta::DeltaPlan::default();
        for c in changes {
            match c {
                Change::RouteGone(d) => match m.peers.get(d) {
                    Some(e) => plan.routes.push((*d, e.gw, false)),
                    None => return Ok(None),
                },
                Change::NeighbourGone(i, ip) if *i == idx => {
                    match m.peers.values().find(|e| e.gw == *ip) {
                        Some(e) => plan.set_neighbours.push((*ip, e.mac)),
                        None => return Ok(None),
                    }
                }
                Change::FdbGone(i, mac) if *i == idx => {
                    match m.peers.values().find(|e| e.mac == *mac) {
                        Some(e) => plan.set_fdb.push((*mac, e.public)),
                        None => return Ok(None),
                    }
                }
                // Entries on other links are not ours (an ARP entry expiring on eth0).
                Change::NeighbourGone(..) | Change::FdbGone(..) => {}
                Change::Other => return Ok(None),
            }
        }
        plan.set_neighbours.sort();
        plan.set_neighbours.dedup();
        plan.set_fdb.sort();
        plan.set_fdb.dedup();
        plan.routes.sort();
        plan.routes.dedup();
        let nl = &self.nl;
        let mut failures = Vec::new();
        // Upstream's order: neighbour, FDB, then the route that relies on them.
        for r in crate::batch::pipelined(
            plan.set_neighbours
                .iter()
                .copied()
                .map(|(ip, mac)| nl.set_neighbour(idx, ip, mac)),
        )
        .await
        {
            failures.extend(r.err());
        }
        for r in crate::batch::pipelined(
            plan.set_fdb
                .iter()
                .copied()
                .map(|(mac, d)| nl.set_fdb(idx, mac, d)),
        )
        .await
        {
            failures.extend(r.err());
        }
        for r in crate::batch::pipelined(
            plan.routes
                .iter()
                .copied()
                .map(|(d, g, _)| nl.write_route(d, g, idx, true, RouteWrite::Create)),
        )
        .await
        {
            failures.extend(r.err());
        }
        let mut report = ReconcileReport {
            added: plan.set_neighbours.len() + plan.set_fdb.len() + plan.routes.len(),
            ..Default::default()
        };
        if report.added > 0 {
            info!(
                neighbours = plan.set_neighbours.len(),
                fdb = plan.set_fdb.len(),
                routes = plan.routes.len(),
                "deleted peer entries put back"
            );
        }
        if !failures.is_empty() {
            for e in &failures {
                warn!(error = %e, "putting a deleted entry back failed; a full pass follows");
            }
            report.failed = failures.len();
            self.mirror = None;
        }
        Ok(Some(report))
    }

    /// See `Backend::expected_change`.
    pub fn expected_change(&mut self, change: &Change) -> bool {
        self.expected.remove(change)
    }
}

impl<N: NetOps> Backend for VxlanBackend<N> {
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.ext.ext_addr,
            public_ipv6: self.ext.ext_v6_addr,
            backend_type: "vxlan".into(),
            backend_data: Some(flannel_core::raw_json::RawJson::from_value(
                &VxlanData {
                    vni: self.cfg.vni,
                    vtep_mac: self.spec.mac,
                }
                .to_value(),
            )),
            backend_v6_data: None,
        }
    }

    fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let recreated = self.ensure_device(false).await?;
        let dev_changes = self.ensure_device_config(own).await?;
        let mut report = self.reconcile_peers(own, leases).await?;
        report.device_recreated = recreated;
        report.added += dev_changes;
        Ok(report)
    }
}
