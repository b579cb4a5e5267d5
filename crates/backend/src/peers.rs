//! Which leases a backend programs: every lease but our own, of the backend's type, with a
//! public address, not overlapping our subnet, and allowed by the [`RouteGuard`] (inside the
//! Network, taking over nothing the node routes by itself). The rest are reported, never fatal;
//! the caller logs them with the lease's datastore key.

use crate::route_guard::RouteGuard;
use flannel_core::family::Family;
use flannel_core::lease::Lease;
use flannel_core::raw_json::RawJson;
use flannel_core::subnet_key::SubnetKey;
use ipnet::{IpNet, Ipv4Net};
use std::net::IpAddr;

/// A lease that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub key: SubnetKey,
    pub reason: String,
}

/// One family's view of a lease that a backend programs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peer<'a> {
    pub lease: &'a Lease,
    pub subnet: IpNet,
    pub public: IpAddr,
    pub data: Option<&'a RawJson>,
}

/// Splits `leases` into the peers to program in `family` and the skipped ones. `backend_types`
/// lists the `BackendType` values accepted (the udp backend publishes none, so it accepts
/// `""`). A lease without a subnet of this family is no peer here and not reported (an
/// IPv4-only node in a dual-stack cluster).
pub fn usable_peers_in<'a>(
    family: Family,
    own: IpNet,
    leases: &'a [Lease],
    backend_types: &[&str],
    guard: &RouteGuard,
) -> (Vec<Peer<'a>>, Vec<Skipped>) {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for l in leases {
        let Some(v) = l.view(family) else { continue };
        if v.subnet == own {
            continue;
        }
        let reason = if v.subnet.contains(&own) || own.contains(&v.subnet) {
            Some(format!("overlaps our own subnet {own}"))
        } else if !backend_types.contains(&l.attrs.backend_type.as_str()) {
            Some(format!(
                "backend type {:?} is not {:?}",
                l.attrs.backend_type, backend_types[0]
            ))
        } else {
            match v.public {
                None if family == Family::V4 => Some("PublicIP is 0.0.0.0".into()),
                None => Some("PublicIPv6 is not set".into()),
                Some(ip) => guard.conflict(v.subnet, Some(ip)),
            }
        };
        match (reason, v.public) {
            (None, Some(public)) => ok.push(Peer {
                lease: l,
                subnet: v.subnet,
                public,
                data: v.data,
            }),
            (reason, _) => skipped.push(Skipped {
                key: l.key(),
                reason: reason.unwrap_or_default(),
            }),
        }
    }
    (ok, skipped)
}

/// [`usable_peers_in`] for IPv4, as leases.
pub fn usable_peers<'a>(
    own_subnet: Ipv4Net,
    leases: &'a [Lease],
    backend_types: &[&str],
    guard: &RouteGuard,
) -> (Vec<&'a Lease>, Vec<Skipped>) {
    let (peers, skipped) = usable_peers_in(
        Family::V4,
        IpNet::V4(own_subnet),
        leases,
        backend_types,
        guard,
    );
    (peers.into_iter().map(|p| p.lease).collect(), skipped)
}
