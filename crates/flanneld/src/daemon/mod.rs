//! The running daemon: its state in one struct (own lease, known leases, what the last reconcile
//! did, counters) and one method per trigger (lease events, a netlink notification, the resync
//! timer, the renewal deadline). `run` only waits for triggers and calls them; startup builds
//! the struct (see `startup`).

use crate::drift::{ClaimWatch, ConfigDrift};
use crate::metrics::Metrics;
use crate::signals::Shutdown;
use crate::skiplog::{ConflictLog, SkipLog};
use crate::state_socket::StateRequest;
use anyhow::anyhow;
use flannel_backend::{AnyBackend, Backend, ReconcileReport};
use flannel_cli::Options;
use flannel_core::state::{
    ConflictView, LeaseView, NodeInfo, ReconcileView, SkippedView, StateSnapshot,
};
use flannel_core::subnet_key::SubnetKey;
use flannel_core::Lease;
use flannel_net::firewall::TrafficManager;
use flannel_net::monitor::Change;
use flannel_net::{Family, NetOps, Netlink};
use flannel_subnet::{LeaseEvent, LeaseSet, OwnLease, Owner, SubnetError, SubnetManager};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

/// Retry pause after a failed renewal (upstream: 1 minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How long a burst of kernel notifications may settle before the reconcile they ask for.
const KICK_SETTLE: Duration = Duration::from_millis(50);
/// More deleted entries than this in one settle period is a flush: one full pass is cheaper.
const MAX_REPAIRS: usize = 256;

/// Why a reconcile pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Lease,
    Netlink,
    Timer,
}

impl Trigger {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Lease => "lease",
            Trigger::Netlink => "netlink",
            Trigger::Timer => "timer",
        }
    }
}

/// A copy of the daemon's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub own: Lease,
    pub leases: Vec<Lease>,
    pub last_report: ReconcileReport,
}

/// The daemon over its datastore (`SM`), kernel (`N`) and backend (`B`, itself over `N`); the
/// firewall is a trait object. Tests put fakes of all of them in (see `tests`).
pub struct Daemon<SM: SubnetManager, N: NetOps = Netlink, B: Backend = AnyBackend> {
    pub(crate) sm: Arc<SM>,
    pub(crate) nl: N,
    pub(crate) opts: Options,
    pub(crate) backend: B,
    pub(crate) fw: Arc<dyn TrafficManager>,
    pub(crate) own: OwnLease,
    pub(crate) leases: LeaseSet,
    pub(crate) renew_at: Instant,
    pub(crate) last_report: ReconcileReport,
    pub(crate) metrics: Arc<Metrics>,
    /// Requests for the state snapshot from the state socket (none when it is off).
    pub(crate) state_requests: Option<mpsc::Receiver<StateRequest>>,
    /// What the snapshot says of this node and the network config.
    pub(crate) node: NodeInfo,
    pub(crate) config_json: serde_json::Value,
    pub(crate) skips: SkipLog,
    pub(crate) conflicts: ConflictLog,
    pub(crate) drift: ConfigDrift,
    pub(crate) claims: ClaimWatch,
    /// The address families whose kernel notifications concern us.
    pub(crate) families: Vec<Family>,
}

/// When to renew: the margin before the lease ends (a lease that never ends: a year, harmlessly).
pub(crate) fn renew_deadline(own: &OwnLease, margin: Duration) -> Instant {
    let ttl = own.ttl.min(Duration::from_secs(86400 * 365));
    Instant::now() + ttl.saturating_sub(margin).max(Duration::from_secs(1))
}

