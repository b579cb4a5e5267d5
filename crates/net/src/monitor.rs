//! Kernel change notifications (`ip monitor`): deletions of links, addresses, routes and
//! neighbours, and link changes, wake the reconciler at once instead of at the next resync.
//! Deletions of routes, neighbours and FDB entries say what went, so the reconciler can tell
//! its own deletions (expected) from drift; the reconciler decides what is ours.

use flannel_core::MacAddr;
use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// A change in the kernel that may concern state we own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A route to this destination was deleted.
    RouteGone(IpNet),
    /// A neighbour entry (ARP) for this address on this link was deleted.
    NeighbourGone(u32, IpAddr),
    /// An FDB entry for this MAC on this link was deleted.
    FdbGone(u32, MacAddr),
    /// Anything else (a link or address change, an IPv6 route, lost notifications).
    Other,
}

/// What a notification means for state we may own, if anything.
pub fn relevant(m: &RouteNetlinkMessage) -> Option<Change> {
    match m {
        RouteNetlinkMessage::DelRoute(r) => Some(match crate::netlink::route_dst(r) {
            Some(d) => Change::RouteGone(d),
            None => Change::Other,
        }),
        RouteNetlinkMessage::DelNeighbour(n) => {
            let idx = n.header.ifindex;
            let change = if n.header.family == AddressFamily::Bridge {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(m) => <[u8; 6]>::try_from(m.as_slice())
                        .ok()
                        .map(|m| Change::FdbGone(idx, MacAddr(m))),
                    _ => None,
                })
            } else {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        Some(Change::NeighbourGone(idx, IpAddr::V4(*ip)))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        Some(Change::NeighbourGone(idx, IpAddr::V6(*ip)))
                    }
                    _ => None,
                })
            };
            Some(change.unwrap_or(Change::Other))
        }
        RouteNetlinkMessage::DelLink(_)
        | RouteNetlinkMessage::NewLink(_)
        | RouteNetlinkMessage::DelAddress(_) => Some(Change::Other),
        _ => None,
    }
}

/// Sends every relevant change on `kick`, for as long as `kick` is open (waiting when the
/// reconciler is behind). If the socket fails (for example ENOBUFS when notifications outrun
/// us) it sends [`Change::Other`] (a full resync covers whatever was missed) and reconnects.
///
/// `families`: whose address and route changes to watch (a node without an IPv6 overlay
/// need not wake for every IPv6 route that goes with a pod's link).
pub async fn watch(kick: mpsc::Sender<Change>, families: Vec<crate::Family>) {
    let mut groups = vec![MulticastGroup::Link, MulticastGroup::Neigh];
    for f in families {
        groups.extend(match f {
            crate::Family::V4 => [MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv4Route],
            crate::Family::V6 => [MulticastGroup::Ipv6Ifaddr, MulticastGroup::Ipv6Route],
        });
    }
    loop {
        match rtnetlink::new_multicast_connection(&groups) {
            Ok((mut conn, _handle, mut messages)) => {
                let _ = conn
                    .socket_mut()
                    .socket_mut()
                    .set_rx_buf_sz(4 * 1024 * 1024);
                let driver = tokio::spawn(conn);
                while let Some((m, _)) = messages.next().await {
                    let change = match &m.payload {
                        NetlinkPayload::InnerMessage(inner) => relevant(inner),
                        // ENOBUFS: notifications were lost; a full resync covers them.
                        NetlinkPayload::Overrun(_) => {
                            warn!("netlink notifications overran the socket buffer; resyncing");
                            Some(Change::Other)
                        }
                        _ => None,
                    };
                    if let Some(c) = change {
                        if kick.send(c).await.is_err() {
                            driver.abort();
                            return;
                        }
                    }
                }
                driver.abort();
                warn!("the netlink notification socket closed; resyncing and reconnecting");
            }
            Err(e) => warn!(error = %e, "cannot open a netlink notification socket; retrying"),
        }
        if kick.send(Change::Other).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::neighbour::NeighbourMessage;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

    fn del_route(dst: RouteAddress, len: u8) -> RouteNetlinkMessage {
        let mut r = RouteMessage::default();
        r.header.destination_prefix_length = len;
        r.attributes.push(RouteAttribute::Destination(dst));
        RouteNetlinkMessage::DelRoute(r)
    }

    #[test]
    fn deletions_say_what_went_in_both_families() {
        let v4 = del_route(RouteAddress::Inet("10.244.3.0".parse().unwrap()), 24);
        assert_eq!(
            relevant(&v4),
            Some(Change::RouteGone("10.244.3.0/24".parse().unwrap()))
        );
        let v6 = del_route(RouteAddress::Inet6("fd00:10:244:3::".parse().unwrap()), 64);
        assert_eq!(
            relevant(&v6),
            Some(Change::RouteGone("fd00:10:244:3::/64".parse().unwrap()))
        );
        let mut n = NeighbourMessage::default();
        n.header.ifindex = 7;
        n.header.family = AddressFamily::Inet6;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                "fd00::1".parse().unwrap(),
            )));
        assert_eq!(
            relevant(&RouteNetlinkMessage::DelNeighbour(n.clone())),
            Some(Change::NeighbourGone(7, "fd00::1".parse().unwrap()))
        );
        n.header.family = AddressFamily::Bridge;
        n.attributes = vec![NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9])];
        assert_eq!(
            relevant(&RouteNetlinkMessage::DelNeighbour(n)),
            Some(Change::FdbGone(7, MacAddr([2, 0, 0, 0, 0, 9])))
        );
        // New routes are our own writes or someone else's: not drift.
        assert_eq!(
            relevant(&RouteNetlinkMessage::NewRoute(RouteMessage::default())),
            None
        );
    }
}
