//! One list-watch driver for every watched kind (etcd leases, Kubernetes Nodes, and whatever
//! comes next): list, watch from the listing's version, watch again from the last version
//! seen when a watch ends, list again when the datastore has no history from there (etcd
//! compaction, HTTP 410), back off on failures, and say a recurring problem once.
//!
//! A [`Source`] knows one kind in one datastore: how to list it, open a watch, and read the
//! next thing the watch says; it hands what it learns to its own consumer. The driver knows
//! nothing of either datastore. Several sources may feed one consumer, each on its own driver;
//! [`AllListed`] tells the consumer when every one of them has listed once.

use crate::recurring::Recurring;
use crate::stats::DatastoreStats;
use flannel_core::backoff::Backoff;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::info;

/// Why a list or the opening of a watch did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The datastore has no history from that version: only a new listing catches up.
    HistoryGone(String),
    /// Anything else: `what` failed (for the log), `why`.
    Failed { what: String, why: String },
    /// Nobody reads what the source learns any more: the driver ends.
    ConsumerGone,
}

/// What the watch said next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<V> {
    /// Events (or a bookmark, a progress notification) were handed on; watch on, from `V`
    /// when the watch is opened again.
    Moved(Option<V>),
    /// The server ended the watch (its timeout): open it again at once.
    Closed,
    /// Like `Moved`, then open the watch again at once (to give a large buffer back, say).
    Again(Option<V>),
    /// The watch cannot go on from its version; list again.
    Relist(String),
    /// The watch broke: open it again after a pause.
    Failed { what: String, why: String },
    /// Nobody reads what the source learns any more.
    ConsumerGone,
}

/// One watched kind in one datastore.
pub trait Source: Send {
    /// The datastore's position in its history: an etcd revision, a resourceVersion.
    type Version: Clone + Display + Send + Sync;
    /// An open watch.
    type Stream: Send;

    /// The kind, for logs: "lease", "node".
    fn kind(&self) -> &'static str;

    /// What the datastore calls a version, for logs: "revision", "resourceVersion".
    fn version_word(&self) -> &'static str {
        "version"
    }

    /// Lists everything, hands it to the consumer, and says the version to watch from.
    fn list(&mut self) -> impl Future<Output = Result<Self::Version, Failure>> + Send;

    /// Opens a watch from `from`.
    fn watch(
        &mut self,
        from: &Self::Version,
    ) -> impl Future<Output = Result<Self::Stream, Failure>> + Send;

    /// Waits for what the watch says next and hands any events to the consumer.
    fn next(
        &mut self,
        stream: &mut Self::Stream,
    ) -> impl Future<Output = Next<Self::Version>> + Send;
}

/// The pauses of the driver.
#[derive(Debug, Clone, Copy)]
pub struct Pauses {
    pub min: Duration,
    pub max: Duration,
    /// After a watch the server ended, or a relist: the etcd watch waited its backoff there,
    /// the Node watch did not.
    pub after_close: bool,
}

/// Counts, per kind, how many sources have listed once; wakes whoever waits when all have.
#[derive(Debug)]
pub struct AllListed {
    left: AtomicUsize,
    done: Notify,
}

impl AllListed {
    /// For `sources` sources.
    pub fn new(sources: usize) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(sources),
            done: Notify::new(),
        })
    }

    /// One source has listed for the first time (the driver says it; tests may).
    pub fn listed_once(&self) {
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before == 1 {
            self.done.notify_waiters();
        }
    }

    pub fn all(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }

    /// Returns once every source has listed at least once.
    pub async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.all() {
                return;
            }
            notified.await;
        }
    }
}

/// What a driver reports to: the datastore's counters and, optionally, a shared listed-once
/// signal.
#[derive(Clone)]
pub struct Reporting {
    pub stats: Arc<DatastoreStats>,
    pub listed: Option<Arc<AllListed>>,
}

