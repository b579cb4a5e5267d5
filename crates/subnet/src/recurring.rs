//! A problem that comes back on every retry (etcd down, credentials refused) is logged once as
//! a warning, its repeats only at debug level, and its end once: the log says what changed.

use std::fmt::Display;
use tracing::{debug, info, warn};

#[derive(Debug, Default)]
pub(crate) struct Recurring {
    last: Option<String>,
}

impl Recurring {
    /// Reports a failure of `what`; said at warn level only when it differs from the last one.
    pub fn failed(&mut self, what: &str, err: &dyn Display) {
        let text = format!("{what}: {err}");
        crate::stats::STATS.failed(text.clone());
        if self.last.as_deref() == Some(text.as_str()) {
            debug!("{text} (again)");
        } else {
            warn!("{text}; retrying with backoff");
            self.last = Some(text);
        }
    }

    /// Reports success: one line when it ends a run of failures, nothing otherwise.
    pub fn ok(&mut self, what: &str) {
        crate::stats::STATS.works();
        if self.last.take().is_some() {
            info!("{what}");
        }
    }
}
