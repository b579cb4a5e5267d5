//! The vxlan backend's desired kernel state, as data: for every remote vxlan lease a permanent
//! neighbour entry (subnet address → VtepMAC), a permanent FDB entry (VtepMAC → PublicIP) and
//! an onlink route (subnet via subnet address) on `flannel.<VNI>` (upstream `vxlan_network.go`).

use crate::peers::usable_peers_in;
use crate::route_guard::RouteGuard;
use flannel_core::family::Family;
use flannel_core::lease::{Lease, VxlanData};
use flannel_core::mac::MacAddr;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Per-device state flannel owns on `flannel.<VNI>` (IPv4) or `flannel-v6.<VNI>` (IPv6): one
/// family's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanPeers {
    /// Neighbour (ARP/NDP) entries: remote subnet network address → remote VtepMAC.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
    /// FDB entries: remote VtepMAC → remote public address.
    pub fdb: BTreeMap<MacAddr, IpAddr>,
    /// Routes: remote subnet → gateway (the subnet's network address), onlink.
    pub routes: BTreeMap<IpNet, IpAddr>,
    /// `DirectRouting`: remote subnet → remote public address, on the external interface.
    pub direct: BTreeMap<IpNet, IpAddr>,
}

pub use crate::peers::Skipped;

/// Computes one family's desired peer state from every known lease. Our own lease, leases of
/// other backend types, leases the guard refuses and leases with unusable data are skipped
/// (and reported), never fatal.
pub fn desired_peers(
    family: Family,
    own_subnet: IpNet,
    leases: &[Lease],
    guard: &RouteGuard,
) -> (VxlanPeers, Vec<Skipped>) {
    desired_peers_with(family, own_subnet, leases, guard, &|_| false)
}