impl<SM: SubnetManager, N: NetOps, B: Backend> Daemon<SM, N, B> {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            own: self.own.lease.clone(),
            leases: self.leases.leases(),
            last_report: self.last_report.clone(),
        }
    }

    /// The state snapshot served on the state socket: computed from what the daemon holds,
    /// no kernel or datastore read.
    pub fn state(&self) -> StateSnapshot {
        let sm = &self.sm;
        let expires = u64::try_from(self.metrics.lease_expiry.get())
            .ok()
            .filter(|e| *e > 0);
        let view = |o: &Owner, l: &Lease, exp| LeaseView::of(l, sm.describe(o), exp);
        let r = &self.last_report;
        StateSnapshot {
            version: env!("CARGO_PKG_VERSION").into(),
            ready: true,
            config: self.config_json.clone(),
            node: self.node.clone(),
            own: view(&self.own.owner, &self.own.lease, expires),
            leases: self
                .leases
                .claims()
                .into_iter()
                .map(|(o, l)| view(o, l, None))
                .collect(),
            conflicts: self
                .leases
                .conflicts()
                .into_iter()
                .map(|c| ConflictView {
                    key: sm.describe(&c.owner),
                    subnet: c.subnet,
                    holder: sm.describe(&c.holder),
                    holder_subnet: c.holder_subnet,
                })
                .collect(),
            expected: self
                .backend
                .expected(&self.own.lease, self.leases.as_slice()),
            last_reconcile: ReconcileView {
                added: r.added,
                removed: r.removed,
                failed: r.failed,
                device_recreated: r.device_recreated,
                skipped: r
                    .skipped
                    .iter()
                    .map(|s| SkippedView {
                        key: self.name_of(&s.key),
                        reason: s.reason.clone(),
                    })
                    .collect(),
            },
            datastore_problem: self.sm.stats().problem(),
        }
    }

    /// Names the holder of the programmed lease under `key`, as the operator finds it.
    pub(crate) fn name_of(&self, key: &SubnetKey) -> String {
        describe_key(self.sm.as_ref(), &self.leases, key)
    }

    /// Reports the claims left out for overlapping an earlier holder's subnet.
    pub(crate) fn report_conflicts(&mut self) {
        let now = self.leases.conflicts();
        self.metrics.lease_conflicts_now.set(now.len() as i64);
        let sm = &self.sm;
        let new = self.conflicts.report(now, &|o| sm.describe(o));
        self.metrics.lease_conflicts.inc_by(new as u64);
    }

    /// Recounts the known leases for the metrics (after a listing).
    pub(crate) fn count_leases(&self) {
        self.metrics.count_leases(
            self.leases
                .as_slice()
                .iter()
                .map(|l| l.attrs.backend_type.as_str()),
        );
    }

    /// One reconcile pass: the kernel made to match our lease and the known leases.
    pub async fn reconcile(&mut self, trigger: Trigger) {
        debug!(?trigger, "full pass");
        let started = std::time::Instant::now();
        match self
            .backend
            .reconcile(&self.own.lease, self.leases.as_slice())
            .await
        {
            Ok(r) => {
                self.metrics
                    .pass(trigger.label(), true, started.elapsed(), &r);
                let (sm, leases) = (&self.sm, &self.leases);
                self.skips
                    .report(&r.skipped, &|k| describe_key(sm.as_ref(), leases, k));
                // One line per pass, however many peers it touched (each entry is at debug).
                if r.changed() {
                    info!(
                        ?trigger,
                        added = r.added,
                        removed = r.removed,
                        failed = r.failed,
                        device_recreated = r.device_recreated,
                        took_ms = started.elapsed().as_millis() as u64,
                        "reconciled kernel state"
                    );
                }
                self.last_report = r;
            }
            Err(e) => {
                self.metrics.netlink_errors.inc();
                error!(error = %e, "reconcile failed; retrying on the next event or resync");
            }
        }
    }

    /// Lease events (a burst drained at once costs one reconcile).
    pub async fn on_lease_events(&mut self, events: Vec<LeaseEvent>) -> anyhow::Result<()> {
        let own_owner = self.own.owner.clone();
        let mut own_gone = false;
        let mut snapshot = false;
        for ev in events {
            self.metrics.lease_events.inc();
            own_gone |= matches!(&ev, LeaseEvent::Removed(o) if *o == own_owner);
            snapshot |= matches!(&ev, LeaseEvent::Snapshot(_));
            self.leases.apply(ev);
        }
        // Each programmed lease this burst touched, as it was before; a snapshot touches
        // everything.
        let before = self.leases.take_touched();
        self.report_conflicts();
        let restore = self.sm.restores_own_lease();
        let theirs_differ = self
            .leases
            .claim(&own_owner)
            .is_some_and(|l| l.attrs != self.own.lease.attrs);
        if !restore {
            self.claims
                .check(&self.own, &self.leases, &self.sm.describe(&own_owner));
        }
        // An empty listing in etcd may be a glitch of the datastore; a Kubernetes listing
        // without our annotations means our Node lost them (or was re-created).
        let missing =
            (restore || !self.leases.is_empty()) && self.leases.claim(&own_owner).is_none();
        if own_gone || missing || (restore && theirs_differ) {
            warn!(lease = %self.sm.describe(&own_owner), "our lease disappeared or was changed; taking it back");
            self.metrics.reclaims.inc();
            match self.sm.reclaim_lease(&self.own).await {
                Ok(l) => {
                    self.own = l;
                    self.metrics.lease_renewed_for(self.own.ttl);
                    self.renew_at = renew_deadline(&self.own, self.opts.renew_margin);
                }
                Err(SubnetError::LeaseLost { key }) => {
                    return Err(anyhow!(
                        "lease {key} was taken by another node; restart to get a new subnet"
                    ))
                }
                Err(e) => {
                    warn!(error = %e, "taking our lease back failed; retrying on the next event or resync")
                }
            }
        }
        if snapshot {
            self.count_leases();
        } else {
            // Counted by backend: a lease renewed or changed in place moves no count.
            for (k, was) in &before {
                let was = was.as_ref().map(|l| l.attrs.backend_type.as_str());
                let now = self.leases.get(k).map(|l| l.attrs.backend_type.as_str());
                if was == now {
                    continue;
                }
                if let Some(t) = was {
                    self.metrics.lease_delta(t, -1);
                }
                if let Some(t) = now {
                    self.metrics.lease_delta(t, 1);
                }
            }
        }
        let own_key = self.own.lease.key();
        if snapshot || before.contains_key(&own_key) || !self.apply_delta(&before).await {
            self.reconcile(Trigger::Lease).await;
        }
        Ok(())
    }

    /// The touched leases only, against what the backend knows it programmed: no kernel
    /// dump. False when a full pass is needed instead (the backend has no mirror, a write
    /// failed, or it cannot work incrementally).
    async fn apply_delta(&mut self, before: &BTreeMap<SubnetKey, Option<Lease>>) -> bool {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for (k, was) in before {
            match (was, self.leases.get(k)) {
                (_, Some(now)) if was.as_ref() != Some(now) => changed.push(now.clone()),
                (Some(old), None) => removed.push(old.clone()),
                _ => {}
            }
        }
        if changed.is_empty() && removed.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        match self
            .backend
            .apply_delta(&self.own.lease, &changed, &removed)
            .await
        {
            Ok(Some(r)) if r.failed == 0 => {
                self.metrics.pass("lease", false, started.elapsed(), &r);
                let (sm, leases) = (&self.sm, &self.leases);
                let keys: Vec<SubnetKey> = before.keys().copied().collect();
                self.skips
                    .report_some(&keys, &r.skipped, &|k| describe_key(sm.as_ref(), leases, k));
                if r.changed() {
                    info!(
                        added = r.added,
                        removed = r.removed,
                        took_ms = started.elapsed().as_millis() as u64,
                        "applied lease changes"
                    );
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(error = %e, "applying lease changes failed; doing a full pass");
                false
            }
        }
    }

    /// Netlink notifications about state we may own, none of them our own doing: each
    /// deleted entry of ours is put back by itself; anything the backend cannot place (or a
    /// failed repair) takes a full pass.
    pub async fn on_netlink_kick(&mut self, changes: &[Change]) {
        if changes.len() <= MAX_REPAIRS {
            let started = std::time::Instant::now();
            match self.backend.repair(changes).await {
                Ok(Some(r)) if r.failed == 0 => {
                    self.metrics.pass("netlink", false, started.elapsed(), &r);
                    return;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "repairing deleted entries failed; doing a full pass"),
            }
        }
        self.reconcile(Trigger::Netlink).await;
    }

    /// The resync timer: config drift, blackhole route, firewall, our lease data. (Kernel state
    /// has its own, slower timer: see `--kernel-resync`.)
    pub async fn on_resync(&mut self) {
        self.backend.tick();
        self.drift.check(self.sm.as_ref()).await;
        // Not in an IPv6-only network, whose leases' IPv4 part is 0.0.0.0/0.
        if self.opts.blackhole_route && self.own.lease.subnet.prefix_len() > 0 {
            ensure_blackhole(&self.nl, self.own.lease.subnet.into()).await;
        }
        let fw = self.fw.clone();
        match tokio::task::spawn_blocking(move || fw.resync()).await {
            Ok(Err(e)) => {
                self.metrics.firewall_errors.inc();
                warn!(error = %e, "checking firewall rules failed")
            }
            Err(e) => warn!(error = %e, "firewall check task failed"),
            Ok(Ok(true)) => self.metrics.rules_repaired(),
            Ok(Ok(false)) => {}
        }
        let attrs = self.backend.lease_attrs();
        if attrs != self.own.lease.attrs {
            info!("backend data changed (new VtepMAC?); republishing our lease");
            match self.sm.republish(&self.own, &attrs).await {
                Ok(l) => self.own = l,
                Err(e) => warn!(error = %e, "republishing our lease failed"),
            }
        }
    }

    /// The renewal deadline.
    pub async fn on_renew(&mut self) {
        match self.sm.renew_lease(&self.own).await {
            Ok(l) => {
                self.metrics.renewals.inc();
                self.own = l;
                self.metrics.lease_renewed_for(self.own.ttl);
                self.renew_at = renew_deadline(&self.own, self.opts.renew_margin);
                info!(subnet = %self.own.lease.subnet, ttl_secs = self.own.ttl.as_secs(), "lease renewed");
            }
            Err(SubnetError::LeaseLost { key }) => {
                self.metrics.renewal_failures.inc();
                warn!(key, "lease vanished before renewal; taking it back");
                match self.sm.reclaim_lease(&self.own).await {
                    Ok(l) => {
                        self.metrics.reclaims.inc();
                        self.own = l;
                        self.metrics.lease_renewed_for(self.own.ttl);
                        self.renew_at = renew_deadline(&self.own, self.opts.renew_margin);
                    }
                    Err(e) => {
                        error!(error = %e, "could not take our lease back");
                        self.renew_at = Instant::now() + RENEW_RETRY;
                    }
                }
            }
            Err(e) => {
                self.metrics.renewal_failures.inc();
                error!(error = %e, "renewing the lease failed; retrying in {RENEW_RETRY:?}");
                self.renew_at = Instant::now() + RENEW_RETRY;
            }
        }
    }

    /// Waits for triggers until a signal (Ok) or a fatal condition (Err).
    pub async fn run(mut self, mut stop: Shutdown) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::channel::<LeaseEvent>(4096);
        let watcher = {
            let sm = self.sm.clone();
            tokio::spawn(async move { sm.watch_leases(tx).await })
        };
        // Kernel notifications (a deleted route, neighbour, FDB entry, address or link) wake the
        // reconciler at once, unless they are our own deletions coming back.
        let (kick_tx, mut kicks) = mpsc::channel::<Change>(4096);
        let monitor = tokio::spawn(flannel_net::monitor::watch(kick_tx, self.families.clone()));
        // Like upstream, the first resync comes one period after start.
        let period = self.opts.resync;
        let mut resync = tokio::time::interval_at(Instant::now() + period, period);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let kperiod = self.opts.kernel_resync;
        let mut kernel_resync = tokio::time::interval_at(Instant::now() + kperiod, kperiod);
        kernel_resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the reconcile for a kernel notification is due: a burst (and our own writes)
        // settles first, while lease events go on being handled (a sleep here would hold back
        // a peer's route by up to that long).
        let mut kick_due: Option<Instant> = None;
        // The unexpected changes seen since the last repair (capped: past the cap, a full pass).
        let mut drift: Vec<Change> = Vec::new();
        let mut state_requests = self.state_requests.take();
        let result: anyhow::Result<()> = loop {
            tokio::select! {
                Some(req) = async {
                    match state_requests.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = req.send(self.state());
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { break Err(anyhow!("the lease watch stopped")) };
                    let mut batch = vec![ev];
                    while let Ok(ev) = rx.try_recv() {
                        batch.push(ev);
                    }
                    if let Err(e) = self.on_lease_events(batch).await {
                        break Err(e);
                    }
                }
                Some(c) = kicks.recv() => {
                    // Every change is put to the backend: each expected one is used up.
                    let mut next = Some(c);
                    while let Some(c) = next.take().or_else(|| kicks.try_recv().ok()) {
                        if !self.backend.expected_change(&c) {
                            note_drift(&mut drift, c);
                        }
                    }
                    if !drift.is_empty() {
                        kick_due.get_or_insert_with(|| Instant::now() + KICK_SETTLE);
                    }
                }
                _ = sleep_until(kick_due.unwrap_or_else(Instant::now)), if kick_due.is_some() => {
                    kick_due = None;
                    while let Ok(c) = kicks.try_recv() {
                        if !self.backend.expected_change(&c) {
                            note_drift(&mut drift, c);
                        }
                    }
                    let changes = std::mem::take(&mut drift);
                    self.on_netlink_kick(&changes).await;
                }
                _ = resync.tick() => self.on_resync().await,
                _ = kernel_resync.tick() => self.reconcile(Trigger::Timer).await,
                _ = sleep_until(self.renew_at) => self.on_renew().await,
                name = stop.recv() => { info!("{name}: exiting cleanly; kernel state, rules and lease kept"); break Ok(()) }
            }
        };
        watcher.abort();
        monitor.abort();
        result
    }
}

