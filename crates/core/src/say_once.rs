//! Whether to say a problem now: the one rule of every "said once" log of the workspace (a
//! datastore that stays down, a wait that goes on). A problem is said when it is new or
//! differs from the last one, and again after `remind` when one is set; its end is said once.
//! Pure: the caller logs at the level it wants.

use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct SayOnce {
    last: Option<String>,
    said_at: Option<Instant>,
    remind: Option<Duration>,
}

impl SayOnce {
    /// Says an unchanged problem again every `every`.
    pub fn reminding(every: Duration) -> Self {
        Self {
            remind: Some(every),
            ..Self::default()
        }
    }

    /// True when `problem` is to be said now (new, changed, or due for a reminder).
    pub fn problem(&mut self, problem: &str, now: Instant) -> bool {
        let changed = self.last.as_deref() != Some(problem);
        let due = match (self.remind, self.said_at) {
            (Some(every), Some(at)) => now.saturating_duration_since(at) >= every,
            _ => false,
        };
        if changed || due {
            self.last = Some(problem.to_string());
            self.said_at = Some(now);
        }
        changed || due
    }

    /// True when this ends a run of problems (to be said once).
    pub fn cleared(&mut self) -> bool {
        self.said_at = None;
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_changed_problems_are_said_repeats_only_when_a_reminder_is_due() {
        let t0 = Instant::now();
        let mut s = SayOnce::default();
        assert!(s.problem("etcd down", t0));
        assert!(!s.problem("etcd down", t0 + Duration::from_secs(3600)));
        assert!(s.problem("auth refused", t0));
        assert!(s.cleared());
        assert!(!s.cleared(), "the end is said once");
        assert!(
            s.problem("auth refused", t0),
            "after the end, it is new again"
        );

        let mut r = SayOnce::reminding(Duration::from_secs(60));
        assert!(r.problem("waiting", t0));
        assert!(!r.problem("waiting", t0 + Duration::from_secs(59)));
        assert!(r.problem("waiting", t0 + Duration::from_secs(60)));
        assert!(!r.problem("waiting", t0 + Duration::from_secs(61)));
    }
}
