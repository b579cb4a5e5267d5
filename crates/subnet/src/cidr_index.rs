//! Which held subnet overlaps a given one, for thousands of subnets: CIDR blocks overlap only
//! when one contains the other, so a lookup is one range scan (blocks inside the asked one)
//! and at most one probe per shorter prefix length (blocks containing it).

use ipnet::IpNet;
use std::collections::BTreeMap;

/// A block as an ordered key: family, network address, prefix length.
type Block = (bool, u128, u8);

fn block(n: &IpNet) -> Block {
    let n = n.trunc();
    match n {
        IpNet::V4(v) => (false, u32::from(v.network()) as u128, v.prefix_len()),
        IpNet::V6(v) => (true, u128::from(v.network()), v.prefix_len()),
    }
}

/// The last address of a block, in the same numbering as [`block`].
fn last(n: &IpNet) -> u128 {
    match n.trunc() {
        IpNet::V4(v) => u32::from(v.broadcast()) as u128,
        IpNet::V6(v) => u128::from(v.broadcast()),
    }
}

/// Blocks of both families, each with a value (who holds it). A block is held once.
#[derive(Debug, Clone)]
pub struct CidrIndex<V> {
    blocks: BTreeMap<Block, V>,
}

impl<V> Default for CidrIndex<V> {
    fn default() -> Self {
        Self {
            blocks: BTreeMap::new(),
        }
    }
}

impl<V: Clone> CidrIndex<V> {
    pub fn insert(&mut self, n: &IpNet, v: V) {
        self.blocks.insert(block(n), v);
    }

    pub fn remove(&mut self, n: &IpNet) {
        self.blocks.remove(&block(n));
    }

    /// Removes `n` if `v` holds it.
    pub fn remove_held_by(&mut self, n: &IpNet, v: &V)
    where
        V: PartialEq,
    {
        let b = block(n);
        if self.blocks.get(&b) == Some(v) {
            self.blocks.remove(&b);
        }
    }

    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// A held block that overlaps `n` (the same block, one inside it or one containing it),
    /// with its value.
    pub fn overlapping(&self, n: &IpNet) -> Option<(IpNet, &V)> {
        let (fam, start, len) = block(n);
        // Blocks starting inside `n`: the same block and the ones it contains.
        if let Some((k, v)) = self
            .blocks
            .range((fam, start, 0)..=(fam, last(n), u8::MAX))
            .next()
        {
            return Some((net_of(k), v));
        }
        // Blocks starting before `n` that contain it: for each shorter prefix, the one
        // network that would.
        for l in (0..len).rev() {
            let probe = match n {
                IpNet::V4(v) => IpNet::V4(ipnet::Ipv4Net::new(v.network(), l).ok()?.trunc()),
                IpNet::V6(v) => IpNet::V6(ipnet::Ipv6Net::new(v.network(), l).ok()?.trunc()),
            };
            if let Some(v) = self.blocks.get(&block(&probe)) {
                return Some((probe, v));
            }
        }
        None
    }
}

fn net_of(&(v6, addr, len): &Block) -> IpNet {
    if v6 {
        IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), len).unwrap_or_default())
    } else {
        let a = std::net::Ipv4Addr::from(u32::try_from(addr).unwrap_or(0));
        IpNet::V4(ipnet::Ipv4Net::new(a, len).unwrap_or_default())
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
