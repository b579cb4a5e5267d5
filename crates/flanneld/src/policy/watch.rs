//! Pods, Namespaces and NetworkPolicies from the API into the compiler's [`Cluster`], one
//! consumer per kind on the list-watch driver. A listing is gathered apart and replaces the
//! kind's objects only once complete, so a re-list (after a 410, or a watch that fell behind)
//! never shows the compiler a partial cluster.

use flannel_policy::compile::Cluster;
use flannel_policy::decode::{self, DecodeError};
use flannel_subnet::kube::source::{Consumer, Object};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tracing::warn;

/// An object as the API sent it; reduced by [`Kind::decode`] at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Raw(pub Value);

impl Object for Raw {
    fn resource_version(&self) -> Option<&str> {
        self.0["metadata"]["resourceVersion"].as_str()
    }
}

/// What the watches fill and the enforcer reads.
#[derive(Default)]
pub struct Shared {
    cluster: Mutex<Cluster>,
    /// Something changed: compile again.
    pub changed: Notify,
    /// The kernel's table changed (a notification): compare it again.
    pub kernel_changed: Notify,
}

impl Shared {
    pub fn cluster(&self) -> MutexGuard<'_, Cluster> {
        // A panic while holding it cannot leave a half-written map (inserts are whole).
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One of the three kinds.
pub trait Kind: Send + 'static {
    type Item: Send;
    const NAME: &'static str;
    fn decode(v: &Value) -> Result<Self::Item, DecodeError>;
    fn map(c: &mut Cluster) -> &mut BTreeMap<String, Self::Item>;
    /// The key of an object (`namespace/name`, or the name of a namespace).
    fn key(v: &Value) -> Option<String> {
        let m = &v["metadata"];
        let name = m["name"].as_str()?;
        Some(match m["namespace"].as_str() {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name.to_string(),
        })
    }
}

pub struct Pods;
pub struct Namespaces;
pub struct Policies;

impl Kind for Pods {
    type Item = flannel_policy::Pod;
    const NAME: &'static str = "pod";
    fn decode(v: &Value) -> Result<Self::Item, DecodeError> {
        decode::pod(v)
    }
    fn map(c: &mut Cluster) -> &mut BTreeMap<String, Self::Item> {
        &mut c.pods
    }
}

impl Kind for Namespaces {
    type Item = flannel_policy::Namespace;
    const NAME: &'static str = "namespace";
    fn decode(v: &Value) -> Result<Self::Item, DecodeError> {
        decode::namespace(v)
    }
    fn map(c: &mut Cluster) -> &mut BTreeMap<String, Self::Item> {
        &mut c.namespaces
    }
}

impl Kind for Policies {
    type Item = flannel_policy::Policy;
    const NAME: &'static str = "networkpolicy";
    fn decode(v: &Value) -> Result<Self::Item, DecodeError> {
        decode::policy(v)
    }
    fn map(c: &mut Cluster) -> &mut BTreeMap<String, Self::Item> {
        &mut c.policies
    }
}

/// Feeds one kind into [`Shared`].
pub struct Feed<K: Kind> {
    shared: Arc<Shared>,
    /// A listing being gathered.
    staging: Option<BTreeMap<String, K::Item>>,
}

impl<K: Kind> Feed<K> {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            staging: None,
        }
    }

    fn read(v: &Value) -> Option<(String, K::Item)> {
        let key = K::key(v)?;
        match K::decode(v) {
            Ok(item) => Some((key, item)),
            Err(e) => {
                // Kept as it was: a pod we cannot read must not lose its isolation.
                warn!(kind = K::NAME, object = %key, "skipped: {e}");
                None
            }
        }
    }
}

impl<K: Kind> Consumer<Raw> for Feed<K> {
    fn page(&mut self, items: Vec<Raw>) {
        let staging = self.staging.get_or_insert_with(BTreeMap::new);
        for Raw(v) in items {
            if let Some((k, item)) = Self::read(&v) {
                staging.insert(k, item);
            }
        }
    }

    fn listed(&mut self) {
        let listed = self.staging.take().unwrap_or_default();
        *K::map(&mut self.shared.cluster()) = listed;
        self.shared.changed.notify_one();
    }

    fn applied(&mut self, Raw(v): Raw) {
        if let Some((k, item)) = Self::read(&v) {
            K::map(&mut self.shared.cluster()).insert(k, item);
            self.shared.changed.notify_one();
        }
    }

    fn deleted(&mut self, Raw(v): Raw) {
        if let Some(k) = K::key(&v) {
            K::map(&mut self.shared.cluster()).remove(&k);
            self.shared.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str) -> Raw {
        Raw(json!({"metadata": {"name": name, "namespace": ns},
            "status": {"podIP": "10.244.1.2", "phase": "Running"}}))
    }

    #[test]
    fn a_relisting_replaces_the_kind_only_when_complete() {
        let shared = Arc::new(Shared::default());
        let mut f = Feed::<Pods>::new(shared.clone());
        f.page(vec![pod("x", "a"), pod("x", "b")]);
        assert!(
            shared.cluster().pods.is_empty(),
            "nothing before the listing ends"
        );
        f.listed();
        assert_eq!(shared.cluster().pods.len(), 2);
        // A re-list after a 410: the first page alone must not drop x/b.
        f.page(vec![pod("x", "a")]);
        assert_eq!(
            shared.cluster().pods.len(),
            2,
            "the old view stays while re-listing"
        );
        f.page(vec![pod("x", "c")]);
        f.listed();
        let keys: Vec<String> = shared.cluster().pods.keys().cloned().collect();
        assert_eq!(keys, ["x/a", "x/c"]);
        f.deleted(pod("x", "a"));
        f.applied(pod("y", "d"));
        let keys: Vec<String> = shared.cluster().pods.keys().cloned().collect();
        assert_eq!(keys, ["x/c", "y/d"]);
    }

    #[test]
    fn an_unreadable_object_keeps_its_last_state() {
        let shared = Arc::new(Shared::default());
        let mut f = Feed::<Pods>::new(shared.clone());
        f.page(vec![pod("x", "a")]);
        f.listed();
        f.applied(Raw(
            json!({"metadata": {"name": "a", "namespace": "x", "labels": {"k": 5}}}),
        ));
        assert_eq!(
            shared.cluster().pods["x/a"].ips.len(),
            1,
            "the last good pod stays"
        );
        let mut ns = Feed::<Namespaces>::new(shared.clone());
        ns.page(vec![Raw(
            json!({"metadata": {"name": "x", "labels": {"team": "a"}}}),
        )]);
        ns.listed();
        assert_eq!(shared.cluster().namespaces["x"].labels["team"], "a");
    }
}
