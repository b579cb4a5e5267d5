//! The etcd v3 subnet manager: upstream's key layout (`<prefix>/config`,
//! `<prefix>/subnets/<ip>-<len>`), lease JSON, 24 h etcd leases and create-if-absent transactions.

mod conn;
pub mod progress;
mod source;
mod tls;

use crate::listwatch::{drive, Pauses, Reporting};
use crate::stats::DatastoreStats;
use crate::{Claim, LeaseEvent, LeaseHandle, OwnLease, Owner, SubnetError, SubnetManager};
use conn::Conn;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use flannel_core::allocator::pick_free;
use flannel_core::subnet::{v4_net, v4_to_u128, v6_net, v6_to_u128};
use flannel_core::subnet_env::PreviousSubnets;
use flannel_core::subnet_key::SubnetKey;
use flannel_core::{Lease, LeaseAttrs, NetworkConfig};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// Upstream's `subnetTTL`: every lease key hangs on a 24 h etcd lease.
pub const SUBNET_TTL_SECS: i64 = 24 * 60 * 60;
/// Upstream tries this many times before giving up on acquiring a subnet.
pub const ACQUIRE_ATTEMPTS: usize = 10;
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Watch messages larger than this (a normal lease is ~200 bytes) end the watch, which
/// resumes at once from the next revision: see `run_watch_from`.
const HUGE_WATCH_MESSAGE: usize = 256 * 1024;
/// How often the lease watch's progress is checked (see [`progress`]).
pub const WATCH_PROGRESS_PERIOD: Duration = Duration::from_secs(30);

/// How to reach etcd: the `--etcd-*` flags.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub keyfile: String,
    pub certfile: String,
    pub cafile: String,
    pub username: String,
    pub password: String,
}

/// One key under `subnets/` as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub lease: Lease,
    /// The etcd lease the key hangs on; 0 for a reservation (a key without TTL).
    pub etcd_lease: i64,
    pub mod_revision: i64,
    pub create_revision: i64,
}

impl Entry {
    /// The lease with its holder (the key as written).
    pub fn claim(self, prefix: &str) -> Claim {
        let owner = Owner::new(self.key.strip_prefix(prefix).unwrap_or(&self.key));
        Claim::new(owner, self.lease, self.create_revision)
    }
}

/// All readable leases and the revision they were read at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// Subnet keys whose value could not be read: not routed to, but never handed out either.
    pub unreadable: Vec<SubnetKey>,
    pub revision: i64,
}

/// The prefixes held by leases (readable or not), per family, as (base, length).
struct Taken {
    v4: Vec<(u128, u8)>,
    v6: Vec<(u128, u8)>,
}

impl Taken {
    fn of(entries: &[&Entry], unreadable: &[SubnetKey]) -> Self {
        let keys: Vec<SubnetKey> = entries
            .iter()
            .map(|e| e.lease.key())
            .chain(unreadable.iter().copied())
            .collect();
        Self {
            v4: keys
                .iter()
                .map(|k| (v4_to_u128(k.v4.network()), k.v4.prefix_len()))
                .collect(),
            v6: keys
                .iter()
                .filter_map(|k| k.v6)
                .map(|n| (v6_to_u128(n.network()), n.prefix_len()))
                .collect(),
        }
    }

    /// Whether no lease overlaps `k` in either family.
    fn is_free(&self, k: &SubnetKey) -> bool {
        let free = |taken: &[(u128, u8)], base: u128, len: u8, bits: u8| {
            !taken
                .iter()
                .any(|&(b, l)| flannel_core::subnet::overlaps(bits, base, len, b, l))
        };
        free(&self.v4, v4_to_u128(k.v4.network()), k.v4.prefix_len(), 32)
            && k.v6
                .is_none_or(|n| free(&self.v6, v6_to_u128(n.network()), n.prefix_len(), 128))
    }
}

#[derive(Clone)]
pub struct EtcdSubnetManager {
    conn: Conn,
    /// Keys whose value could not be read, with a hash of that value: each bad value is
    /// reported once, not on every listing.
    reported: Arc<Mutex<HashMap<String, u64>>>,
    prefix: String,
    previous: PreviousSubnets,
    watch_progress: Duration,
    /// `--etcd-endpoints`, for messages.
    endpoints: String,
    /// The watch's counters and its problem now, for metrics and readiness.
    stats: Arc<DatastoreStats>,
}

