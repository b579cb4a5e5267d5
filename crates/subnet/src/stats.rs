//! Counters of the datastore side (a handle each subnet manager owns), read by flanneld's metrics: how often the
//! lease watch was started and the leases listed (the first of each is the start; the rest
//! are restarts and re-lists), and how many datastore requests failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct DatastoreStats {
    watch_starts: AtomicU64,
    lists: AtomicU64,
    errors: AtomicU64,
    /// The problem the watch has now (cleared when it works again).
    problem: Mutex<Option<String>>,
    /// When the watch last moved: a listing, an event, a bookmark or progress notification.
    progress: Mutex<Option<Instant>>,
}

impl DatastoreStats {
    pub(crate) fn watch_started(&self) {
        self.watch_starts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn listed(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, problem: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    pub(crate) fn works(&self) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(crate) fn progressed(&self) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// What keeps the lease watch from working now, if anything, with how long it has not
    /// moved.
    pub fn problem(&self) -> Option<String> {
        let p = self
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(match self.since_progress() {
            Some(d) => format!("{p} (the watch has not moved for {} s)", d.as_secs()),
            None => p,
        })
    }

    fn since_progress(&self) -> Option<Duration> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// The problem, when the watch has failed and not moved for `limit` or longer: the
    /// leases flanneld holds may be stale (`/readyz` says so).
    pub fn stalled(&self, limit: Duration) -> Option<String> {
        let p = self.problem()?;
        self.since_progress()
            .is_none_or(|d| d >= limit)
            .then_some(p)
    }

    /// Watches started again after the first (a dropped stream, etcd restarted, a timeout).
    pub fn watch_restarts(&self) -> u64 {
        self.watch_starts.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Full listings after the first (history compacted or gone, a watch fallen behind).
    pub fn relists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Failed datastore requests of the watch (each retry counts).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
