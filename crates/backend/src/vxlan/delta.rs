//! The vxlan backend's incremental path: what a few lease changes mean for the kernel, given
//! what we programmed for every peer (the mirror). A lease event then costs what it changes:
//! no dump of thousands of routes, neighbours and FDB entries. The full pass stays the safety
//! net (at start, on a timer, after any failed write, on drift the kernel reports).
//!
//! Family-generic: the same mirror holds IPv4 and IPv6 peers.

use super::desired::VxlanPeers;
use flannel_core::MacAddr;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What we programmed for one peer subnet: the route's gateway (the subnet's network address,
/// also the neighbour entry's address), the peer's VTEP MAC and its public IP (the FDB entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntry {
    pub gw: IpAddr,
    pub mac: MacAddr,
    pub public: IpAddr,
}

/// The peers of a desired state (VXLAN peers only; DirectRouting peers are not mirrored).
pub fn peers_of(d: &VxlanPeers) -> BTreeMap<IpNet, PeerEntry> {
    d.routes
        .iter()
        .filter_map(|(subnet, gw)| {
            let mac = *d.neighbours.get(gw)?;
            let public = *d.fdb.get(&mac)?;
            Some((
                *subnet,
                PeerEntry {
                    gw: *gw,
                    mac,
                    public,
                },
            ))
        })
        .collect()
}

/// Kernel writes for a delta, in the order they go out: removals (routes first, then the
/// entries they relied on), then additions (neighbour, FDB, route), as in a full pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaPlan {
    pub del_routes: Vec<(IpNet, IpAddr)>,
    pub del_neighbours: Vec<IpAddr>,
    pub del_fdb: Vec<(MacAddr, IpAddr)>,
    pub set_neighbours: Vec<(IpAddr, MacAddr)>,
    pub set_fdb: Vec<(MacAddr, IpAddr)>,
    /// (destination, gateway, replace): replace only where the route is ours already.
    pub routes: Vec<(IpNet, IpAddr, bool)>,
}

impl DeltaPlan {
    pub fn is_empty(&self) -> bool {
        *self == DeltaPlan::default()
    }
}

/// The writes that take the `touched` subnets from what `mirror` says we programmed to what
/// `want` holds for them (a touched subnet absent from `want` is gone, or now skipped). An FDB
/// entry stays while another peer still uses its MAC.
pub fn plan_delta(
    mirror: &BTreeMap<IpNet, PeerEntry>,
    touched: &[IpNet],
    want: &BTreeMap<IpNet, PeerEntry>,
) -> DeltaPlan {
    let mut p = DeltaPlan::default();
    let mut touched = touched.to_vec();
    touched.sort();
    touched.dedup();
    // Whether some peer other than the touched ones, or a wanted one, keeps using `mac`.
    let mac_in_use = |mac: MacAddr| {
        mirror
            .iter()
            .any(|(s, e)| e.mac == mac && touched.binary_search(s).is_err())
            || want.values().any(|e| e.mac == mac)
    };
    for s in &touched {
        match (mirror.get(s), want.get(s)) {
            (None, None) => {}
            (Some(old), None) => {
                p.del_routes.push((*s, old.gw));
                p.del_neighbours.push(old.gw);
                if !mac_in_use(old.mac) && !p.del_fdb.contains(&(old.mac, old.public)) {
                    p.del_fdb.push((old.mac, old.public));
                }
            }
            (None, Some(new)) => {
                p.set_neighbours.push((new.gw, new.mac));
                p.set_fdb.push((new.mac, new.public));
                p.routes.push((*s, new.gw, false));
            }
            (Some(old), Some(new)) if old != new => {
                if old.mac != new.mac || old.gw != new.gw {
                    p.set_neighbours.push((new.gw, new.mac));
                }
                if old.gw != new.gw {
                    p.del_neighbours.push(old.gw);
                    p.routes.push((*s, new.gw, true));
                }
                p.set_fdb.push((new.mac, new.public));
                if old.mac != new.mac && !mac_in_use(old.mac) {
                    p.del_fdb.push((old.mac, old.public));
                }
            }
            _ => {}
        }
    }
    p
}

