//! Lease events and the set of known leases they maintain.

use flannel_core::subnet_key::SubnetKey;
use flannel_core::Lease;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// The complete current set (after connecting, and after a compaction made history unusable).
    Snapshot(Vec<Lease>),
    Added(Lease),
    Removed(SubnetKey),
}

/// Every known lease by key. Events are applied level-style: a snapshot replaces everything, so
/// leases that vanished while a watch was down disappear too. Held as one slice (in no
/// particular order) with an index by key, so a full pass borrows every lease instead of
/// copying thousands of them.
#[derive(Debug, Clone, Default)]
pub struct LeaseSet {
    leases: Vec<Lease>,
    index: HashMap<SubnetKey, usize>,
}

impl PartialEq for LeaseSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.leases.iter().all(|l| other.get(&l.key()) == Some(l))
    }
}

impl LeaseSet {
    pub fn apply(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Snapshot(all) => {
                self.leases.clear();
                self.index.clear();
                for l in all {
                    self.insert(l);
                }
                self.leases.shrink_to_fit();
            }
            LeaseEvent::Added(l) => self.insert(l),
            LeaseEvent::Removed(k) => {
                if let Some(i) = self.index.remove(&k) {
                    self.leases.swap_remove(i);
                    if let Some(moved) = self.leases.get(i) {
                        self.index.insert(moved.key(), i);
                    }
                }
            }
        }
    }

    fn insert(&mut self, l: Lease) {
        match self.index.get(&l.key()) {
            Some(&i) => self.leases[i] = l,
            None => {
                self.index.insert(l.key(), self.leases.len());
                self.leases.push(l);
            }
        }
    }

    /// Every lease, borrowed.
    pub fn as_slice(&self) -> &[Lease] {
        &self.leases
    }

    /// Every lease, copied, in key order.
    pub fn leases(&self) -> Vec<Lease> {
        let mut v = self.leases.clone();
        v.sort_by_key(|l| l.key());
        v
    }

    /// The lease under `key`, if known.
    pub fn get(&self, key: &SubnetKey) -> Option<&Lease> {
        self.index.get(key).map(|&i| &self.leases[i])
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::LeaseAttrs;

    fn lease(s: &str) -> Lease {
        Lease::v4(
            s.parse().unwrap(),
            LeaseAttrs::v4("10.0.0.1".parse().unwrap(), "vxlan", None),
        )
    }

    #[test]
    fn snapshot_replaces_and_events_update() {
        let mut s = LeaseSet::default();
        s.apply(LeaseEvent::Added(lease("10.1.1.0/24")));
        s.apply(LeaseEvent::Added(lease("10.1.2.0/24")));
        s.apply(LeaseEvent::Removed(lease("10.1.1.0/24").key()));
        assert_eq!(s.leases(), vec![lease("10.1.2.0/24")]);
        s.apply(LeaseEvent::Snapshot(vec![lease("10.1.3.0/24")]));
        assert_eq!(s.leases(), vec![lease("10.1.3.0/24")]);
    }

    #[test]
    fn removals_keep_the_index_right() {
        let mut s = LeaseSet::default();
        for i in 0..50 {
            s.apply(LeaseEvent::Added(lease(&format!("10.1.{i}.0/24"))));
        }
        for i in (0..50).step_by(3) {
            s.apply(LeaseEvent::Removed(lease(&format!("10.1.{i}.0/24")).key()));
        }
        // Changed in place, not duplicated.
        s.apply(LeaseEvent::Added(lease("10.1.1.0/24")));
        for i in 0..50 {
            let k = lease(&format!("10.1.{i}.0/24")).key();
            assert_eq!(s.get(&k).is_some(), i % 3 != 0, "{i}");
            if let Some(l) = s.get(&k) {
                assert_eq!(l.key(), k);
            }
        }
        assert_eq!(s.len(), 33);
        assert_eq!(s.as_slice().len(), 33);
    }
}
