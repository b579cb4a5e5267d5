//! The host-gw backend's desired routes (upstream `pkg/backend/hostgw`): every remote host-gw
//! subnet via the remote node's public IP, on the external interface.

use crate::peers::{usable_peers_in, Skipped};
use crate::route_guard::RouteGuard;
use flannel_core::family::Family;
use flannel_core::lease::Lease;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The routes of one family: each peer's subnet via its public address of that family.
pub fn desired_routes(
    family: Family,
    own_subnet: IpNet,
    leases: &[Lease],
    guard: &RouteGuard,
) -> (BTreeMap<IpNet, IpAddr>, Vec<Skipped>) {
    let (peers, skipped) = usable_peers_in(family, own_subnet, leases, &["host-gw"], guard);
    (
        peers.iter().map(|p| (p.subnet, p.public)).collect(),
        skipped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use flannel_testkit::parse::lease;

    #[test]
    fn routes_via_public_ips_and_skips() {
        let own: IpNet = "10.244.1.0/24".parse().unwrap();
        let guard = RouteGuard::networks_only(vec!["10.244.0.0/16".parse().unwrap()]);
        let (r, skipped) = desired_routes(
            Family::V4,
            own,
            &[
                lease("10.244.1.0/24", "10.0.0.51", "host-gw"),
                lease("10.244.2.0/24", "10.0.0.52", "host-gw"),
                lease("10.244.3.0/24", "10.0.0.53", "vxlan"),
                lease("10.244.4.0/24", "0.0.0.0", "host-gw"),
                lease("10.245.4.0/24", "10.0.0.54", "host-gw"),
            ],
            &guard,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[&"10.244.2.0/24".parse().unwrap()],
            IpAddr::from([10, 0, 0, 52])
        );
        assert_eq!(skipped.len(), 3);
        assert!(
            skipped[2].reason.contains("outside the network"),
            "{skipped:?}"
        );
    }
}
