//! The peer table of one WireGuard device, read by its workers: each peer's Noise state (a
//! `boringtun` tunnel behind a mutex, shared by every worker), endpoint and allowed IPs, found
//! by destination address (sending), by our session index (data and responses) or by public
//! key (handshake initiations). Built by the control side, handed over whole (copy on write).

use super::worker::Identity;
use crate::wg::config::{Key, WgPeer};
use boringtun::noise::Tunn;
use boringtun::x25519::PublicKey;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub struct PeerState {
    pub key: Key,
    pub endpoint: SocketAddr,
    pub allowed: Vec<IpNet>,
    /// Our side's index (upper 24 bits of every session index we hand out to this peer).
    pub index: u32,
    pub tunn: Mutex<Tunn>,
    /// Whether the first handshake was sent (at start, not on the first packet: a restarted
    /// node must not wait for traffic to rebuild its sessions).
    pub greeted: AtomicBool,
}

impl PeerState {
    /// A peer with a fresh Noise state, our side's session indexes under `index`.
    pub fn new(id: &Identity, peer: &WgPeer, index: u32, psk: Option<Key>, keepalive: u16) -> Self {
        let tunn = Tunn::new(
            id.private.clone(),
            PublicKey::from(peer.public_key),
            psk,
            Some(keepalive).filter(|k| *k > 0),
            index,
            Some(id.limiter.clone()),
        );
        Self {
            key: peer.public_key,
            endpoint: peer.endpoint,
            allowed: peer.allowed.clone(),
            index,
            tunn: Mutex::new(tunn),
            greeted: AtomicBool::new(false),
        }
    }

    /// Whether `src` (a decrypted packet's source) lies in this peer's allowed IPs.
    pub fn allows(&self, src: IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(&src))
    }
}

#[derive(Default)]
pub struct WgTable {
    peers: Vec<Arc<PeerState>>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<Key, usize>,
    /// Distinct prefix lengths per family, longest first, and prefix → peer.
    lens4: Vec<u8>,
    routes4: HashMap<(u32, u8), usize>,
    lens6: Vec<u8>,
    routes6: HashMap<(u128, u8), usize>,
}

fn mask4(l: u8) -> u32 {
    if l == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(l))
    }
}

fn mask6(l: u8) -> u128 {
    if l == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(l))
    }
}

impl WgTable {
    pub fn new(peers: Vec<Arc<PeerState>>) -> Self {
        let mut t = Self::default();
        for (i, p) in peers.iter().enumerate() {
            t.by_index.insert(p.index, i);
            t.by_key.insert(p.key, i);
            for n in &p.allowed {
                match n {
                    IpNet::V4(n) => {
                        t.routes4
                            .insert((u32::from(n.network()), n.prefix_len()), i);
                    }
                    IpNet::V6(n) => {
                        t.routes6
                            .insert((u128::from(n.network()), n.prefix_len()), i);
                    }
                }
            }
        }
        t.lens4 = sorted_lens(t.routes4.keys().map(|k| k.1));
        t.lens6 = sorted_lens(t.routes6.keys().map(|k| k.1));
        t.peers = peers;
        t
    }

    pub fn peers(&self) -> &[Arc<PeerState>] {
        &self.peers
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peer whose allowed IPs hold `dst` (longest prefix).
    pub fn lookup(&self, dst: IpAddr) -> Option<&Arc<PeerState>> {
        let i = match dst {
            IpAddr::V4(a) => {
                let d = u32::from(a);
                self.lens4
                    .iter()
                    .find_map(|&l| self.routes4.get(&(d & mask4(l), l)))
            }
            IpAddr::V6(a) => {
                let d = u128::from(a);
                self.lens6
                    .iter()
                    .find_map(|&l| self.routes6.get(&(d & mask6(l), l)))
            }
        }?;
        self.peers.get(*i)
    }

    /// The peer a session index of ours belongs to (the index's upper 24 bits).
    pub fn by_index(&self, receiver_index: u32) -> Option<&Arc<PeerState>> {
        self.by_index
            .get(&(receiver_index >> 8))
            .and_then(|i| self.peers.get(*i))
    }

    pub fn by_key(&self, key: &Key) -> Option<&Arc<PeerState>> {
        self.by_key.get(key).and_then(|i| self.peers.get(*i))
    }
}

fn sorted_lens(it: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut v: Vec<u8> = it.collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::x25519::{PublicKey, StaticSecret};

    fn peer(n: u8, allowed: &[&str]) -> Arc<PeerState> {
        let ours = StaticSecret::from([1u8; 32]);
        let theirs = PublicKey::from(&StaticSecret::from([n; 32]));
        Arc::new(PeerState {
            key: theirs.to_bytes(),
            endpoint: SocketAddr::from(([10, 0, 0, n], 51820)),
            allowed: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            index: u32::from(n),
            tunn: Mutex::new(Tunn::new(ours, theirs, None, None, u32::from(n), None)),
            greeted: AtomicBool::new(false),
        })
    }

    #[test]
    fn finds_peers_by_destination_index_and_key() {
        let a = peer(2, &["10.244.2.0/24", "fd10:2::/64"]);
        let b = peer(3, &["10.244.3.0/24"]);
        let t = WgTable::new(vec![a.clone(), b.clone()]);
        let dst = |s: &str| t.lookup(s.parse().unwrap()).map(|p| p.index);
        assert_eq!(dst("10.244.2.9"), Some(2));
        assert_eq!(dst("10.244.3.1"), Some(3));
        assert_eq!(dst("fd10:2::5"), Some(2));
        assert_eq!(dst("10.244.4.1"), None);
        assert_eq!(dst("fd10:3::1"), None);
        assert_eq!(t.by_index((3 << 8) | 5).map(|p| p.index), Some(3));
        assert!(t.by_index(9 << 8).is_none());
        assert_eq!(t.by_key(&a.key).map(|p| p.index), Some(2));
        assert!(b.allows("10.244.3.7".parse().unwrap()));
        assert!(!b.allows("10.244.2.7".parse().unwrap()));
    }
}
