//! The vxlan backend's desired kernel state, as data: for every remote vxlan lease a permanent
//! neighbour entry (subnet address → VtepMAC), a permanent FDB entry (VtepMAC → PublicIP) and
//! an onlink route (subnet via subnet address) on `flannel.<VNI>` (upstream `vxlan_network.go`).

use crate::lease::{Lease, VxlanData};
use crate::mac::MacAddr;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Per-device state flannel owns on `flannel.<VNI>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanPeers {
    /// Neighbour (ARP) entries: remote subnet network address → remote VtepMAC.
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries: remote VtepMAC → remote PublicIP.
    pub fdb: BTreeMap<MacAddr, Ipv4Addr>,
    /// Routes: remote subnet → gateway (the subnet's network address), onlink.
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
}

/// A lease that was left out, and why; the caller logs it with the lease's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub subnet: Ipv4Net,
    pub reason: String,
}

/// Computes the desired peer state from every known lease. Our own lease, leases of other
/// backend types and leases with unusable data are skipped (and reported), never fatal.
pub fn desired_peers(own_subnet: Ipv4Net, leases: &[Lease]) -> (VxlanPeers, Vec<Skipped>) {
    let mut s = VxlanPeers::default();
    let mut skipped = Vec::new();
    let mut skip = |l: &Lease, reason: String| skipped.push(Skipped { subnet: l.subnet, reason });
    for l in leases {
        if l.subnet == own_subnet {
            continue;
        }
        if l.subnet.contains(&own_subnet) || own_subnet.contains(&l.subnet) {
            skip(l, format!("overlaps our own subnet {own_subnet}"));
            continue;
        }
        if l.attrs.backend_type != "vxlan" {
            skip(l, format!("backend type {:?} is not vxlan", l.attrs.backend_type));
            continue;
        }
        let data = match l.attrs.backend_data.as_ref().map(VxlanData::from_value) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                skip(l, e.to_string());
                continue;
            }
            None => {
                skip(l, "no BackendData".into());
                continue;
            }
        };
        if l.attrs.public_ip.is_unspecified() {
            skip(l, "PublicIP is 0.0.0.0".into());
            continue;
        }
        let gw = l.subnet.network();
        s.neighbours.insert(gw, data.vtep_mac);
        s.fdb.insert(data.vtep_mac, l.attrs.public_ip);
        s.routes.insert(l.subnet, gw);
    }
    (s, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: &str, ty: &str, data: Option<serde_json::Value>) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: ty.into(),
                backend_data: data,
                backend_v6_data: None,
            },
        }
    }

    #[test]
    fn tutorial_peers_become_neigh_fdb_and_routes() {
        let own: Ipv4Net = "10.244.0.0/24".parse().unwrap();
        let leases = vec![
            lease("10.244.0.0/24", "10.0.0.50", "vxlan", Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:50"}))),
            lease("10.244.1.0/24", "10.0.0.51", "vxlan", Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:51"}))),
            lease("10.244.2.0/24", "10.0.0.52", "vxlan", Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:52"}))),
        ];
        let (s, skipped) = desired_peers(own, &leases);
        assert!(skipped.is_empty());
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.routes[&"10.244.1.0/24".parse().unwrap()], Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(s.neighbours[&Ipv4Addr::new(10, 244, 2, 0)].to_string(), "02:00:00:00:00:52");
        assert_eq!(s.fdb[&"02:00:00:00:00:51".parse().unwrap()], Ipv4Addr::new(10, 0, 0, 51));
    }

    #[test]
    fn foreign_and_broken_leases_are_skipped_with_reasons() {
        let own: Ipv4Net = "10.244.0.0/24".parse().unwrap();
        let leases = vec![
            lease("10.244.3.0/24", "10.0.0.53", "host-gw", None),
            lease("10.244.4.0/24", "10.0.0.54", "vxlan", Some(serde_json::json!({"VNI":1}))),
            lease("10.244.5.0/24", "10.0.0.55", "vxlan", None),
            lease("10.244.0.0/16", "10.0.0.56", "vxlan", Some(serde_json::json!({"VNI":1,"VtepMAC":"02:00:00:00:00:56"}))),
        ];
        let (s, skipped) = desired_peers(own, &leases);
        assert_eq!(s, VxlanPeers::default());
        assert_eq!(skipped.len(), 4);
        assert!(skipped[0].reason.contains("not vxlan"));
        assert!(skipped[1].reason.contains("VtepMAC is missing"));
        assert!(skipped[3].reason.contains("overlaps our own subnet"));
    }
}
