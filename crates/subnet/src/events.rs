//! Lease events and the set of known leases they maintain.

use flannel_core::subnet_key::SubnetKey;
use flannel_core::Lease;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// The complete current set (after connecting, and after a compaction made history unusable).
    Snapshot(Vec<Lease>),
    Added(Lease),
    Removed(SubnetKey),
}

/// Every known lease by key. Events are applied level-style: a snapshot replaces everything, so
/// leases that vanished while a watch was down disappear too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseSet {
    leases: BTreeMap<SubnetKey, Lease>,
}

impl LeaseSet {
    pub fn apply(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Snapshot(all) => {
                self.leases = all.into_iter().map(|l| (l.key(), l)).collect();
            }
            LeaseEvent::Added(l) => {
                self.leases.insert(l.key(), l);
            }
            LeaseEvent::Removed(k) => {
                self.leases.remove(&k);
            }
        }
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.leases.values().cloned().collect()
    }

    /// The lease under `key`, if known.
    pub fn get(&self, key: &SubnetKey) -> Option<&Lease> {
        self.leases.get(key)
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
}
