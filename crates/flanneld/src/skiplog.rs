//! Reports leases a backend left out: one line per lease and reason, naming the lease by its
//! datastore key, said again only when the reason changes (not on every reconcile pass).

use flannel_core::peers::Skipped;
use flannel_core::subnet_key::SubnetKey;
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
