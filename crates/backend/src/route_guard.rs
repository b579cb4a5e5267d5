//! Which leases may be programmed without taking over what the node already routes.
//!
//! A lease is data in the datastore, and anyone with write access can put one there. Before its
//! subnet becomes a route (or a udp peer-table entry), it must lie inside the cluster Network
//! and must not overlap what the node itself uses:
//! - an address prefix on an interface flannel did not create (`10.0.0.50/24` on eth0), or
//! - a main-table route flannel does not own, when that route is as specific as the lease or
//!   more (replacing it would take it over), or when it is a directly connected segment that
//!   contains the lease (routing part of the node's own segment elsewhere).
//!
//! A broader route via a gateway, or a broader blackhole, is only a less specific path: a pod
//! subnet carved out of it is what a pod network does (a corporate 10.0.0.0/8 via a VPN, the
//! cluster in 10.244.0.0/16). The default route is never a conflict.
//!
//! One exception keeps self-healing: a destination flannel already routed (it is `claimed`)
//! and that now holds someone else's route was changed under us (by hand, say); that is drift,
//! and the route is put back.
//!
//! Family-generic: v4 and v6 leases go through the same checks.

use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// An address, with its prefix, on an interface flannel did not create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    pub addr: IpNet,
    pub iface: String,
}

/// A main-table route flannel does not own (not `proto 252`, not on a flannel device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// A unicast route without a gateway: a segment the node reaches directly.
    pub connected: bool,
    /// The route as `ip route` would show it, for the log.
    pub shown: String,
}

/// What the node routes by itself, read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalState {
    pub addrs: Vec<LocalAddr>,
    pub routes: Vec<LocalRoute>,
}

/// What every lease is checked against before it is programmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteGuard {
    /// The cluster networks (`Network`, `IPv6Network`).
    pub networks: Vec<IpNet>,
    pub local: LocalState,
    /// The external interface. A route there to a lease's subnet via the lease's public IP is
    /// exactly what host-gw or DirectRouting install for it (upstream flannel left it behind):
    /// it is taken over, not a conflict.
    pub ext_index: Option<u32>,
    /// Destinations flannel routed on the previous pass: a foreign route with exactly that
    /// destination replaced ours, and ours goes back.
    pub claimed: BTreeSet<IpNet>,
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

