//! Which held subnet overlaps a given one, for thousands of subnets: CIDR blocks overlap only
//! when one contains the other, so a lookup is one range scan (blocks inside the asked one)
//! and at most one probe per shorter prefix length (blocks containing it).

use ipnet::IpNet;
use std::collections::BTreeMap;

/// Blocks of both families, each with a value (who holds it). A block is held once. Kept
/// as (network address, prefix length) per family: an IPv4 key is 8 bytes, not 32 (the
/// index has an entry per lease, 20000 and more).
#[derive(Debug, Clone)]
pub struct CidrIndex<V> {
    v4: BTreeMap<(u32, u8), V>,
    v6: BTreeMap<(u128, u8), V>,
}

impl<V> Default for CidrIndex<V> {
    fn default() -> Self {
        Self {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }
}

/// An address family's blocks: the same lookups over `u32` or `u128` addresses.
trait Family: Copy + Ord {
    const BITS: u8;
    fn mask(self, len: u8) -> Self;
    fn last(self, len: u8) -> Self;
}

impl Family for u32 {
    const BITS: u8 = 32;
    fn mask(self, len: u8) -> Self {
        self & u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0)
    }
    fn last(self, len: u8) -> Self {
        self | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
    }
}

impl Family for u128 {
    const BITS: u8 = 128;
    fn mask(self, len: u8) -> Self {
        self & u128::MAX.checked_shl(u32::from(128 - len)).unwrap_or(0)
    }
    fn last(self, len: u8) -> Self {
        self | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
    }
}

/// A held block of `map` that overlaps (`addr`, `len`): the same block, one inside it (a range
/// scan), or one containing it (a probe per shorter prefix).
fn overlapping_in<A: Family, V>(
    map: &BTreeMap<(A, u8), V>,
    addr: A,
    len: u8,
) -> Option<(A, u8, &V)> {
    let start = addr.mask(len);
    if let Some((&(a, l), v)) = map.range((start, 0)..=(start.last(len), u8::MAX)).next() {
        return Some((a, l, v));
    }
    (0..len.min(A::BITS)).rev().find_map(|l| {
        let a = addr.mask(l);
        map.get(&(a, l)).map(|v| (a, l, v))
    })
}

impl<V: Clone> CidrIndex<V> {
    pub fn insert(&mut self, n: &IpNet, v: V) {
        match n.trunc() {
            IpNet::V4(n) => self.v4.insert((n.network().into(), n.prefix_len()), v),
            IpNet::V6(n) => self.v6.insert((n.network().into(), n.prefix_len()), v),
        };
    }

    pub fn remove(&mut self, n: &IpNet) {
        match n.trunc() {
            IpNet::V4(n) => self.v4.remove(&(n.network().into(), n.prefix_len())),
            IpNet::V6(n) => self.v6.remove(&(n.network().into(), n.prefix_len())),
        };
    }

    /// Removes `n` if `v` holds it.
    pub fn remove_held_by(&mut self, n: &IpNet, v: &V)
    where
        V: PartialEq,
    {
        match n.trunc() {
            IpNet::V4(n) => {
                let k = (u32::from(n.network()), n.prefix_len());
                if self.v4.get(&k) == Some(v) {
                    self.v4.remove(&k);
                }
            }
            IpNet::V6(n) => {
                let k = (u128::from(n.network()), n.prefix_len());
                if self.v6.get(&k) == Some(v) {
                    self.v6.remove(&k);
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }

    /// A held block that overlaps `n` (the same block, one inside it or one containing it),
    /// with its value.
    pub fn overlapping(&self, n: &IpNet) -> Option<(IpNet, &V)> {
        match n {
            IpNet::V4(n) => {
                overlapping_in(&self.v4, u32::from(n.network()), n.prefix_len()).map(|(a, l, v)| {
                    let net = ipnet::Ipv4Net::new(a.into(), l).unwrap_or_default();
                    (IpNet::V4(net), v)
                })
            }
            IpNet::V6(n) => overlapping_in(&self.v6, u128::from(n.network()), n.prefix_len()).map(
                |(a, l, v)| {
                    let net = ipnet::Ipv6Net::new(a.into(), l).unwrap_or_default();
                    (IpNet::V6(net), v)
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_same_block_one_inside_and_one_containing() {
        let mut i = CidrIndex::default();
        i.insert(&n("10.244.1.0/24"), "a");
        i.insert(&n("10.244.2.0/24"), "b");
        i.insert(&n("fd00:10:244:100::/64"), "c");
        assert_eq!(i.overlapping(&n("10.244.1.0/24")).map(|x| *x.1), Some("a"));
        assert_eq!(
            i.overlapping(&n("10.244.1.128/25")).map(|x| *x.1),
            Some("a")
        );
        assert_eq!(
            i.overlapping(&n("10.244.0.0/16")).map(|x| x.0),
            Some(n("10.244.1.0/24"))
        );
        assert_eq!(i.overlapping(&n("10.244.3.0/24")), None);
        assert_eq!(i.overlapping(&n("10.245.0.0/16")), None);
        // Families never mix, even where the numbers would.
        assert_eq!(i.overlapping(&n("::/0")).map(|x| *x.1), Some("c"));
        assert_eq!(i.overlapping(&n("fd00:10:244:101::/64")), None);
        i.remove(&n("10.244.1.0/24"));
        assert_eq!(i.overlapping(&n("10.244.1.128/25")), None);
    }

    /// Against the obvious quadratic check, on random blocks.
    #[test]
    fn agrees_with_pairwise_containment() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            let mut i = CidrIndex::default();
            let mut held: Vec<IpNet> = Vec::new();
            for _ in 0..40 {
                let len = 20 + (rnd() % 9) as u8;
                let addr = std::net::Ipv4Addr::from(0x0af4_0000 | (rnd() as u32 & 0x0fff));
                let net = IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc());
                let expect = held.iter().any(|h| h.contains(&net) || net.contains(h));
                assert_eq!(i.overlapping(&net).is_some(), expect, "{net} in {held:?}");
                if !expect {
                    i.insert(&net, ());
                    held.push(net);
                }
            }
        }
    }
}
