//! The vxlan backend (upstream `pkg/backend/vxlan`): device `flannel.<VNI>`, and per peer a
//! permanent neighbour entry, a permanent FDB entry and an onlink route, reconciled as data.

use crate::routes::RoutePlan;
use crate::{Backend, BackendError, ExternalInterface, ReconcileReport};
use flannel_core::diff::diff;
use flannel_core::lease::VxlanData;
use flannel_core::vxlan::{desired_peers_with, VxlanConfig};
use flannel_core::{Lease, LeaseAttrs, MacAddr};
use flannel_net::netlink::{gw_routes_on, is_vxlan};
use flannel_net::{Link, Netlink, VxlanSpec};
use futures::future::join_all;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use tracing::{debug, info, warn};

pub struct VxlanBackend {
    nl: Netlink,
    cfg: VxlanConfig,
    ext: ExternalInterface,
    /// The cluster network: addresses inside it on our device that are not ours get removed.
    network: Ipv4Net,
    spec: VxlanSpec,
    index: u32,
    /// Destinations routed on the last pass (see `RouteGuard::claimed`).
    claimed: BTreeSet<Ipv4Net>,
}

impl VxlanBackend {
    /// Creates or adopts `flannel.<VNI>`. An existing compatible device is kept as it is (its MAC
    /// stays what peers already know); an incompatible one is replaced. A new device takes
    /// `stored_mac` when given (the MAC our previous lease published), else a random one.
    pub async fn register(
        nl: Netlink,
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
        // Peers never send router advertisements over the overlay.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0");
        self.index = l.index;
        info!(device = %name, mac = %self.spec.mac, mtu = self.spec.mtu, local = %self.spec.local, "created vxlan device");
        Ok(true)
    }

    /// Address `<subnet network>/32`, other addresses inside the cluster network removed, MTU, up.
    async fn ensure_device_config(&self, own: &Lease) -> Result<usize, BackendError> {
        let mut changes = 0;
        let want = Ipv4Net::new(own.subnet.network(), 32).unwrap_or_default();
        let addrs = self.nl.ipv4_addrs(Some(self.index)).await?;
        for (_, a) in &addrs {
            if *a != want && self.network.contains(&a.addr()) {
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
        let nl = &self.nl;
        let table = nl.main_routes_v4().await?;
        let guard =
            crate::guard::read(nl, &table, self.network, &[idx], ext, &self.claimed).await?;
        let direct = self.direct_peers(leases).await;
        let (desired, skipped) = desired_peers_with(own.subnet, leases, &guard, &|ip| {
            direct.get(&ip).copied().unwrap_or(false)
        });
        // DirectRouting routes live on the external interface, where only `proto 252` ones are
        // ours; every route on our own device is ours. Foreign routes the guard let through
        // are overwritten in place.
        let direct_plan = RoutePlan::new(
            ext,
            false,
            &desired.direct,
            &gw_routes_on(&table, ext, true),
            &crate::guard::adoptable(&table, &[idx], &desired.direct),
        );
        let overlay_plan = RoutePlan::new(
            idx,
            true,
            &desired.routes,
            &gw_routes_on(&table, idx, false),
            &crate::guard::adoptable(&table, &[idx], &desired.routes),
        );
        let (neigh, fdb) = tokio::try_join!(nl.neighbours(idx), nl.fdb(idx))?;
        let (pn, pf) = (diff(&desired.neighbours, &neigh), diff(&desired.fdb, &fdb));
        if !(pn.is_empty() && pf.is_empty() && overlay_plan.is_empty()) {
            debug!(neighbours = ?pn, fdb = ?pf, "vxlan peer plan");
        }

        // Removals first, routes before the entries they rely on; then additions in upstream's
        // order (neighbour, FDB, route). Each group goes out as one pipelined batch.
        let mut report = direct_plan.remove(nl).await;
        report.absorb(overlay_plan.remove(nl).await);
        let mut results = Vec::new();
        results.extend(join_all(pn.remove.iter().map(|(ip, _)| nl.del_neighbour(idx, *ip))).await);
        results.extend(join_all(pf.remove.iter().map(|(m, d)| nl.del_fdb(idx, *m, *d))).await);
        report.removed += pn.remove.len() + pf.remove.len();
        results.extend(
            join_all(
                pn.upsert
                    .iter()
                    .map(|(ip, m)| nl.set_neighbour(idx, *ip, *m)),
            )
            .await,
        );
        results.extend(join_all(pf.upsert.iter().map(|(m, d)| nl.set_fdb(idx, *m, *d))).await);
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
        self.claimed = desired
            .routes
            .keys()
            .chain(desired.direct.keys())
            .filter(|d| !failed.contains(d))
            .copied()
            .collect();
        report.skipped = skipped;
        Ok(report)
    }
}

impl Backend for VxlanBackend {
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
