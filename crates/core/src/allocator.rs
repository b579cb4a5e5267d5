//! Choosing a free subnet: upstream walks candidates from SubnetMin in steps of the subnet size,
//! skips any that overlap an existing lease, keeps at most 100, and picks one at random.

use crate::subnet::{overlaps, SubnetRange};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Upstream collects at most this many free candidates before picking one.
pub const MAX_CANDIDATES: usize = 100;

/// A random number from the standard library's randomly keyed SipHash; good enough to spread
/// subnet picks and MAC addresses, and it needs no extra dependency.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// Free subnet bases in `range`, in address order, at most `limit` of them.
/// `taken` holds `(base, prefix_len)` of every existing lease of this family.
pub fn free_candidates(range: &SubnetRange, taken: &[(u128, u8)], limit: usize) -> Vec<u128> {
    let mut out = Vec::new();
    let step = range.step();
    let mut cur = range.min;
    while cur <= range.max && out.len() < limit {
        if !taken
            .iter()
            .any(|&(b, l)| overlaps(range.bits, cur, range.subnet_len, b, l))
        {
            out.push(cur);
        }
        match cur.checked_add(step) {
            Some(n) => cur = n,
            None => break,
        }
    }
    out
}

/// One free subnet chosen uniformly among the first [`MAX_CANDIDATES`] free ones.
pub fn pick_free(range: &SubnetRange, taken: &[(u128, u8)]) -> Option<u128> {
    let c = free_candidates(range, taken, MAX_CANDIDATES);
    if c.is_empty() {
        return None;
    }
    Some(c[(random_u64() % c.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;
    use crate::subnet::u128_to_v4;

    fn range(net: &str) -> SubnetRange {
        NetworkConfig::parse_and_check(net)
            .unwrap()
            .v4_range()
            .unwrap()
    }

    #[test]
    fn candidates_skip_taken_and_stop_at_limit() {
        let r = range(r#"{"Network":"10.244.0.0/16"}"#);
        let taken = [(0x0af4_0100u128, 24), (0x0af4_0300u128, 24)];
        let c = free_candidates(&r, &taken, 3);
        let ips: Vec<String> = c.iter().map(|a| u128_to_v4(*a).to_string()).collect();
        assert_eq!(ips, ["10.244.2.0", "10.244.4.0", "10.244.5.0"]);
        assert_eq!(free_candidates(&r, &[], 1000).len(), 255);
    }

    #[test]
    fn larger_overlapping_lease_blocks_its_range() {
        let r = range(r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.0"}"#);
        // A stray /23 lease at 10.0.2.0 covers 10.0.2.0/24 and 10.0.3.0/24.
        let c = free_candidates(&r, &[(0x0a00_0200, 23)], 100);
        assert_eq!(c, vec![0x0a00_0100]);
    }

    #[test]
    fn exhausted_range_gives_none_and_pick_stays_in_range() {
        let r = range(r#"{"Network":"10.0.0.0/28"}"#);
        // /28 network → /30 subnets from .4 to .12: three candidates.
        let all: Vec<(u128, u8)> = free_candidates(&r, &[], 100)
            .into_iter()
            .map(|b| (b, 30))
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(pick_free(&r, &all), None);
        for _ in 0..20 {
            let p = pick_free(&r, &all[..2]).unwrap();
            assert_eq!(p, all[2].0);
        }
    }
}