/// Runs `source` until its consumer is gone (or the task is dropped): from `start` when given
/// (a watch resumed), else from a listing.
pub async fn drive<S: Source>(
    mut source: S,
    start: Option<S::Version>,
    pauses: Pauses,
    report: Reporting,
) {
    let (kind, word) = (source.kind(), source.version_word());
    // Said when a run of failures ends; made once, not on every event.
    let works_again = format!("the {kind} watch works again");
    let mut backoff = Backoff::new(pauses.min, pauses.max);
    let mut trouble = Recurring::new(report.stats.clone());
    let mut relist_said = false;
    let mut listed_once = false;
    let mut from = start;
    loop {
        let start = match from.clone() {
            Some(v) => v,
            None => match source.list().await {
                Ok(v) => {
                    report.stats.listed();
                    report.stats.progressed();
                    if !listed_once {
                        listed_once = true;
                        if let Some(l) = &report.listed {
                            l.listed_once();
                        }
                    }
                    from = Some(v.clone());
                    v
                }
                Err(Failure::ConsumerGone) => return,
                Err(Failure::HistoryGone(why) | Failure::Failed { why, .. }) => {
                    trouble.failed(&format!("listing {kind}s failed"), &why);
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            },
        };
        let mut stream = match source.watch(&start).await {
            Ok(s) => s,
            Err(Failure::ConsumerGone) => return,
            Err(Failure::HistoryGone(why)) => {
                say_relist(kind, &format!("{word} {start}"), &why, &mut relist_said);
                from = None;
                tokio::time::sleep(pauses.min).await;
                continue;
            }
            Err(Failure::Failed { what, why }) => {
                trouble.failed(&what, &why);
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        report.stats.watch_started();
        let pause = loop {
            let next = source.next(&mut stream).await;
            if let Next::Moved(v) | Next::Again(v) = &next {
                backoff.reset();
                trouble.ok(&works_again);
                report.stats.progressed();
                relist_said = false;
                if let Some(v) = v {
                    from = Some(v.clone());
                }
            }
            match next {
                Next::Moved(_) => {}
                Next::Again(_) => break false,
                Next::Closed => break pauses.after_close,
                Next::Relist(why) => {
                    say_relist(kind, &format!("{word} {start}"), &why, &mut relist_said);
                    from = None;
                    break pauses.after_close;
                }
                Next::Failed { what, why } => {
                    trouble.failed(&what, &why);
                    break true;
                }
                Next::ConsumerGone => return,
            }
        };
        if pause {
            tokio::time::sleep(backoff.next()).await;
        }
    }
}

/// A relist is not an outage: said once until the watch works again.
fn say_relist(kind: &str, from: &impl Display, why: &str, said: &mut bool) {
    if !*said {
        info!("the {kind} watch cannot resume from {from} ({why}); listing again");
        *said = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A scripted source: each list and each watch answer taken in turn; what it handed on
    /// is recorded.
    struct Script {
        lists: VecDeque<Result<u64, Failure>>,
        watches: VecDeque<Result<(), Failure>>,
        nexts: VecDeque<Next<u64>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Source for Script {
        type Version = u64;
        type Stream = ();

        fn kind(&self) -> &'static str {
            "thing"
        }

        async fn list(&mut self) -> Result<u64, Failure> {
            let r = self.lists.pop_front().unwrap_or(Err(Failure::ConsumerGone));
            self.log.lock().unwrap().push(format!("list {r:?}"));
            r
        }

        async fn watch(&mut self, from: &u64) -> Result<(), Failure> {
            self.log.lock().unwrap().push(format!("watch from {from}"));
            self.watches
                .pop_front()
                .unwrap_or(Err(Failure::ConsumerGone))
        }

        async fn next(&mut self, _: &mut ()) -> Next<u64> {
            self.nexts.pop_front().unwrap_or(Next::ConsumerGone)
        }
    }

    fn pauses() -> Pauses {
        Pauses {
            min: Duration::from_millis(1),
            max: Duration::from_millis(4),
            after_close: false,
        }
    }

    #[tokio::test]
    async fn lists_watches_resumes_and_relists_when_history_is_gone() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let s = Script {
            lists: [
                Err(Failure::Failed {
                    what: "x".into(),
                    why: "down".into(),
                }),
                Ok(10),
                Ok(50),
            ]
            .into(),
            watches: [
                Ok(()),
                Ok(()),
                Err(Failure::HistoryGone("410".into())),
                Ok(()),
            ]
            .into(),
            nexts: [
                Next::Moved(Some(12)),
                Next::Closed,
                Next::Moved(None),
                Next::Failed {
                    what: "w".into(),
                    why: "reset".into(),
                },
                Next::ConsumerGone,
            ]
            .into(),
            log: log.clone(),
        };
        let stats = Arc::new(DatastoreStats::default());
        let listed = AllListed::new(1);
        let report = Reporting {
            stats: stats.clone(),
            listed: Some(listed.clone()),
        };
        drive(s, None, pauses(), report).await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                "list Err(Failed { what: \"x\", why: \"down\" })",
                "list Ok(10)",
                "watch from 10",
                "watch from 12",
                "watch from 12",
                "list Ok(50)",
                "watch from 50",
            ]
        );
        assert!(listed.all());
        assert_eq!((stats.relists(), stats.watch_restarts()), (1, 2));
        assert_eq!(stats.errors(), 2, "the failed listing and the broken watch");
    }

    #[tokio::test]
    async fn the_listed_signal_waits_for_every_source() {
        let listed = AllListed::new(2);
        let waiter = {
            let l = listed.clone();
            tokio::spawn(async move { l.wait().await })
        };
        let one = |l: Arc<AllListed>| {
            Script {
                lists: [Ok(1)].into(),
                watches: [Ok(())].into(),
                nexts: [Next::ConsumerGone].into(),
                log: Arc::new(Mutex::new(Vec::new())),
            }
            .drive_with(l)
        };
        one(listed.clone()).await;
        assert!(!listed.all(), "one of two listed");
        assert!(!waiter.is_finished());
        one(listed.clone()).await;
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }

    impl Script {
        async fn drive_with(self, listed: Arc<AllListed>) {
            let report = Reporting {
                stats: Arc::new(DatastoreStats::default()),
                listed: Some(listed),
            };
            drive(self, None, pauses(), report).await
        }
    }
}