/// [`desired_peers`], where peers for which `direct` says the public address is on our own L2
/// segment (`DirectRouting`) get a plain route via that address instead of VXLAN entries.
pub fn desired_peers_with(
    family: Family,
    own_subnet: IpNet,
    leases: &[Lease],
    guard: &RouteGuard,
    direct: &dyn Fn(IpAddr) -> bool,
) -> (VxlanPeers, Vec<Skipped>) {
    let mut s = VxlanPeers::default();
    let (peers, mut skipped) = usable_peers_in(family, own_subnet, leases, &["vxlan"], guard);
    let field = match family {
        Family::V4 => "BackendData",
        Family::V6 => "BackendV6Data",
    };
    for p in peers {
        if direct(p.public) {
            s.direct.insert(p.subnet, p.public);
            continue;
        }
        let data = match p.data.map(VxlanData::from_raw) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                skipped.push(Skipped {
                    key: p.lease.key(),
                    reason: format!("{field}: {e}"),
                });
                continue;
            }
            None => {
                skipped.push(Skipped {
                    key: p.lease.key(),
                    reason: format!("no {field}"),
                });
                continue;
            }
        };
        let gw = p.subnet.network();
        s.neighbours.insert(gw, data.vtep_mac);
        s.fdb.insert(data.vtep_mac, p.public);
        s.routes.insert(p.subnet, gw);
    }
    (s, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::lease::LeaseAttrs;

    fn guard() -> RouteGuard {
        RouteGuard::networks_only(vec!["10.244.0.0/16".parse().unwrap()])
    }

    fn lease(subnet: &str, ip: &str, ty: &str, data: Option<serde_json::Value>) -> Lease {
        Lease::v4(
            subnet.parse().unwrap(),
            LeaseAttrs::v4(ip.parse().unwrap(), ty, data),
        )
    }

    #[test]
    fn tutorial_peers_become_neigh_fdb_and_routes() {
        let own: IpNet = "10.244.0.0/24".parse().unwrap();
        let leases = vec![
            lease(
                "10.244.0.0/24",
                "10.0.0.50",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:50"})),
            ),
            lease(
                "10.244.1.0/24",
                "10.0.0.51",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:51"})),
            ),
            lease(
                "10.244.2.0/24",
                "10.0.0.52",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:52"})),
            ),
        ];
        let (s, skipped) = desired_peers(Family::V4, own, &leases, &guard());
        assert!(skipped.is_empty());
        assert_eq!(s.routes.len(), 2);
        assert_eq!(
            s.routes[&"10.244.1.0/24".parse().unwrap()],
            IpAddr::from([10, 244, 1, 0])
        );
        assert_eq!(
            s.neighbours[&IpAddr::from([10, 244, 2, 0])].to_string(),
            "02:00:00:00:00:52"
        );
        assert_eq!(
            s.fdb[&"02:00:00:00:00:51".parse().unwrap()],
            IpAddr::from([10, 0, 0, 51])
        );
    }

    #[test]
    fn foreign_and_broken_leases_are_skipped_with_reasons() {
        let own: IpNet = "10.244.0.0/24".parse().unwrap();
        let leases = vec![
            lease("10.244.3.0/24", "10.0.0.53", "host-gw", None),
            lease(
                "10.244.4.0/24",
                "10.0.0.54",
                "vxlan",
                Some(serde_json::json!({"VNI":1})),
            ),
            lease("10.244.5.0/24", "10.0.0.55", "vxlan", None),
            lease(
                "10.244.0.0/16",
                "10.0.0.56",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:56"})),
            ),
            // MACs no VTEP has: the kernel refuses them as permanent FDB entries.
            lease(
                "10.244.7.0/24",
                "10.0.0.57",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"})),
            ),
            lease(
                "10.244.8.0/24",
                "10.0.0.58",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"00:00:00:00:00:00"})),
            ),
            lease(
                "10.244.9.0/24",
                "10.0.0.59",
                "vxlan",
                Some(serde_json::json!({"VNI":1,"VtepMAC":"01:00:5e:00:00:01"})),
            ),
        ];
        let (s, skipped) = desired_peers(Family::V4, own, &leases, &guard());
        assert_eq!(s, VxlanPeers::default());
        assert_eq!(skipped.len(), 7);
        assert_eq!(
            skipped
                .iter()
                .filter(|s| s.reason.contains("is not a unicast address"))
                .count(),
            3,
            "{skipped:?}"
        );
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("is not \"vxlan\"")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("VtepMAC is missing")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("overlaps our own subnet")),
            "{reasons:?}"
        );
    }

    #[test]
    fn direct_routing_peers_get_a_plain_route() {
        let own: IpNet = "10.244.0.0/24".parse().unwrap();
        let data = |m: &str| Some(serde_json::json!({"VNI":1,"VtepMAC":m}));
        let leases = vec![
            lease(
                "10.244.1.0/24",
                "10.0.0.51",
                "vxlan",
                data("02:00:00:00:00:51"),
            ),
            lease(
                "10.244.2.0/24",
                "10.0.1.52",
                "vxlan",
                data("02:00:00:00:00:52"),
            ),
        ];
        let same_segment = |ip: IpAddr| matches!(ip, IpAddr::V4(a) if a.octets()[2] == 0);
        let (s, _) = desired_peers_with(Family::V4, own, &leases, &guard(), &same_segment);
        assert_eq!(
            s.direct[&"10.244.1.0/24".parse().unwrap()],
            IpAddr::from([10, 0, 0, 51])
        );
        assert_eq!(
            s.routes.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["10.244.2.0/24"]
        );
        assert_eq!(s.fdb.len(), 1);
    }

    #[test]
    fn the_ipv6_overlay_uses_each_leases_v6_subnet_address_and_data() {
        let v6guard = RouteGuard::networks_only(vec!["fd00:10:244::/56".parse().unwrap()]);
        let dual = |i: u8, v6data: bool| {
            let mut l = lease(
                &format!("10.244.{i}.0/24"),
                &format!("10.0.0.{}", 50 + i),
                "vxlan",
                Some(serde_json::json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:00:{i:02x}")})),
            );
            l.ipv6_subnet = Some(format!("fd00:10:244:{i}::/64").parse().unwrap());
            l.attrs.public_ipv6 = Some(format!("fd00::{}", 50 + i).parse().unwrap());
            if v6data {
                l.attrs.backend_v6_data = Some(flannel_core::raw_json::RawJson::from_value(
                    &serde_json::json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:06:{i:02x}")}),
                ));
            }
            l
        };
        let leases = vec![dual(0, true), dual(1, true), dual(2, false)];
        let own: IpNet = "fd00:10:244::/64".parse().unwrap();
        let (s, skipped) = desired_peers(Family::V6, own, &leases, &v6guard);
        let gw: IpAddr = "fd00:10:244:1::".parse().unwrap();
        assert_eq!(
            s.routes,
            BTreeMap::from([("fd00:10:244:1::/64".parse().unwrap(), gw)])
        );
        assert_eq!(s.neighbours[&gw].to_string(), "02:00:00:00:06:01");
        assert_eq!(
            s.fdb.values().copied().collect::<Vec<_>>(),
            vec!["fd00::51".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].reason, "no BackendV6Data");
    }
}
