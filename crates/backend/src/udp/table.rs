//! The peer table of the udp backend: remote subnet → the peer's `PublicIP:port` for sending,
//! and for receiving what each peer may send: its own subnets as sources, ours as destination.
//! Built by the control side, read by workers.

use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    /// Distinct prefix lengths (normally just SubnetLen), longest first.
    lens: Vec<u8>,
    routes: HashMap<(u32, u8), SocketAddrV4>,
    /// Each peer's subnets, by its public IP: the senders accepted, and their sources.
    sources: HashMap<Ipv4Addr, Vec<Ipv4Net>>,
    /// Our own subnet: the only destination a peer may send to.
    own: Ipv4Net,
    /// The cluster network: a source inside it must lie in the sending peer's subnet.
    network: Ipv4Net,
    /// The peers' UDP port.
    port: u16,
}

/// What becomes of an inner packet from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Accept,
    /// Its destination is not in our subnet: written to the TUN it would be forwarded (and
    /// masqueraded) off the network, a relay for whoever can spoof a peer's address.
    NotForUs,
    /// Its source is in the cluster network but not in the sending peer's subnet: it would
    /// impersonate another node's pod. (Sources outside the network are traffic from outside
    /// the cluster, not masqueraded, which vxlan carries too.)
    SpoofedSource,
}

impl PeerTable {
    pub fn new(
        peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
        port: u16,
        own: Ipv4Net,
        network: Ipv4Net,
    ) -> Self {
        let mut t = Self {
            own,
            network,
            port,
            ..Self::default()
        };
        for (net, ip) in peers {
            t.insert(net, ip);
        }
        t.index_lens();
        t
    }

    /// This table with the `touched` subnets' entries replaced by `peers` (each of them one of
    /// the touched): what a few lease events change, without rebuilding from every lease.
    /// Copy-on-write: workers keep reading the old table until they get the new one.
    pub fn updated(
        &self,
        touched: &[Ipv4Net],
        peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
    ) -> Self {
        let mut t = self.clone();
        for s in touched {
            let Some(to) = t.routes.remove(&(u32::from(s.network()), s.prefix_len())) else {
                continue;
            };
            if let Some(v) = t.sources.get_mut(to.ip()) {
                v.retain(|x| x != s);
                if v.is_empty() {
                    t.sources.remove(to.ip());
                }
            }
        }
        for (net, ip) in peers {
            t.insert(net, ip);
        }
        t.index_lens();
        t
    }

    fn insert(&mut self, net: Ipv4Net, ip: Ipv4Addr) {
        let key = (u32::from(net.network()), net.prefix_len());
        if let Some(old) = self.routes.insert(key, SocketAddrV4::new(ip, self.port)) {
            // A subnet moves from one peer to another.
            if let Some(v) = self.sources.get_mut(old.ip()) {
                v.retain(|x| *x != net);
                if v.is_empty() {
                    self.sources.remove(old.ip());
                }
            }
        }
        // Sorted, so that equal peer sets make equal tables however they were built.
        let v = self.sources.entry(ip).or_default();
        if let Err(at) = v.binary_search(&net) {
            v.insert(at, net);
        }
    }

    /// The distinct prefix lengths in use, longest first.
    fn index_lens(&mut self) {
        let mut lens: Vec<u8> = self.routes.keys().map(|(_, l)| *l).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        self.lens = lens;
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

    /// The subnets of the peer at `src`; `None` when it is no peer (upstream accepts anything;
    /// we only take peers).
    pub fn peer_subnets(&self, src: Ipv4Addr) -> Option<&[Ipv4Net]> {
        self.sources.get(&src).map(Vec::as_slice)
    }

    /// The verdict on an inner packet `src → dst` from a peer holding `subnets`.
    pub fn inbound(&self, subnets: &[Ipv4Net], src: Ipv4Addr, dst: Ipv4Addr) -> Inbound {
        if !self.own.contains(&dst) {
            Inbound::NotForUs
        } else if self.network.contains(&src) && !subnets.iter().any(|s| s.contains(&src)) {
            Inbound::SpoofedSource
        } else {
            Inbound::Accept
        }
    }

    /// Our own subnet.
    pub fn own(&self) -> Ipv4Net {
        self.own
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

    fn table() -> PeerTable {
        PeerTable::new(
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
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        )
    }

    #[test]
    fn updating_a_few_subnets_equals_building_from_scratch() {
        let mut x = 0x9e37_79b9_u64;
        let mut rnd = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let own: Ipv4Net = "10.244.0.0/24".parse().unwrap();
        let network: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let mut peers: std::collections::BTreeMap<Ipv4Net, Ipv4Addr> = Default::default();
        let mut t = PeerTable::new([], 8285, own, network);
        for _ in 0..2000 {
            let mut touched = Vec::new();
            let mut added = Vec::new();
            for _ in 0..=rnd(3) {
                let len = [24u8, 25, 26][rnd(3) as usize];
                let s = Ipv4Net::new(Ipv4Addr::new(10, 244, 1 + rnd(20) as u8, 0), len)
                    .unwrap()
                    .trunc();
                touched.retain(|t| *t != s);
                added.retain(|(t, _)| *t != s);
                touched.push(s);
                if rnd(3) == 0 {
                    peers.remove(&s);
                } else {
                    let ip = Ipv4Addr::new(10, 0, 0, rnd(8) as u8);
                    peers.insert(s, ip);
                    added.push((s, ip));
                }
            }
            t = t.updated(&touched, added);
            let fresh = PeerTable::new(peers.iter().map(|(s, i)| (*s, *i)), 8285, own, network);
            assert_eq!(t, fresh);
        }
    }

    #[test]
    fn longest_prefix_lookup_and_sources() {
        let t = table();
        assert_eq!(
            t.lookup(Ipv4Addr::new(10, 244, 2, 9)),
            Some("10.0.0.52:8285".parse().unwrap())
        );
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 4, 9)), None);
        assert!(t.peer_subnets(Ipv4Addr::new(10, 0, 0, 53)).is_some());
        assert!(t.peer_subnets(Ipv4Addr::new(10, 0, 0, 99)).is_none());
    }

    #[test]
    fn inbound_packets_must_be_for_us_and_from_the_sender() {
        let t = table();
        let from52 = t.peer_subnets(Ipv4Addr::new(10, 0, 0, 52)).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            t.inbound(from52, ip("10.244.2.5"), ip("10.244.1.7")),
            Inbound::Accept
        );
        assert_eq!(
            t.inbound(from52, ip("10.244.2.5"), ip("10.0.0.99")),
            Inbound::NotForUs
        );
        assert_eq!(
            t.inbound(from52, ip("10.244.3.5"), ip("10.244.1.7")),
            Inbound::SpoofedSource
        );
        // From outside the cluster: allowed, as vxlan carries it.
        assert_eq!(
            t.inbound(from52, ip("192.168.7.7"), ip("10.244.1.7")),
            Inbound::Accept
        );
    }
}
