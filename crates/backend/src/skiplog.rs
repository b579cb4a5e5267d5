//! Reports skipped leases once per distinct reason, not on every reconcile pass.

use flannel_core::peers::Skipped;
use std::collections::BTreeSet;
use tracing::warn;

#[derive(Debug, Default)]
pub struct SkipLog {
    reported: BTreeSet<String>,
}

impl SkipLog {
    pub fn report(&mut self, skipped: &[Skipped]) {
        let now: BTreeSet<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.subnet, s.reason))
            .collect();
        for s in now.difference(&self.reported) {
            warn!("skipping lease {s}");
        }
        self.reported = now;
    }
}