impl RouteGuard {
    /// The guard of the last full pass, else one that checks only `network` (before the first
    /// pass): how the state snapshot and the incremental path judge leases.
    pub fn last_or(last: Option<&RouteGuard>, network: IpNet) -> std::borrow::Cow<'_, RouteGuard> {
        match last {
            Some(g) => std::borrow::Cow::Borrowed(g),
            None => std::borrow::Cow::Owned(Self::networks_only(vec![network])),
        }
    }

    /// A guard that only checks the networks (no kernel state).
    pub fn networks_only(networks: Vec<IpNet>) -> Self {
        Self {
            networks,
            ..Self::default()
        }
    }

    /// Why `subnet` (published by a node at `public_ip`) must not be programmed, if anything.
    pub fn conflict(&self, subnet: IpNet, public_ip: Option<IpAddr>) -> Option<String> {
        if !self.networks.iter().any(|n| n.contains(&subnet)) {
            let same_family: Vec<String> = self
                .networks
                .iter()
                .filter(|n| n.addr().is_ipv4() == subnet.addr().is_ipv4())
                .map(|n| n.to_string())
                .collect();
            return Some(match same_family.is_empty() {
                true => "lies outside the network (no network of its family is configured)".into(),
                false => format!("lies outside the network {}", same_family.join(", ")),
            });
        }
        if let Some(a) = self
            .local
            .addrs
            .iter()
            .find(|a| overlap(&a.addr.trunc(), &subnet))
        {
            return Some(format!(
                "overlaps address {} on {}, which flannel did not create",
                a.addr, a.iface
            ));
        }
        for r in &self.local.routes {
            if r.dst.prefix_len() == 0 || !overlap(&r.dst, &subnet) {
                continue;
            }
            if r.dst == subnet && self.claimed.contains(&subnet) {
                continue;
            }
            let adoptable = r.dst == subnet
                && r.gateway.is_some()
                && r.gateway == public_ip
                && r.oif.is_some()
                && r.oif == self.ext_index;
            if adoptable {
                continue;
            }
            if subnet.contains(&r.dst) {
                return Some(format!(
                    "overlaps route {}, which is not flannel's",
                    r.shown
                ));
            }
            if r.connected {
                return Some(format!(
                    "lies inside the directly connected {}, which is not flannel's",
                    r.shown
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use flannel_testkit::net;

    fn route(dst: &str, gw: Option<&str>, oif: u32, shown: &str) -> LocalRoute {
        LocalRoute {
            dst: net(dst),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            connected: gw.is_none(),
            shown: shown.into(),
        }
    }

    /// eth0 (#2) 10.99.0.2/24 with its connected route, a default route, a corporate 10/8 via
    /// a router, a static /24, and upstream's host-gw route for a peer.
    fn guard() -> RouteGuard {
        RouteGuard {
            networks: vec![net("10.0.0.0/8"), net("fd00:10::/56")],
            local: LocalState {
                addrs: vec![
                    LocalAddr {
                        addr: net("10.99.0.2/24"),
                        iface: "eth0".into(),
                    },
                    LocalAddr {
                        addr: net("127.0.0.1/8"),
                        iface: "lo".into(),
                    },
                ],
                routes: vec![
                    route("0.0.0.0/0", Some("10.99.0.1"), 2, "default via 10.99.0.1"),
                    route(
                        "10.99.0.0/24",
                        None,
                        2,
                        "10.99.0.0/24 dev eth0 proto kernel",
                    ),
                    route(
                        "10.0.0.0/8",
                        Some("10.99.0.254"),
                        2,
                        "10.0.0.0/8 via 10.99.0.254",
                    ),
                    route(
                        "10.5.0.0/24",
                        Some("10.99.0.1"),
                        2,
                        "10.5.0.0/24 via 10.99.0.1",
                    ),
                    route(
                        "10.9.0.0/24",
                        Some("10.99.0.62"),
                        2,
                        "10.9.0.0/24 via 10.99.0.62",
                    ),
                ],
            },
            ext_index: Some(2),
            claimed: BTreeSet::new(),
        }
    }

    fn check(subnet: &str, ip: &str) -> Option<String> {
        guard().conflict(net(subnet), Some(ip.parse().unwrap()))
    }

    #[test]
    fn the_nodes_own_segment_and_others_routes_are_conflicts() {
        let c = check("10.99.0.0/24", "10.99.0.60").unwrap();
        assert!(c.contains("overlaps address 10.99.0.2/24 on eth0"), "{c}");
        // Containing it, or inside it: both take part of the segment.
        assert!(check("10.99.0.0/16", "10.99.0.60").is_some());
        assert!(check("10.99.0.128/25", "10.99.0.60").is_some());
        let c = check("10.5.0.0/24", "10.99.0.60").unwrap();
        assert!(
            c.contains("overlaps route 10.5.0.0/24 via 10.99.0.1"),
            "{c}"
        );
        // A lease containing a more specific foreign route.
        assert!(check("10.5.0.0/16", "10.99.0.60").is_some());
    }

    #[test]
    fn outside_the_network_is_a_conflict() {
        let c = check("192.168.50.0/24", "10.99.0.60").unwrap();
        assert_eq!(c, "lies outside the network 10.0.0.0/8");
        assert!(check("128.0.0.0/1", "10.99.0.60").is_some());
        let c = RouteGuard::networks_only(vec![net("10.0.0.0/8")])
            .conflict(net("fd00:10::/64"), None)
            .unwrap();
        assert!(c.contains("no network of its family"), "{c}");
    }

    #[test]
    fn broader_gateway_routes_the_default_and_upstreams_own_route_are_not() {
        // Inside the corporate 10/8 via a router: a pod subnet carved out of it is fine.
        assert_eq!(check("10.244.1.0/24", "10.99.0.60"), None);
        // Upstream's host-gw route for this very lease: taken over.
        assert_eq!(check("10.9.0.0/24", "10.99.0.62"), None);
        // The same route claimed by another public IP is someone else's.
        assert!(check("10.9.0.0/24", "10.99.0.63").is_some());
        // A destination we routed before and someone replaced by hand: ours goes back.
        let mut g = guard();
        g.claimed.insert(net("10.5.0.0/24"));
        assert_eq!(
            g.conflict(net("10.5.0.0/24"), "10.99.0.60".parse().ok()),
            None
        );
        // ... but never a segment of the node's own.
        g.claimed.insert(net("10.99.0.0/24"));
        assert!(g
            .conflict(net("10.99.0.0/24"), "10.99.0.60".parse().ok())
            .is_some());
        // v6 goes through the same rules.
        assert_eq!(
            guard().conflict(net("fd00:10:0:1::/64"), "fd00::1".parse().ok()),
            None
        );
    }
}
