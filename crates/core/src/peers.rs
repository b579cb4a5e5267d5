//! Which leases a backend programs: every lease but our own, of the backend's type, with a
//! public address, not overlapping our subnet, and allowed by the [`RouteGuard`] (inside the
//! Network, taking over nothing the node routes by itself). The rest are reported, never fatal;
//! the caller logs them with the lease's datastore key.

use crate::lease::Lease;
use crate::route_guard::RouteGuard;
use crate::subnet_key::SubnetKey;
use ipnet::{IpNet, Ipv4Net};
use std::net::IpAddr;

/// A lease that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub key: SubnetKey,
    pub reason: String,
}

/// Splits `leases` into the peers to program and the skipped ones. `backend_types` lists the
/// `BackendType` values accepted (the udp backend publishes none, so it accepts `""`).
pub fn usable_peers<'a>(
    own_subnet: Ipv4Net,
    leases: &'a [Lease],
    backend_types: &[&str],
    guard: &RouteGuard,
) -> (Vec<&'a Lease>, Vec<Skipped>) {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for l in leases {
        if l.subnet == own_subnet {
            continue;
        }
        let reason = if l.subnet.contains(&own_subnet) || own_subnet.contains(&l.subnet) {
            Some(format!("overlaps our own subnet {own_subnet}"))
        } else if !backend_types.contains(&l.attrs.backend_type.as_str()) {
            Some(format!(
                "backend type {:?} is not {:?}",
                l.attrs.backend_type, backend_types[0]
            ))
        } else if l.attrs.public_ip.is_unspecified() {
            Some("PublicIP is 0.0.0.0".into())
        } else {
            guard.conflict(IpNet::V4(l.subnet), Some(IpAddr::V4(l.attrs.public_ip)))
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                key: l.key(),
                reason,
            }),
            None => ok.push(l),
        }
    }
    (ok, skipped)
}
