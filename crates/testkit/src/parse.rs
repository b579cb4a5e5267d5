//! Test addresses, networks and leases from short text: one copy for every test module (they
//! panic on a typo, which is the test's bug).

use flannel_core::{Lease, LeaseAttrs};
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};

/// `"10.244.1.0/24"`, `"fd00::/64"`.
pub fn net(s: &str) -> IpNet {
    s.parse()
        .unwrap_or_else(|e| panic!("test network {s:?}: {e}"))
}

/// `"10.244.1.0/24"` as IPv4.
pub fn v4net(s: &str) -> Ipv4Net {
    s.parse()
        .unwrap_or_else(|e| panic!("test IPv4 network {s:?}: {e}"))
}

/// `"10.0.0.1"`, `"fd00::1"`.
pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("test address {s:?}: {e}"))
}

/// `"10.0.0.1"` as IPv4.
pub fn v4(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|e| panic!("test IPv4 address {s:?}: {e}"))
}

/// An IPv4 lease of `subnet` held by the node at `public`, of backend `ty` (no backend data).
pub fn lease(subnet: &str, public: &str, ty: &str) -> Lease {
    Lease::v4(
        v4net(subnet),
        LeaseAttrs {
            public_ip: v4(public),
            public_ipv6: None,
            backend_type: ty.into(),
            backend_data: None,
            backend_v6_data: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_becomes_addresses_networks_and_leases() {
        assert_eq!(net("10.244.1.0/24").prefix_len(), 24);
        assert!(ip("fd00::1").is_ipv6());
        let l = lease("10.244.1.0/24", "10.0.0.51", "host-gw");
        assert_eq!(l.attrs.public_ip, v4("10.0.0.51"));
        assert_eq!(l.subnet, v4net("10.244.1.0/24"));
    }

    #[test]
    #[should_panic(expected = "test network")]
    fn a_typo_fails_the_test() {
        net("10.244.1.0/33");
    }
}
