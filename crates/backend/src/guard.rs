//! Reads what the node routes by itself into a [`RouteGuard`]: the addresses of interfaces
//! flannel did not create and the main-table routes flannel does not own. Every backend checks
//! its leases against it before programming them.

use crate::route_guard::{LocalAddr, LocalRoute, LocalState, RouteGuard};
use flannel_net::{Family, NetError, NetOps, RouteEntry};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// How `ip route` names the common protocols.
fn proto_name(p: u8) -> String {
    match p {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        16 => "dhcp".into(),
        other => other.to_string(),
    }
}

/// The guard for leases inside `network` (one family), given that family's main-table
/// `routes` already read for this pass. `own_links` are the devices flannel created (their addresses and routes are ours);
/// `claimed` the destinations the backend routed on its previous pass.
pub async fn read(
    nl: &impl NetOps,
    routes: &[RouteEntry],
    network: IpNet,
    own_links: &[u32],
    ext_index: u32,
    claimed: &BTreeSet<IpNet>,
) -> Result<RouteGuard, NetError> {
    let names: BTreeMap<u32, String> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
    let addrs = nl
        .addrs(None, Family::of_net(&network))
        .await?
        .into_iter()
        .filter(|(i, _)| !own_links.contains(i))
        .map(|(i, a)| LocalAddr {
            addr: a,
            iface: name(i),
        })
        .collect();
    let routes = routes
        .iter()
        .filter(|r| !r.ours() && !r.oif.is_some_and(|i| own_links.contains(&i)))
        .map(|r| {
            let mut shown = r.dst.to_string();
            if let Some(g) = r.gw {
                shown.push_str(&format!(" via {g}"));
            }
            if let Some(i) = r.oif {
                shown.push_str(&format!(" dev {}", name(i)));
            }
            shown.push_str(&format!(" proto {}", proto_name(r.protocol)));
            LocalRoute {
                dst: r.dst,
                gateway: r.gw,
                oif: r.oif,
                connected: r.unicast && r.gw.is_none(),
                shown,
            }
        })
        .collect();
    Ok(RouteGuard {
        networks: vec![network],
        local: LocalState { addrs, routes },
        ext_index: Some(ext_index),
        claimed: claimed.clone(),
    })
}

/// Foreign routes (not ours, not on `own_links`) whose destination is desired: the guard let
/// their leases through, so each is upstream's identical route or drift on a destination we
/// claimed. Both are overwritten in place.
pub fn adoptable(
    routes: &[RouteEntry],
    own_links: &[u32],
    desired: &BTreeMap<IpNet, IpAddr>,
) -> BTreeSet<IpNet> {
    routes
        .iter()
        .filter(|r| !r.ours() && !r.oif.is_some_and(|i| own_links.contains(&i)))
        .filter(|r| desired.contains_key(&r.dst))
        .map(|r| r.dst)
        .collect()
}