/// The mirror after the plan for `touched` was applied.
pub fn apply_to_mirror(
    mirror: &mut BTreeMap<IpNet, PeerEntry>,
    touched: &[IpNet],
    want: &BTreeMap<IpNet, PeerEntry>,
) {
    for s in touched {
        match want.get(s) {
            Some(e) => {
                mirror.insert(*s, *e);
            }
            None => {
                mirror.remove(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(gw: &str, mac: u8, public: &str) -> PeerEntry {
        PeerEntry {
            gw: gw.parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            public: public.parse().unwrap(),
        }
    }
    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn an_added_peer_gets_neighbour_fdb_and_a_created_route() {
        let mirror = BTreeMap::from([(n("10.244.1.0/24"), e("10.244.1.0", 1, "10.0.0.51"))]);
        let want = BTreeMap::from([(n("10.244.2.0/24"), e("10.244.2.0", 2, "10.0.0.52"))]);
        let p = plan_delta(&mirror, &[n("10.244.2.0/24")], &want);
        assert_eq!(
            p.set_neighbours,
            vec![("10.244.2.0".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 2]))]
        );
        assert_eq!(
            p.set_fdb,
            vec![(MacAddr([2, 0, 0, 0, 0, 2]), "10.0.0.52".parse().unwrap())]
        );
        assert_eq!(
            p.routes,
            vec![(n("10.244.2.0/24"), "10.244.2.0".parse().unwrap(), false)]
        );
        assert!(p.del_routes.is_empty() && p.del_neighbours.is_empty() && p.del_fdb.is_empty());
    }

    #[test]
    fn a_removed_peer_loses_its_entries_but_a_shared_mac_keeps_its_fdb_entry() {
        let mirror = BTreeMap::from([
            (n("10.244.1.0/24"), e("10.244.1.0", 1, "10.0.0.51")),
            (n("10.244.2.0/24"), e("10.244.2.0", 2, "10.0.0.52")),
            (n("10.244.3.0/24"), e("10.244.3.0", 2, "10.0.0.52")),
        ]);
        let p = plan_delta(
            &mirror,
            &[n("10.244.1.0/24"), n("10.244.2.0/24")],
            &BTreeMap::new(),
        );
        assert_eq!(p.del_routes.len(), 2);
        assert_eq!(p.del_neighbours.len(), 2);
        assert_eq!(
            p.del_fdb,
            vec![(MacAddr([2, 0, 0, 0, 0, 1]), "10.0.0.51".parse().unwrap())]
        );
        assert!(p.set_neighbours.is_empty() && p.routes.is_empty());
    }

    #[test]
    fn a_new_vtep_mac_replaces_neighbour_and_fdb_not_the_route() {
        let mirror = BTreeMap::from([(n("10.244.1.0/24"), e("10.244.1.0", 1, "10.0.0.51"))]);
        let want = BTreeMap::from([(n("10.244.1.0/24"), e("10.244.1.0", 9, "10.0.0.51"))]);
        let p = plan_delta(&mirror, &[n("10.244.1.0/24")], &want);
        assert_eq!(
            p.set_neighbours,
            vec![("10.244.1.0".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 9]))]
        );
        assert_eq!(
            p.set_fdb,
            vec![(MacAddr([2, 0, 0, 0, 0, 9]), "10.0.0.51".parse().unwrap())]
        );
        assert_eq!(
            p.del_fdb,
            vec![(MacAddr([2, 0, 0, 0, 0, 1]), "10.0.0.51".parse().unwrap())]
        );
        assert!(p.routes.is_empty() && p.del_routes.is_empty() && p.del_neighbours.is_empty());
        // Unchanged: nothing at all.
        assert!(plan_delta(&mirror, &[n("10.244.1.0/24")], &mirror).is_empty());
    }

    #[test]
    fn random_deltas_keep_the_mirror_equal_to_the_wanted_state() {
        // A tiny kernel model: apply each plan to it and compare with the desired state.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut mirror: BTreeMap<IpNet, PeerEntry> = BTreeMap::new();
        let mut kernel_fdb: BTreeMap<MacAddr, IpAddr> = BTreeMap::new();
        let mut kernel_routes: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        let mut desired: BTreeMap<IpNet, PeerEntry> = BTreeMap::new();
        for _ in 0..2000 {
            let i = rnd(40) as u8;
            let s = n(&format!("10.244.{i}.0/24"));
            let want = if rnd(3) == 0 {
                BTreeMap::new()
            } else {
                BTreeMap::from([(
                    s,
                    e(
                        &format!("10.244.{i}.0"),
                        rnd(20) as u8,
                        &format!("10.0.0.{}", rnd(20)),
                    ),
                )])
            };
            let p = plan_delta(&mirror, &[s], &want);
            for (d, _) in &p.del_routes {
                kernel_routes.remove(d);
            }
            for (m, _) in &p.del_fdb {
                kernel_fdb.remove(m);
            }
            for (m, ip) in &p.set_fdb {
                kernel_fdb.insert(*m, *ip);
            }
            for (d, g, _) in &p.routes {
                kernel_routes.insert(*d, *g);
            }
            apply_to_mirror(&mut mirror, &[s], &want);
            match want.get(&s) {
                Some(w) => desired.insert(s, *w),
                None => desired.remove(&s),
            };
            assert_eq!(mirror, desired);
            let routes: BTreeMap<IpNet, IpAddr> = desired.iter().map(|(s, e)| (*s, e.gw)).collect();
            assert_eq!(kernel_routes, routes);
            // Every MAC in use has an FDB entry; none that nobody uses is left.
            let macs: std::collections::BTreeSet<MacAddr> =
                desired.values().map(|e| e.mac).collect();
            assert_eq!(
                kernel_fdb
                    .keys()
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>(),
                macs
            );
        }
    }
}
