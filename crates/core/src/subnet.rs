//! Subnet arithmetic shared by IPv4 and IPv6.
//!
//! Addresses are handled as `u128` plus a bit width (32 or 128), so the allocation and
//! validation rules of upstream's `CheckNetworkConfig` are written once for both families.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The range a node's subnet is allocated from: every `subnet_len` block whose base lies in
/// `[min, max]` inside `network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetRange {
    pub bits: u8,
    pub network: u128,
    pub network_len: u8,
    pub subnet_len: u8,
    pub min: u128,
    pub max: u128,
}

/// Number of addresses in a block of prefix `len` in a `bits`-wide family, as u128.
/// A /0 in IPv6 does not fit; callers never ask for it (prefix limits are checked first).
pub fn block_size(bits: u8, len: u8) -> u128 {
    let host_bits = u32::from(bits - len);
    if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    }
}

pub fn mask(bits: u8, len: u8) -> u128 {
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    all & !(block_size(bits, len).wrapping_sub(1))
}

impl SubnetRange {
    pub fn contains(&self, addr: u128) -> bool {
        addr & mask(self.bits, self.network_len) == self.network
    }

    /// Whether `base/len` is a subnet this range could hand out.
    pub fn accepts(&self, base: u128, len: u8) -> bool {
        len == self.subnet_len && base >= self.min && base <= self.max
    }

    pub fn step(&self) -> u128 {
        block_size(self.bits, self.subnet_len)
    }
}

pub fn v4_to_u128(a: Ipv4Addr) -> u128 {
    u128::from(u32::from(a))
}

pub fn u128_to_v4(a: u128) -> Ipv4Addr {
    Ipv4Addr::from(a as u32)
}

pub fn v6_to_u128(a: Ipv6Addr) -> u128 {
    u128::from(a)
}

pub fn u128_to_v6(a: u128) -> Ipv6Addr {
    Ipv6Addr::from(a)
}

/// `base/len` as an IPv4 network; `len` is at most 32 by construction of every caller.
pub fn v4_net(base: u128, len: u8) -> Ipv4Net {
    Ipv4Net::new(u128_to_v4(base), len.min(32)).unwrap_or_default()
}

pub fn v6_net(base: u128, len: u8) -> Ipv6Net {
    Ipv6Net::new(u128_to_v6(base), len.min(128)).unwrap_or_default()
}

/// Whether two blocks overlap (one contains the other's base).
pub fn overlaps(bits: u8, a: u128, a_len: u8, b: u128, b_len: u8) -> bool {
    let len = a_len.min(b_len);
    a & mask(bits, len) == b & mask(bits, len)
}

/// The first host address of a subnet: what `FLANNEL_SUBNET` and the `cni0` gateway use.
pub fn first_host_v4(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

pub fn first_host_v6(net: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_blocks() {
        assert_eq!(block_size(32, 24), 256);
        assert_eq!(mask(32, 16), 0xffff_0000);
        assert_eq!(mask(128, 64), u128::MAX << 64);
        assert!(overlaps(32, 0x0a00_0000, 8, 0x0a01_0000, 24));
        assert!(!overlaps(32, 0x0a00_0000, 24, 0x0a00_0100, 24));
    }

    #[test]
    fn first_hosts() {
        assert_eq!(
            first_host_v4("10.244.1.0/24".parse().unwrap()),
            Ipv4Addr::new(10, 244, 1, 1)
        );
        assert_eq!(
            first_host_v6("fd00:1::/64".parse().unwrap()),
            "fd00:1::1".parse::<Ipv6Addr>().unwrap()
        );
    }
}