/// Names the holder of the programmed lease under `key` (a free function: the daemon's
/// fields are borrowed apart while a report is written).
fn describe_key<SM: SubnetManager>(sm: &SM, leases: &LeaseSet, key: &SubnetKey) -> String {
    match leases.owner_of(key) {
        Some(o) => sm.describe(o),
        None => format!("the lease of subnet {}", key.v4),
    }
}

/// Adds an unexpected change to the ones waiting for repair; past [`MAX_REPAIRS`] only a
/// marker that a full pass is due is kept (memory stays bounded in a flush).
fn note_drift(drift: &mut Vec<Change>, c: Change) {
    if drift.len() <= MAX_REPAIRS && !drift.contains(&c) {
        drift.push(c);
    }
}

/// `--ip-blackhole-route`: packets for unused addresses of our subnet are dropped here instead
/// of following the default route out of the node.
async fn ensure_blackhole(nl: &impl NetOps, subnet: ipnet::IpNet) {
    match nl.has_blackhole(subnet).await {
        Ok(true) => {}
        Ok(false) => match nl.add_blackhole(subnet).await {
            Ok(()) => info!(subnet = %subnet, "added blackhole route"),
            Err(e) => warn!(error = %e, "adding the blackhole route failed"),
        },
        Err(e) => warn!(error = %e, "checking the blackhole route failed"),
    }
}

#[cfg(test)]
mod tests;
