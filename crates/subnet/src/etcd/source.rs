//! The leases under `<prefix>/subnets/` as a [`Source`] of the list-watch driver: a listing
//! is one `Snapshot` event, a watch delivers `Added`/`Removed`. etcd's own turns: compaction
//! and a cancelled watch re-list; a refused auth token is renewed and the watch goes on from
//! where it was; a watch that falls behind etcd (checked on a progress timer) re-lists; after
//! a huge message the watch is opened again to give its buffer back.

use super::progress::{ProgressCheck, Verdict};
use super::{conn, EtcdSubnetManager, HUGE_WATCH_MESSAGE};
use crate::listwatch::{Failure, Next, Source};
use crate::{Claim, LeaseEvent, Owner};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use flannel_core::subnet_key::SubnetKey;
use tokio::sync::mpsc;
use tokio::time::Interval;
use tracing::{debug, info, warn};

pub(crate) struct LeaseSource<'a> {
    pub sm: &'a EtcdSubnetManager,
    pub tx: mpsc::Sender<LeaseEvent>,
    pub prefix: String,
}

/// An open lease watch, with its progress check.
pub(crate) struct LeaseWatch {
    stream: WatchStream,
    check: ProgressCheck,
    ticker: Interval,
}

impl Source for LeaseSource<'_> {
    type Version = i64;
    type Stream = LeaseWatch;

    fn version_word(&self) -> &'static str {
        "revision"
    }

    fn kind(&self) -> &'static str {
        "lease"
    }

    async fn list(&mut self) -> Result<i64, Failure> {
        if self.tx.is_closed() {
            return Err(Failure::ConsumerGone);
        }
        let l = self.sm.list().await.map_err(|e| Failure::Failed {
            what: "listing leases failed".into(),
            why: e.to_string(),
        })?;
        let claims = l
            .entries
            .into_iter()
            .map(|e| e.claim(&self.prefix))
            .collect();
        self.tx
            .send(LeaseEvent::Snapshot(claims))
            .await
            .map_err(|_| Failure::ConsumerGone)?;
        Ok(l.revision + 1)
    }

    async fn watch(&mut self, from: &i64) -> Result<LeaseWatch, Failure> {
        if self.tx.is_closed() {
            return Err(Failure::ConsumerGone);
        }
        let opts = WatchOptions::new().with_prefix().with_start_revision(*from);
        let prefix = self.prefix.clone();
        let stream = self
            .sm
            .conn
            .call("watch", &prefix, |mut c| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                async move { c.watch(prefix, Some(opts)).await }
            })
            .await
            .map_err(|e| Failure::Failed {
                what: "starting the lease watch failed".into(),
                why: e.to_string(),
            })?;
        debug!(revision = from, "watching {prefix}");
        let period = self.sm.watch_progress;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(LeaseWatch {
            stream,
            check: ProgressCheck::new(*from),
            ticker,
        })
    }

    async fn next(&mut self, w: &mut LeaseWatch) -> Next<i64> {
        loop {
            let msg = tokio::select! {
                m = w.stream.message() => m,
                _ = w.ticker.tick() => {
                    // An unreachable etcd is the stream's to report.
                    let Ok(rev) = self.sm.store_revision().await else { continue };
                    match w.check.tick(rev) {
                        Verdict::KeepUp => {
                            let _ = w.stream.request_progress().await;
                            continue;
                        }
                        Verdict::Behind { seen, wanted } => {
                            warn!(
                                watch_revision = seen,
                                etcd_revision = wanted,
                                "the lease watch is falling behind etcd; re-listing"
                            );
                            return Next::Relist(format!("behind etcd's revision {wanted}"));
                        }
                    }
                }
            };
            return match msg {
                Ok(Some(resp)) => self.response(w, resp).await,
                Ok(None) => Next::Failed {
                    what: "etcd closed the lease watch".into(),
                    why: "reconnecting".into(),
                },
                Err(e) => Next::Failed {
                    what: "the lease watch failed".into(),
                    why: e.to_string(),
                },
            };
        }
    }
}

impl LeaseSource<'_> {
    async fn response(&mut self, w: &mut LeaseWatch, resp: WatchResponse) -> Next<i64> {
        if resp.compact_revision() != 0 {
            return Next::Relist(format!(
                "etcd compacted the history it needs, up to revision {}",
                resp.compact_revision()
            ));
        }
        if resp.canceled() && conn::is_auth_failure(resp.cancel_reason()) {
            // etcd restarted and forgot our token: a new one, and the watch goes on from where
            // it was (no events lost, no re-list).
            info!("etcd refused our auth token (did it restart?); authenticating again");
            return match self.sm.conn.reauthenticate().await {
                Ok(()) => Next::Closed,
                Err(e) => Next::Failed {
                    what: "authenticating to etcd failed".into(),
                    why: e.to_string(),
                },
            };
        }
        if resp.canceled() {
            return Next::Relist(format!(
                "etcd cancelled the lease watch: {}",
                resp.cancel_reason()
            ));
        }
        let mut resume = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            w.check.saw(kv.mod_revision());
            // Resume after the last event delivered: while etcd feeds a watch that fell
            // behind, a response's header revision is etcd's current one, past events still
            // to come.
            resume = Some(kv.mod_revision() + 1);
            let key = String::from_utf8_lossy(kv.key());
            let owner = Owner::new(key.strip_prefix(&self.prefix).unwrap_or(&key));
            let out = match ev.event_type() {
                EventType::Put => match self.sm.decode(kv.key(), kv.value()) {
                    Ok(lease) => Some(LeaseEvent::Added(Claim::new(
                        owner,
                        lease,
                        kv.create_revision(),
                    ))),
                    // Unreadable (logged by `decode`): what the key held before stays, its
                    // routes are not wiped.
                    Err(_) => None,
                },
                EventType::Delete => SubnetKey::parse(owner.as_str())
                    .ok()
                    .map(|_| LeaseEvent::Removed(owner)),
            };
            if let Some(out) = out {
                if self.tx.send(out).await.is_err() {
                    return Next::ConsumerGone;
                }
            }
        }
        // A response without events that does not open the watch is a progress notification:
        // the watch has seen everything up to its revision. Not a resume point: etcd before
        // 3.4.25/3.5.8 (Debian 12 has 3.4.23) answers with its current revision even while the
        // watch is behind.
        if resp.events().is_empty() && !resp.created() {
            if let Some(h) = resp.header() {
                w.check.saw(h.revision());
            }
        }
        // The gRPC stream keeps a buffer as large as its largest message for its life: after a
        // huge one (a lease padded to etcd's limit), a new watch from the next revision gives
        // that memory back.
        let size: usize = resp
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.value().len() + kv.key().len())
            .sum();
        if size > HUGE_WATCH_MESSAGE {
            debug!(
                bytes = size,
                "a huge watch message; watching again to free its buffer"
            );
            return Next::Again(resume);
        }
        Next::Moved(resume)
    }
}
