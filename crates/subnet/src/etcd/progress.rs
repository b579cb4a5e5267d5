//! Whether the lease watch keeps up with etcd.
//!
//! A watcher that cannot take events as fast as they come is moved by etcd to its "unsynced"
//! set and fed from history later; until then its node routes to a cluster that is no more.
//! Nothing on the stream says so. So, on a timer, we note etcd's current revision and ask for
//! a progress notification (etcd answers only once the watch is synced, with the revision it
//! has reached). If by the next tick the watch has not reached the revision noted at the last
//! one, it is behind by more than a period: the caller re-lists, which catches up at once.

/// What the timer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching; ask for progress again.
    KeepUp,
    /// The watch had not reached `wanted` (etcd's revision a period ago); it is at `seen`.
    Behind { seen: i64, wanted: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct ProgressCheck {
    /// The highest revision the watch has shown us (events, progress notifications).
    seen: i64,
    /// etcd's revision when we last asked for progress.
    asked_at: Option<i64>,
}

impl ProgressCheck {
    /// A check for a watch that starts at revision `start` (it has seen everything before).
    pub fn new(start: i64) -> Self {
        Self {
            seen: start - 1,
            asked_at: None,
        }
    }

    /// The watch showed revision `rev` (an event's, or a progress notification's header).
    pub fn saw(&mut self, rev: i64) {
        self.seen = self.seen.max(rev);
    }

    /// The timer: `store` is etcd's revision now. After `KeepUp`, the caller asks for progress.
    pub fn tick(&mut self, store: i64) -> Verdict {
        if let Some(wanted) = self.asked_at {
            if self.seen < wanted {
                return Verdict::Behind {
                    seen: self.seen,
                    wanted,
                };
            }
        }
        self.asked_at = Some(store);
        Verdict::KeepUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_that_keeps_up_is_never_behind() {
        let mut c = ProgressCheck::new(101);
        assert_eq!(c.tick(100), Verdict::KeepUp);
        // No writes: the progress notification says 100.
        c.saw(100);
        assert_eq!(c.tick(100), Verdict::KeepUp);
        // Writes up to 150 meanwhile, and their events came.
        c.saw(150);
        assert_eq!(c.tick(150), Verdict::KeepUp);
        c.saw(150);
        assert_eq!(c.tick(180), Verdict::KeepUp);
    }

    #[test]
    fn a_watch_that_has_not_reached_last_periods_revision_is_behind() {
        let mut c = ProgressCheck::new(11);
        assert_eq!(c.tick(500), Verdict::KeepUp);
        // Events trickle in, but the watch is still before 500 a period later.
        c.saw(320);
        assert_eq!(
            c.tick(900),
            Verdict::Behind {
                seen: 320,
                wanted: 500
            }
        );
    }

    #[test]
    fn the_first_tick_only_asks() {
        // Started at a revision far behind etcd's (a resume): no verdict before one period.
        let mut c = ProgressCheck::new(2);
        assert_eq!(c.tick(10_000), Verdict::KeepUp);
    }
}
