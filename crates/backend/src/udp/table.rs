//! The peer table of the udp backend: remote subnet → the peer's `PublicIP:port`, and the set
//! of peer addresses accepted as senders. Built by the control side, read by workers.

use ipnet::Ipv4Net;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    /// Distinct prefix lengths (normally just SubnetLen), longest first.
    lens: Vec<u8>,
    routes: HashMap<(u32, u8), SocketAddrV4>,
    sources: HashSet<Ipv4Addr>,
}

impl PeerTable {
    pub fn new(peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>, port: u16) -> Self {
        let mut t = Self::default();
        for (net, ip) in peers {
            t.routes.insert(
                (u32::from(net.network()), net.prefix_len()),
                SocketAddrV4::new(ip, port),
            );
            t.sources.insert(ip);
            if !t.lens.contains(&net.prefix_len()) {
                t.lens.push(net.prefix_len());
            }
        }
        t.lens.sort_unstable_by(|a, b| b.cmp(a));
        t
    }

    /// Where to send a packet for `dst`.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let d = u32::from(dst);
        self.lens.iter().find_map(|&l| {
            let mask = if l == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(l))
            };
            self.routes.get(&(d & mask, l)).copied()
        })
    }

    /// Whether datagrams from `src` are accepted (upstream accepts anything; we only take peers).
    pub fn is_peer(&self, src: Ipv4Addr) -> bool {
        self.sources.contains(&src)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_lookup_and_sources() {
        let t = PeerTable::new(
            [
                (
                    "10.244.2.0/24".parse().unwrap(),
                    Ipv4Addr::new(10, 0, 0, 52),
                ),
                (
                    "10.244.3.0/24".parse().unwrap(),
                    Ipv4Addr::new(10, 0, 0, 53),
                ),
            ],
            8285,
        );
        assert_eq!(
            t.lookup(Ipv4Addr::new(10, 244, 2, 9)),
            Some("10.0.0.52:8285".parse().unwrap())
        );
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 4, 9)), None);
        assert!(t.is_peer(Ipv4Addr::new(10, 0, 0, 53)));
        assert!(!t.is_peer(Ipv4Addr::new(10, 0, 0, 99)));
    }
}
