//! Level-triggered reconciliation in one function: what should be, compared with what is, gives
//! the operations that make it so. Every kind of kernel state (routes, neighbours, FDB entries)
//! goes through this, so a missed event or a hand-deleted entry heals on the next pass.

use std::collections::BTreeMap;

/// Operations that turn `actual` into `desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K, V> {
    /// Missing or different entries, to add or replace.
    pub upsert: Vec<(K, V)>,
    /// Entries present but not wanted.
    pub remove: Vec<(K, V)>,
}

impl<K, V> Plan<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> Plan<K, V> {
    let upsert = desired
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = actual
        .iter()
        .filter(|(k, _)| !desired.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Plan { upsert, remove }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_adds_replaces_and_removes() {
        let desired: BTreeMap<u8, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let actual: BTreeMap<u8, &str> = [(2, "b"), (3, "x"), (4, "d")].into();
        let p = diff(&desired, &actual);
        assert_eq!(p.upsert, vec![(1, "a"), (3, "c")]);
        assert_eq!(p.remove, vec![(4, "d")]);
        assert!(diff(&desired, &desired).is_empty());
    }
}
