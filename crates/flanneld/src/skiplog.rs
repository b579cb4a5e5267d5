//! Reports leases left out: by a backend (one line per lease and reason, naming the lease by
//! its datastore key, said again only when the reason changes, not on every reconcile pass),
//! and for claiming a subnet another holder had first.

use flannel_backend::peers::Skipped;
use flannel_core::subnet_key::SubnetKey;
use flannel_subnet::{Conflict, Owner};
use std::collections::BTreeSet;
use tracing::{info, warn};

#[derive(Debug, Default)]
pub struct SkipLog {
    reported: BTreeSet<Skipped>,
}

impl SkipLog {
    /// Like [`SkipLog::report`] for the leases `touched` only (the incremental path): what
    /// is known about the others stays as it was.
    pub fn report_some(
        &mut self,
        touched: &[SubnetKey],
        skipped: &[Skipped],
        name: &dyn Fn(&SubnetKey) -> String,
    ) {
        let mut all: Vec<Skipped> = self
            .reported
            .iter()
            .filter(|s| !touched.contains(&s.key))
            .cloned()
            .collect();
        all.extend(skipped.iter().cloned());
        self.report(&all, name);
    }

    /// `name` turns a lease key into what the operator finds in the datastore.
    pub fn report(&mut self, skipped: &[Skipped], name: &dyn Fn(&SubnetKey) -> String) {
        let now: BTreeSet<Skipped> = skipped.iter().cloned().collect();
        for s in now.difference(&self.reported) {
            warn!("skipping lease {}: {}", name(&s.key), s.reason);
        }
        for s in self.reported.difference(&now) {
            if !now.iter().any(|n| n.key == s.key) {
                info!(
                    "lease {} is no longer skipped (gone or fixed)",
                    name(&s.key)
                );
            }
        }
        self.reported = now;
    }
}

/// Reports claims left out because they overlap an earlier holder's subnet: one warning
/// naming both when a conflict appears, one line when it ends; counted in the metrics.
#[derive(Debug, Default)]
pub struct ConflictLog {
    reported: BTreeSet<Conflict>,
}

impl ConflictLog {
    /// Reports the difference to the last call; returns how many conflicts are new.
    pub fn report(&mut self, now: Vec<Conflict>, name: &dyn Fn(&Owner) -> String) -> usize {
        let now: BTreeSet<Conflict> = now.into_iter().collect();
        let mut new = 0;
        for c in now.difference(&self.reported) {
            // The same newcomer now waiting behind another holder is no new conflict.
            if self
                .reported
                .iter()
                .any(|r| r.owner == c.owner && r.subnet == c.subnet)
            {
                continue;
            }
            new += 1;
            warn!(
                "skipping lease {} ({}): it overlaps {} of lease {}, which was there first (left out until one of the two is removed or moved)",
                name(&c.owner),
                c.subnet,
                c.holder_subnet,
                name(&c.holder),
            );
        }
        for c in self.reported.difference(&now) {
            if !now.iter().any(|n| n.owner == c.owner) {
                info!(
                    "lease {} no longer conflicts with {} (one of them is gone or moved)",
                    name(&c.owner),
                    name(&c.holder)
                );
            }
        }
        self.reported = now;
        new
    }
}