/// `path.Join`-style cleaning: no repeated or trailing slashes.
pub fn clean_prefix(p: &str) -> String {
    let lead = if p.starts_with('/') { "/" } else { "" };
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    format!("{lead}{}", parts.join("/"))
}

/// Keys per page of a listing: ~200 KB of leases, far below a gRPC message's 4 MiB.
const LIST_PAGE: i64 = 1000;

/// The end of the key range holding every key that starts with `prefix` (etcd's rule: the
/// prefix with its last byte incremented, dropping trailing 0xff bytes).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(b) = end.pop() {
        if b < 0xff {
            end.push(b + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdSubnetManager {
    /// Connects lazily: the channel is made now, the first request finds out whether etcd is
    /// up (and authenticates, when a username is given). TLS as [`tls`] decides.
    pub async fn connect(
        opts: &EtcdOptions,
        previous: PreviousSubnets,
    ) -> Result<Self, SubnetError> {
        Ok(Self {
            conn: Conn::connect(opts).await?,
            reported: Arc::default(),
            prefix: clean_prefix(&opts.prefix),
            previous,
            watch_progress: WATCH_PROGRESS_PERIOD,
            endpoints: opts.endpoints.join(","),
            stats: Arc::default(),
        })
    }

    /// Checks the lease watch's progress every `period` instead of [`WATCH_PROGRESS_PERIOD`].
    pub fn with_watch_progress_period(mut self, period: Duration) -> Self {
        self.watch_progress = period;
        self
    }

    /// etcd's current revision (one key read: cheap at any cluster size).
    async fn store_revision(&self) -> Result<i64, SubnetError> {
        let key = self.config_key();
        let r = self
            .conn
            .call("get", &key, |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// How long the etcd lease `id` has left (`flannelctl leases`); `None` for a key without
    /// a lease (a reservation) or a lease etcd no longer has.
    pub async fn time_to_live(&self, id: i64) -> Result<Option<Duration>, SubnetError> {
        if id == 0 {
            return Ok(None);
        }
        let r = self
            .conn
            .call("lease ttl", &id.to_string(), |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        Ok(u64::try_from(r.ttl()).ok().map(Duration::from_secs))
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn key_for(&self, k: &SubnetKey) -> String {
        format!("{}{k}", self.subnets_prefix())
    }

    /// Decodes one key/value. `Err(Some(key))` when the key names a subnet but the value is
    /// unreadable, `Err(None)` when the key is not a subnet; both logged with the key, once per
    /// distinct value (the same listing is read several times at start and on every relist).
    fn decode(&self, key: &[u8], value: &[u8]) -> Result<Lease, Option<SubnetKey>> {
        let key = String::from_utf8_lossy(key);
        let name = key.strip_prefix(&self.subnets_prefix()).unwrap_or(&key);
        let sk = match SubnetKey::parse(name) {
            Ok(k) => k,
            Err(e) => {
                if self.first_report(&key, value) {
                    warn!(key = %key, error = %e, "skipping etcd key: not a subnet");
                }
                return Err(None);
            }
        };
        match LeaseAttrs::from_json(value) {
            Ok(attrs) => {
                self.forget_report(&key);
                Ok(Lease {
                    subnet: sk.v4,
                    ipv6_subnet: sk.v6,
                    attrs,
                })
            }
            Err(e) => {
                if self.first_report(&key, value) {
                    warn!(key = %key, error = %e, "skipping lease with an unreadable value (its subnet stays reserved)");
                } else {
                    debug!(key = %key, "still unreadable");
                }
                Err(Some(sk))
            }
        }
    }

    /// Whether `value` under `key` has not been reported yet (and records it).
    fn first_report(&self, key: &str, value: &[u8]) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        let hash = h.finish();
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        r.insert(key.to_string(), hash) != Some(hash)
    }

    fn forget_report(&self, key: &str) {
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if !r.is_empty() {
            r.remove(key);
        }
    }

    /// Every lease under `subnets/`, read in pages of [`LIST_PAGE`] keys, every page at the
    /// first page's revision: one consistent snapshot however many leases there are (one
    /// range of 20000+ leases exceeds a gRPC message). Should etcd compact that revision
    /// meanwhile, the listing starts again.
    pub async fn list(&self) -> Result<Listing, SubnetError> {
        let mut attempts = 0;
        loop {
            match self.list_pages().await {
                Err(SubnetError::Etcd { cause, .. })
                    if attempts < 3 && cause.to_string().contains("compacted") =>
                {
                    attempts += 1;
                    debug!("the listing's revision was compacted; listing again");
                }
                other => return other,
            }
        }
    }

    async fn list_pages(&self) -> Result<Listing, SubnetError> {
        let prefix = self.subnets_prefix();
        let end = range_end(prefix.as_bytes());
        let mut l = Listing::default();
        let mut from = prefix.clone().into_bytes();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if l.revision != 0 {
                opts = opts.with_revision(l.revision);
            }
            let resp = self
                .conn
                .call("get", &prefix, |mut c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.get(from, Some(opts)).await }
                })
                .await?;
            if l.revision == 0 {
                l.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for kv in resp.kvs() {
                match self.decode(kv.key(), kv.value()) {
                    Ok(lease) => l.entries.push(Entry {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        lease,
                        etcd_lease: kv.lease(),
                        mod_revision: kv.mod_revision(),
                        create_revision: kv.create_revision(),
                    }),
                    Err(Some(k)) => l.unreadable.push(k),
                    Err(None) => {}
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key of this one.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(l),
            }
        }
    }

    /// Whether a held lease still fits the config (same sizes, inside the ranges).
    fn compatible(cfg: &NetworkConfig, l: &Lease) -> bool {
        let v4_ok = cfg
            .v4_range()
            .is_some_and(|r| r.accepts(v4_to_u128(l.subnet.network()), l.subnet.prefix_len()));
        let v6_ok = match (cfg.v6_range(), l.ipv6_subnet) {
            (None, None) => true,
            (Some(r), Some(n)) => r.accepts(v6_to_u128(n.network()), n.prefix_len()),
            _ => false,
        };
        v4_ok && v6_ok
    }

    /// Writes `attrs` to `key` on a fresh 24 h lease (or without TTL for a reservation) if the
    /// comparison holds; `None` when another writer got there first.
    async fn put_if(
        &self,
        key: &str,
        lease_key: SubnetKey,
        attrs: &LeaseAttrs,
        cmps: Vec<Compare>,
        reservation: bool,
    ) -> Result<Option<OwnLease>, SubnetError> {
        let (id, ttl) = if reservation {
            (0, Duration::MAX)
        } else {
            let g = self
                .conn
                .call("lease grant", key, |mut c| async move {
                    c.lease_grant(SUBNET_TTL_SECS, None).await
                })
                .await?;
            (g.id(), Duration::from_secs(g.ttl().max(0) as u64))
        };
        let put = TxnOp::put(
            key,
            attrs.to_json(),
            (id != 0).then(|| PutOptions::new().with_lease(id)),
        );
        let txn = Txn::new().when(cmps).and_then(vec![put]);
        let resp = self
            .conn
            .call("txn", key, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            if id != 0 {
                self.revoke(key, id).await;
            }
            return Ok(None);
        }
        let lease = Lease {
            subnet: lease_key.v4,
            ipv6_subnet: lease_key.v6,
            attrs: attrs.clone(),
        };
        let prefix = self.subnets_prefix();
        Ok(Some(OwnLease {
            owner: Owner::new(key.strip_prefix(&prefix).unwrap_or(key)),
            lease,
            ttl,
            handle: LeaseHandle(id),
        }))
    }

    /// Acquires starting from a listing the caller already holds (which may be stale: a lost
    /// race then re-lists and tries again). `acquire_lease` starts from a fresh listing.
    pub async fn acquire_from(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        mut listing: Option<Listing>,
    ) -> Result<OwnLease, SubnetError> {
        let range = cfg.v4_range().ok_or_else(|| SubnetError::Config {
            key: self.config_key(),
            source: flannel_core::ConfigError::Invalid(
                "the etcd subnet manager needs an IPv4 Network: IPv6-only networks (EnableIPv4: false) run with the Kubernetes subnet manager. In etcd every lease key starts with its IPv4 subnet, and upstream's IPv6-only keys all start with 0.0.0.0-0, so the subnet that tells leases apart would be the same for every node".into(),
            ),
        })?;
        let v6_range = cfg.v6_range();
        for attempt in 1..=ACQUIRE_ATTEMPTS {
            let l = match listing.take() {
                Some(l) => l,
                None => self.list().await?,
            };
            let mut taken: Vec<&Entry> = l.entries.iter().collect();
            let mine: Vec<&Entry> = l
                .entries
                .iter()
                .filter(|e| e.lease.attrs.public_ip == attrs.public_ip)
                .collect();
            // Our previous run's subnet (subnet.env), if it still fits the config.
            let prev = self.previous.subnet.and_then(|s| {
                let k = SubnetKey::new(
                    s,
                    if v6_range.is_some() {
                        self.previous.ipv6_subnet
                    } else {
                        None
                    },
                );
                let probe = Lease {
                    subnet: k.v4,
                    ipv6_subnet: k.v6,
                    attrs: attrs.clone(),
                };
                Self::compatible(cfg, &probe).then_some(k)
            });

            // 1. Our previous subnet, still held by our PublicIP: a restart. Pods on this node
            //    use its addresses; another lease claiming our PublicIP does not move us.
            if let Some(e) = prev.and_then(|k| mine.iter().find(|e| e.lease.key() == k)) {
                self.report_other_claims(&mine, &e.key, attrs);
                let cmp = Compare::mod_revision(e.key.as_str(), CompareOp::Equal, e.mod_revision);
                if let Some(own) = self
                    .put_if(&e.key, e.lease.key(), attrs, vec![cmp], e.etcd_lease == 0)
                    .await?
                {
                    info!(key = %e.key, "reusing our previous subnet, held by our public IP {}", attrs.public_ip);
                    return Ok(own);
                }
                continue;
            }

            // 2. Our previous subnet, if nobody holds it (our lease expired while we were down).
            let prev = prev.filter(|k| Taken::of(&taken, &l.unreadable).is_free(k));
            if let Some(k) = prev {
                self.report_other_claims(&mine, &self.key_for(&k), attrs);
            } else if let Some(e) = mine.first() {
                // 3. The lease our PublicIP holds (upstream's first choice; ours after a reboot,
                //    when subnet.env is gone with /run).
                self.report_other_claims(&mine, &e.key, attrs);
                if Self::compatible(cfg, &e.lease) {
                    let cmp =
                        Compare::mod_revision(e.key.as_str(), CompareOp::Equal, e.mod_revision);
                    let reservation = e.etcd_lease == 0;
                    if let Some(own) = self
                        .put_if(&e.key, e.lease.key(), attrs, vec![cmp], reservation)
                        .await?
                    {
                        info!(key = %e.key, "reusing the lease held by our public IP {}", attrs.public_ip);
                        return Ok(own);
                    }
                    continue;
                }
                warn!(key = %e.key, "our public IP holds a lease that no longer fits the network config; deleting it");
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        e.key.as_str(),
                        CompareOp::Equal,
                        e.mod_revision,
                    )])
                    .and_then(vec![TxnOp::delete(e.key.as_str(), None)]);
                self.conn
                    .call("txn delete", &e.key, |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
                taken.retain(|t| t.key != e.key);
            }
            let Taken {
                v4: taken_v4,
                v6: taken_v6,
            } = Taken::of(&taken, &l.unreadable);

            // 4. A random free subnet.
            let key = match prev {
                Some(k) => k,
                None => {
                    let v4 = pick_free(&range, &taken_v4).ok_or(SubnetError::OutOfSubnets)?;
                    let v6 = match v6_range {
                        Some(r) => Some(v6_net(
                            pick_free(&r, &taken_v6).ok_or(SubnetError::OutOfSubnets)?,
                            r.subnet_len,
                        )),
                        None => None,
                    };
                    SubnetKey::new(v4_net(v4, range.subnet_len), v6)
                }
            };
            let etcd_key = self.key_for(&key);
            // Nobody holds this key, nor any key with the same IPv4 subnet: a dual-stack key
            // names both subnets, so two nodes picking the same IPv4 subnet with different
            // IPv6 ones would otherwise both succeed.
            let cmps = vec![
                Compare::version(etcd_key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(
                    self.key_for(&SubnetKey::new(key.v4, None)),
                    CompareOp::Equal,
                    0,
                )
                .with_prefix(),
            ];
            match self.put_if(&etcd_key, key, attrs, cmps, false).await? {
                Some(own) => {
                    if let Some(other) = self.v6_taken_before(&etcd_key, key).await? {
                        warn!(key = %etcd_key, other = %other, attempt, "another node took the same IPv6 subnet at the same moment; giving ours up and trying again");
                        self.give_up(&etcd_key, &own).await;
                        continue;
                    }
                    info!(key = %etcd_key, "acquired a new lease");
                    return Ok(own);
                }
                None => {
                    info!(key = %etcd_key, attempt, "another node took this subnet first; trying again")
                }
            }
        }
        Err(SubnetError::TooManyConflicts(ACQUIRE_ATTEMPTS))
    }

    /// After creating `etcd_key`: another lease with the same IPv6 subnet, written before ours
    /// (the key cannot be guarded by a prefix: the IPv6 part comes second). The later writer
    /// gives up, so exactly one of two racing nodes keeps the subnet.
    async fn v6_taken_before(
        &self,
        etcd_key: &str,
        key: SubnetKey,
    ) -> Result<Option<String>, SubnetError> {
        let Some(v6) = key.v6 else { return Ok(None) };
        let l = self.list().await?;
        let Some(ours) = l.entries.iter().find(|e| e.key == etcd_key) else {
            return Ok(Some("(our key is gone)".into()));
        };
        Ok(l.entries
            .iter()
            .find(|e| {
                e.key != etcd_key
                    && e.lease.ipv6_subnet == Some(v6)
                    && e.mod_revision < ours.mod_revision
            })
            .map(|e| e.key.clone()))
    }

    /// Deletes a key we just created (and its etcd lease), if it is still ours.
    async fn give_up(&self, etcd_key: &str, own: &OwnLease) {
        let txn = Txn::new()
            .when(vec![Compare::lease(
                etcd_key,
                CompareOp::Equal,
                own.handle.0,
            )])
            .and_then(vec![TxnOp::delete(etcd_key, None)]);
        let _ = self
            .conn
            .call("txn delete", etcd_key, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        if own.handle.0 != 0 {
            self.revoke(etcd_key, own.handle.0).await;
        }
    }

    /// Revokes etcd lease `id` (made for `key`); a failure only leaves it to expire.
    async fn revoke(&self, key: &str, id: i64) {
        let _ = self
            .conn
            .call("lease revoke", key, |mut c| async move {
                c.lease_revoke(id).await
            })
            .await;
    }

    /// Says loudly which other leases claim our PublicIP besides `chosen`: another node behind
    /// the same address (NAT, a Vagrant NIC) or a planted lease. They are left alone.
    fn report_other_claims(&self, mine: &[&Entry], chosen: &str, attrs: &LeaseAttrs) {
        for e in mine.iter().filter(|e| e.key != chosen) {
            error!(
                key = %e.key,
                "lease {} also claims our public IP {}: another node behind the same address (set --public-ip or --iface), or a stale or planted lease; keeping {chosen} and leaving {} alone",
                e.key, attrs.public_ip, e.key
            );
        }
    }

    /// Renews by putting the same value on a fresh 24 h lease, only while the key still holds
    /// exactly our value (so a subnet taken over by someone else is never overwritten).
    pub async fn renew(&self, own: &OwnLease) -> Result<OwnLease, SubnetError> {
        if own.handle.0 == 0 {
            return Ok(own.clone()); // a reservation does not expire
        }
        self.republish(own, &own.lease.attrs).await
    }

    /// Replaces our lease value with `attrs` (for example a new VtepMAC) on a fresh lease, only
    /// while the key still holds exactly our previous value.
    pub async fn republish(
        &self,
        own: &OwnLease,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        let key = self.describe(&own.owner);
        let cmp = Compare::value(key.as_str(), CompareOp::Equal, own.lease.attrs.to_json());
        self.put_if(&key, own.lease.key(), attrs, vec![cmp], own.handle.0 == 0)
            .await?
            .ok_or(SubnetError::LeaseLost { key })
    }

    /// Takes our subnet back after the key vanished (expired or deleted by hand), if still free.
    pub async fn reclaim(&self, own: &OwnLease) -> Result<OwnLease, SubnetError> {
        let key = self.describe(&own.owner);
        let cmp = Compare::version(key.as_str(), CompareOp::Equal, 0);
        self.put_if(&key, own.lease.key(), &own.lease.attrs, vec![cmp], false)
            .await?
            .ok_or(SubnetError::LeaseLost { key })
    }

    /// The watch loop: list (snapshot), watch from the next revision, reconnect with backoff,
    /// re-list when etcd has compacted the revision we need.
    pub async fn run_watch(&self, tx: mpsc::Sender<LeaseEvent>) {
        self.run_watch_from(tx, None).await
    }

    /// The watch loop resuming at `resume` (as after a reconnect); `None` starts with a listing.
    /// The list-watch driver does the rest (see `source`).
    pub async fn run_watch_from(&self, tx: mpsc::Sender<LeaseEvent>, resume: Option<i64>) {
        let source = source::LeaseSource {
            sm: self,
            tx,
            prefix: self.subnets_prefix(),
        };
        let pauses = Pauses {
            min: WATCH_BACKOFF_MIN,
            max: WATCH_BACKOFF_MAX,
            after_close: true,
        };
        let report = Reporting {
            stats: self.stats.clone(),
            listed: None,
        };
        drive(source, resume, pauses, report).await
    }
}

impl SubnetManager for EtcdSubnetManager {
    fn config_location(&self) -> String {
        self.config_key()
    }

    fn datastore(&self) -> String {
        format!("etcd {}", self.endpoints)
    }

    fn config_missing_hint(&self) -> String {
        let key = self.config_key();
        format!(
            "{key} does not exist in etcd (create it with `etcdctl put {key} '{{\"Network\": \"10.244.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'`)"
        )
    }

    async fn get_network_config(&self) -> Result<Option<String>, SubnetError> {
        let key = self.config_key();
        let resp = self
            .conn
            .call("get", &key, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn stored_vtep_macs(&self, public_ip: std::net::Ipv4Addr) -> crate::StoredMacs {
        let Ok(l) = self.list().await else {
            return crate::StoredMacs::default();
        };
        let Some(attrs) = l
            .entries
            .iter()
            .map(|e| &e.lease.attrs)
            .find(|a| a.public_ip == public_ip && a.backend_type == "vxlan")
        else {
            return crate::StoredMacs::default();
        };
        let mac = |d: Option<&flannel_core::raw_json::RawJson>| {
            d.and_then(|d| flannel_core::lease::VxlanData::from_raw(d).ok())
                .map(|d| d.vtep_mac)
        };
        crate::StoredMacs {
            v4: mac(attrs.backend_data.as_ref()),
            v6: mac(attrs.backend_v6_data.as_ref()),
        }
    }

    async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        self.acquire_from(config, attrs, None).await
    }

    async fn renew_lease(&self, lease: &OwnLease) -> Result<OwnLease, SubnetError> {
        self.renew(lease).await
    }

    async fn reclaim_lease(&self, lease: &OwnLease) -> Result<OwnLease, SubnetError> {
        self.reclaim(lease).await
    }

    async fn republish(
        &self,
        lease: &OwnLease,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        EtcdSubnetManager::republish(self, lease, attrs).await
    }

    async fn list_leases(&self) -> Result<Vec<Claim>, SubnetError> {
        let prefix = self.subnets_prefix();
        Ok(self
            .list()
            .await?
            .entries
            .into_iter()
            .map(|e| e.claim(&prefix))
            .collect())
    }

    async fn watch_leases(&self, tx: mpsc::Sender<LeaseEvent>) {
        self.run_watch(tx).await
    }

    fn stats(&self) -> Arc<DatastoreStats> {
        self.stats.clone()
    }

    fn describe(&self, owner: &Owner) -> String {
        format!("{}{owner}", self.subnets_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_cleaned_like_path_join() {
        assert_eq!(clean_prefix("/coreos.com/network/"), "/coreos.com/network");
        assert_eq!(clean_prefix("//a//b"), "/a/b");
        assert_eq!(clean_prefix("a/b/"), "a/b");
    }
}

#[cfg(test)]
mod range_tests {
    use super::range_end;

    #[test]
    fn range_end_is_etcds_prefix_end() {
        assert_eq!(range_end(b"/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
    }
}
