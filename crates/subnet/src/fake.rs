//! An in-memory datastore behind [`SubnetManager`], for the daemon's tests as any user: it
//! holds the network config and every claim, hands this node its lease, renews and takes it
//! back as etcd would (a lease gone is [`SubnetError::LeaseLost`] on renewal), records every
//! request in order, and lets a test play another writer (a claim changed or deleted behind
//! the daemon's back, or our subnet taken by someone else).

use crate::{Claim, LeaseEvent, OwnLease, Owner, StoredMacs, SubnetError, SubnetManager};
use flannel_core::{Lease, LeaseAttrs, NetworkConfig};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// One request, as the daemon made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmCall {
    GetConfig,
    Acquire,
    Renew,
    Reclaim,
    Republish,
    Complete,
    List,
}

/// What the fake datastore holds; tests read and change it through [`FakeSubnetManager::with`].
pub struct FakeDatastore {
    /// The network config document (`None`: not written yet).
    pub config: Option<String>,
    /// Every claim the datastore holds, by holder.
    pub claims: BTreeMap<Owner, Lease>,
    /// This node's holder name, and the lease it is given on acquiring.
    pub own: Owner,
    pub own_lease: Lease,
    /// How long a lease lasts before it must be renewed.
    pub ttl: Duration,
    /// Another node holds our subnet now: taking it back fails.
    pub taken: bool,
    /// Kubernetes' behaviour: our lease holding another writer's value is put back.
    pub restores: bool,
    /// Every request so far, in order.
    pub calls: Vec<SmCall>,
}

/// The fake datastore; clones share state.
#[derive(Clone)]
pub struct FakeSubnetManager {
    state: Arc<Mutex<FakeDatastore>>,
    stats: Arc<crate::stats::DatastoreStats>,
}

impl FakeSubnetManager {
    /// A datastore with `config` whose answer to this node (`own`) is `lease`.
    pub fn new(config: &str, own: &str, lease: Lease) -> Self {
        Self {
            state: Arc::new(Mutex::new(FakeDatastore {
                config: Some(config.into()),
                claims: BTreeMap::new(),
                own: Owner::new(own),
                own_lease: lease,
                ttl: Duration::from_secs(86400),
                taken: false,
                restores: false,
                calls: Vec::new(),
            })),
            stats: Arc::default(),
        }
    }

    /// Reads or changes the datastore's state.
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeDatastore) -> R) -> R {
        f(&mut self.lock())
    }

    /// The requests made since the last call.
    pub fn take_calls(&self) -> Vec<SmCall> {
        std::mem::take(&mut self.lock().calls)
    }

    fn lock(&self) -> MutexGuard<'_, FakeDatastore> {
        // A test that panicked holding the lock has failed already; the state is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, c: SmCall) -> MutexGuard<'_, FakeDatastore> {
        let mut s = self.lock();
        s.calls.push(c);
        s
    }
}

impl FakeDatastore {
    fn own_lease(&self) -> OwnLease {
        OwnLease {
            owner: self.own.clone(),
            lease: self.own_lease.clone(),
            ttl: self.ttl,
            handle: Default::default(),
        }
    }

    fn lost(&self) -> SubnetError {
        SubnetError::LeaseLost {
            key: self.own.to_string(),
        }
    }
}

impl SubnetManager for FakeSubnetManager {
    fn config_location(&self) -> String {
        "fake:/config".into()
    }

    fn datastore(&self) -> String {
        "fake".into()
    }

    fn config_missing_hint(&self) -> String {
        "write the fake's config".into()
    }

    async fn get_network_config(&self) -> Result<Option<String>, SubnetError> {
        Ok(self.record(SmCall::GetConfig).config.clone())
    }

    async fn stored_vtep_macs(&self, _public_ip: Ipv4Addr) -> StoredMacs {
        StoredMacs::default()
    }

    async fn acquire_lease(
        &self,
        _config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        let mut s = self.record(SmCall::Acquire);
        s.own_lease.attrs = attrs.clone();
        let (own, lease) = (s.own.clone(), s.own_lease.clone());
        s.claims.insert(own, lease);
        Ok(s.own_lease())
    }

    async fn renew_lease(&self, _lease: &OwnLease) -> Result<OwnLease, SubnetError> {
        let s = self.record(SmCall::Renew);
        match s.claims.get(&s.own) {
            Some(l) if *l == s.own_lease => Ok(s.own_lease()),
            _ => Err(s.lost()),
        }
    }

    async fn reclaim_lease(&self, _lease: &OwnLease) -> Result<OwnLease, SubnetError> {
        let mut s = self.record(SmCall::Reclaim);
        if s.taken {
            return Err(s.lost());
        }
        let (own, lease) = (s.own.clone(), s.own_lease.clone());
        s.claims.insert(own, lease);
        Ok(s.own_lease())
    }

    async fn republish(
        &self,
        _lease: &OwnLease,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        let mut s = self.record(SmCall::Republish);
        s.own_lease.attrs = attrs.clone();
        let (own, lease) = (s.own.clone(), s.own_lease.clone());
        s.claims.insert(own, lease);
        Ok(s.own_lease())
    }

    async fn complete_lease(&self, _lease: &OwnLease) -> Result<(), SubnetError> {
        drop(self.record(SmCall::Complete));
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Claim>, SubnetError> {
        let s = self.record(SmCall::List);
        Ok(s.claims
            .iter()
            .map(|(o, l)| Claim::new(o.clone(), l.clone(), 0))
            .collect())
    }

    /// The listing, then nothing: tests hand the daemon its events themselves.
    async fn watch_leases(&self, tx: mpsc::Sender<LeaseEvent>) {
        if let Ok(l) = self.list_leases().await {
            let _ = tx.send(LeaseEvent::Snapshot(l)).await;
        }
        std::future::pending::<()>().await
    }

    fn stats(&self) -> Arc<crate::stats::DatastoreStats> {
        self.stats.clone()
    }

    fn describe(&self, owner: &Owner) -> String {
        format!("fake/{owner}")
    }

    fn restores_own_lease(&self) -> bool {
        self.lock().restores
    }
}
