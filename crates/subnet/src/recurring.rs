//! A problem that comes back on every retry (etcd down, credentials refused) is logged once as
//! a warning, its repeats only at debug level, and its end once: the log says what changed.
//! The datastore's counters learn of each failure and of the end.

use crate::stats::DatastoreStats;
use flannel_core::say_once::SayOnce;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

#[derive(Debug)]
pub(crate) struct Recurring {
    said: SayOnce,
    stats: Arc<DatastoreStats>,
}

impl Recurring {
    pub fn new(stats: Arc<DatastoreStats>) -> Self {
        Self {
            said: SayOnce::default(),
            stats,
        }
    }

    /// Reports a failure of `what`; said at warn level only when it differs from the last one.
    pub fn failed(&mut self, what: &str, err: &dyn Display) {
        let text = format!("{what}: {err}");
        self.stats.failed(text.clone());
        if self.said.problem(&text, Instant::now()) {
            warn!("{text}; retrying with backoff");
        } else {
            debug!("{text} (again)");
        }
    }

    /// Reports success: one line when it ends a run of failures, nothing otherwise.
    pub fn ok(&mut self, what: &str) {
        self.stats.works();
        if self.said.cleared() {
            info!("{what}");
        }
    }
}
