//! The objects of the fake API server and their history, as the API server keeps them: one
//! resourceVersion counter for everything, every change an event in a history that watches
//! replay from a resourceVersion, and a compaction point below which a watch gets 410 Gone.
//! Live events fan out on a broadcast channel.

use crate::patch::{json_patch, merge_patch, strategic_merge_patch};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use tokio::sync::broadcast;

/// The kinds of objects served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Pod,
    ConfigMap,
    Namespace,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Node,
        Kind::Pod,
        Kind::ConfigMap,
        Kind::Namespace,
        Kind::NetworkPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }

    /// The resource's plural, as in paths and RBAC rules.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::ConfigMap => "configmaps",
            Kind::Namespace => "namespaces",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    /// The API group (`""` is the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io",
            _ => "",
        }
    }

    /// `v1`, or `<group>/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    pub fn from_resource(r: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.resource() == r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub ty: EventType,
    pub object: Value,
}

/// The largest object the store keeps (etcd's default request limit).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// The largest request body the server reads (the real API server's `MaxRequestBodyBytes`).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// An API error, returned as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{}s \"{name}\" not found", kind.name().to_lowercase()),
        )
    }

    /// A resourceVersion newer than the store's (the API server's storage lost history, or a
    /// client came from another cluster): the real server's 504 after waiting for it
    /// (`NewTooLargeResourceVersionError`), whose cause tells clients to list again.
    pub fn too_large(asked: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {asked}, current: {current}"),
        )
    }

    pub fn status(&self) -> Value {
        let mut v = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":self.message,"reason":self.reason,"code":self.code});
        if self.code == 504 && self.message.starts_with("Too large resource version") {
            v["details"] = json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1
            });
        }
        v
    }
}

/// Patch types by content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            _ => None,
        }
    }
}

type Key = (Kind, String, String);

pub struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    /// At most this many events are kept; older ones are compacted away.
    max_history: usize,
    live: broadcast::Sender<Event>,
}

fn now() -> String {
    flannel_core::time::now_rfc3339()
}

impl Default for Store {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl Store {
    pub fn new(max_history: usize) -> Self {
        Self {
            rv: 1000,
            uid: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest: 1000,
            max_history: max_history.max(1),
            live: broadcast::channel(65536).0,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// How many events of history the store keeps.
    pub fn max_history(&self) -> usize {
        self.max_history
    }

    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    fn key(kind: Kind, ns: &str, name: &str) -> Key {
        let ns = if kind.namespaced() { ns } else { "" };
        (kind, ns.to_string(), name.to_string())
    }

    fn record(&mut self, kind: Kind, ty: EventType, object: Value) {
        let ev = Event {
            rv: self.rv,
            kind,
            ty,
            object,
        };
        let _ = self.live.send(ev.clone());
        self.history.push_back(ev);
        while self.history.len() > self.max_history {
            if let Some(e) = self.history.pop_front() {
                self.oldest = e.rv;
            }
        }
    }

    /// An object etcd would refuse (its default `--max-request-bytes`, 1.5 MiB): the real API
    /// server passes etcd's refusal on.
    fn check_size(obj: &Value) -> Result<(), ApiError> {
        let size = serde_json::to_vec(obj).map_or(0, |v| v.len());
        if size > MAX_OBJECT_BYTES {
            return Err(ApiError::new(
                500,
                "InternalError",
                "etcdserver: request is too large",
            ));
        }
        Ok(())
    }

    /// Stamps a stored object: resourceVersion, and on creation uid and creationTimestamp.
    fn stamp(&mut self, obj: &mut Value, kind: Kind, ns: &str, created: bool) {
        self.rv += 1;
        let rv = self.rv.to_string();
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let m = &mut obj["metadata"];
        m["resourceVersion"] = json!(rv);
        if kind.namespaced() {
            m["namespace"] = json!(ns);
        }
        if created {
            self.uid += 1;
            m["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
            m["creationTimestamp"] = json!(now());
        }
        obj["kind"] = json!(kind.name());
        obj["apiVersion"] = json!(kind.api_version());
        if kind == Kind::Namespace {
            // The API server labels every namespace with its name (and keeps it so).
            let name = obj["metadata"]["name"].clone();
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if !obj["status"].is_object() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
    }

    pub fn create(&mut self, kind: Kind, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?
            .to_string();
        let key = Self::key(kind, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}s \"{name}\" already exists", kind.name().to_lowercase()),
            ));
        }
        Self::check_size(&obj)?;
        self.stamp(&mut obj, kind, ns, true);
        self.objects.insert(key, obj.clone());
        self.record(kind, EventType::Added, obj.clone());
        Ok(obj)
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(kind, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Every object of a kind (in one namespace, or all when `ns` is `None`), sorted by name.
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, n, _), _)| {
                *k == kind && ns.is_none_or(|ns| !kind.namespaced() || n == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The names of every object of a kind (without copying the objects).
    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.objects
            .keys()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    /// One page of a list: up to `limit` objects (all when 0) after the name `after`, sorted by
    /// name, and whether more follow. Only the page is copied.
    pub fn list_page(
        &self,
        kind: Kind,
        ns: Option<&str>,
        after: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&str, &Value) -> bool,
    ) -> (Vec<&Value>, bool) {
        let mut out = Vec::new();
        let mut more = false;
        for ((k, n, obj_name), v) in &self.objects {
            if *k != kind || ns.is_some_and(|ns| kind.namespaced() && n != ns) {
                continue;
            }
            if after.is_some_and(|a| obj_name.as_str() <= a) || !keep(obj_name, v) {
                continue;
            }
            if limit > 0 && out.len() == limit {
                more = true;
                break;
            }
            out.push(v);
        }
        (out, more)
    }

    /// Writes `new` over the object, as the main resource (`status` kept) or the `status`
    /// subresource (`spec` kept; metadata changes persist, as the real server does for nodes).
    fn write(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut new: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let key = Self::key(kind, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let keep = if status { "spec" } else { "status" };
        match old.get(keep) {
            Some(v) => new[keep] = v.clone(),
            None => {
                if let Value::Object(m) = &mut new {
                    m.remove(keep);
                }
            }
        }
        // Identity cannot change.
        for f in ["name", "uid", "creationTimestamp", "namespace"] {
            if let Some(v) = old["metadata"].get(f) {
                new["metadata"][f] = v.clone();
            }
        }
        if new == old {
            return Ok(old); // a no-op write changes nothing, not even the resourceVersion
        }
        Self::check_size(&new)?;
        self.stamp(&mut new, kind, ns, false);
        self.objects.insert(key, new.clone());
        self.record(kind, EventType::Modified, new.clone());
        Ok(new)
    }

    pub fn replace(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        obj: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
            let current = self.get(kind, ns, name)?;
            if current["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {}s \"{name}\": the object has been modified; please apply your changes to the latest version and try again", kind.name().to_lowercase()),
                ));
            }
        }
        self.write(kind, ns, name, obj, status)
    }

    pub fn patch(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        ty: PatchType,
        patch: &Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let mut obj = self.get(kind, ns, name)?;
        let bad = |e: crate::patch::PatchError| ApiError::new(422, "Invalid", e.0);
        match ty {
            PatchType::Merge => merge_patch(&mut obj, patch),
            PatchType::Strategic => strategic_merge_patch(&mut obj, patch).map_err(bad)?,
            PatchType::Json => json_patch(&mut obj, patch).map_err(bad)?,
        }
        self.write(kind, ns, name, obj, status)
    }

    /// Server-side apply, simplified: creates the object when missing, else merges the
    /// applied fields over it (maps merged, lists replaced). Field ownership is not kept, so
    /// a field dropped from the applied configuration stays.
    pub fn apply(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut obj: Value,
        status: bool,
    ) -> Result<(http::StatusCode, Value), ApiError> {
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        if !self.objects.contains_key(&Self::key(kind, ns, name)) {
            obj["metadata"]["name"] = json!(name);
            return self
                .create(kind, ns, obj)
                .map(|o| (http::StatusCode::CREATED, o));
        }
        self.patch(kind, ns, name, PatchType::Merge, &obj, status)
            .map(|o| (http::StatusCode::OK, o))
    }

    pub fn delete(&mut self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut obj = self
            .objects
            .remove(&Self::key(kind, ns, name))
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind, EventType::Deleted, obj.clone());
        Ok(obj)
    }

    /// Every object with its kind and namespace, and the resourceVersion: what survives a
    /// restart (the history does not).
    pub fn snapshot(&self) -> Value {
        let objects: Vec<Value> = self
            .objects
            .iter()
            .map(|((k, ns, _), o)| json!({"kind": k.name(), "namespace": ns, "object": o}))
            .collect();
        json!({"resourceVersion": self.rv, "uid": self.uid, "objects": objects})
    }

    /// Loads a [`Store::snapshot`]: the objects as they were, versions going on from there,
    /// no history (a watch from an older version gets 410).
    pub fn restore(&mut self, snap: &Value) -> Result<usize, ApiError> {
        let bad = |m: &str| ApiError::new(400, "BadRequest", format!("state file: {m}"));
        self.rv = snap["resourceVersion"]
            .as_u64()
            .ok_or_else(|| bad("no resourceVersion"))?;
        self.uid = snap["uid"].as_u64().unwrap_or(0);
        self.oldest = self.rv;
        self.history.clear();
        let mut n = 0;
        for e in snap["objects"]
            .as_array()
            .ok_or_else(|| bad("no objects"))?
        {
            let name_of = e["kind"].as_str();
            let Some(kind) = Kind::ALL.into_iter().find(|k| Some(k.name()) == name_of) else {
                return Err(bad(&format!("unknown kind {name_of:?}")));
            };
            let ns = e["namespace"].as_str().unwrap_or("");
            let name = e["object"]["metadata"]["name"]
                .as_str()
                .ok_or_else(|| bad("object without name"))?;
            self.objects
                .insert(Self::key(kind, ns, name), e["object"].clone());
            n += 1;
        }
        Ok(n)
    }

    /// Forgets the history: watches from any earlier resourceVersion get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }

    /// Replays the events of `kind` after `rv` and subscribes to live ones (which may repeat
    /// replayed ones: the caller skips events at or below the last resourceVersion it sent).
    /// `None` starts with a synthetic ADDED for every current object. 410 when `rv` is older
    /// than the history.
    pub fn watch(
        &self,
        kind: Kind,
        ns: Option<&str>,
        rv: Option<u64>,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), ApiError> {
        let rx = self.live.subscribe();
        let start = match rv {
            None => {
                let added = self
                    .list(kind, ns)
                    .into_iter()
                    .map(|o| Event {
                        rv: self.rv,
                        kind,
                        ty: EventType::Added,
                        object: o,
                    })
                    .collect();
                return Ok((added, rx));
            }
            Some(r) => r,
        };
        if start < self.oldest {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {start} ({})", self.oldest),
            ));
        }
        let replay = self
            .history
            .iter()
            .filter(|e| e.rv > start && e.kind == kind)
            .filter(|e| ns.is_none_or(|ns| e.object["metadata"]["namespace"].as_str() == Some(ns)))
            .cloned()
            .collect();
        Ok((replay, rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"metadata":{"name":name},"spec":{"podCIDR":"10.244.1.0/24"},"status":{"conditions":[]}})
    }

    #[test]
    fn resource_versions_history_and_compaction() {
        let mut s = Store::default();
        let a = s.create(Kind::Node, "", node("a")).unwrap();
        let rv_a: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        s.create(Kind::Node, "", node("b")).unwrap();
        s.patch(
            Kind::Node,
            "",
            "a",
            PatchType::Merge,
            &json!({"metadata":{"annotations":{"x":"1"}}}),
            false,
        )
        .unwrap();
        let (replay, _) = s.watch(Kind::Node, None, Some(rv_a)).unwrap();
        let seen: Vec<(&str, &str)> = replay
            .iter()
            .map(|e| {
                (
                    e.ty.as_str(),
                    e.object["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(seen, [("ADDED", "b"), ("MODIFIED", "a")]);
        assert_eq!(s.create(Kind::Node, "", node("a")).unwrap_err().code, 409);
        s.compact();
        let e = s.watch(Kind::Node, None, Some(rv_a)).unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        assert!(e.message.starts_with("too old resource version"));
        let (added, _) = s.watch(Kind::Node, None, None).unwrap();
        assert_eq!(added.len(), 2);
    }

    #[test]
    fn status_keeps_spec_and_main_resource_keeps_status() {
        let mut s = Store::default();
        s.create(Kind::Node, "", node("a")).unwrap();
        let o = s
            .patch(
                Kind::Node,
                "",
                "a",
                PatchType::Strategic,
                &json!({"metadata":{"annotations":{"f":"1"}},"spec":{"podCIDR":"x"},"status":{"conditions":[{"type":"NetworkUnavailable","status":"False"}]}}),
                true,
            )
            .unwrap();
        assert_eq!(
            o["spec"]["podCIDR"], "10.244.1.0/24",
            "status subresource keeps spec"
        );
        assert_eq!(
            o["metadata"]["annotations"]["f"], "1",
            "and persists annotations"
        );
        assert_eq!(o["status"]["conditions"][0]["type"], "NetworkUnavailable");
        let o = s
            .patch(
                Kind::Node,
                "",
                "a",
                PatchType::Merge,
                &json!({"status":{"conditions":null}}),
                false,
            )
            .unwrap();
        assert_eq!(
            o["status"]["conditions"].as_array().unwrap().len(),
            1,
            "main resource keeps status"
        );
        // A no-op write keeps the resourceVersion.
        let before = s.resource_version();
        s.patch(Kind::Node, "", "a", PatchType::Merge, &json!({}), false)
            .unwrap();
        assert_eq!(s.resource_version(), before);
    }

    #[test]
    fn a_snapshot_restores_objects_but_not_history() {
        let mut s = Store::default();
        s.create(Kind::Node, "", node("a")).unwrap();
        s.create(Kind::Pod, "ns1", json!({"metadata":{"name":"p"}}))
            .unwrap();
        // Every kind the fake serves survives a restart (the lab restarts it).
        s.create(Kind::Namespace, "", json!({"metadata":{"name":"ns1"}}))
            .unwrap();
        s.create(
            Kind::NetworkPolicy,
            "ns1",
            json!({"metadata":{"name":"np"}}),
        )
        .unwrap();
        let rv = s.resource_version();
        let snap = s.snapshot();
        let mut t = Store::default();
        assert_eq!(t.restore(&snap).unwrap(), 4);
        assert!(t.get(Kind::NetworkPolicy, "ns1", "np").is_ok());
        assert_eq!(
            t.get(Kind::Namespace, "", "ns1").unwrap()["metadata"]["labels"]
                ["kubernetes.io/metadata.name"],
            "ns1"
        );
        assert_eq!(
            t.get(Kind::Pod, "ns1", "p").unwrap()["metadata"]["name"],
            "p"
        );
        assert_eq!(t.resource_version(), rv);
        assert_eq!(
            t.watch(Kind::Node, None, Some(rv - 1)).unwrap_err().code,
            410
        );
        assert!(t.watch(Kind::Node, None, Some(rv)).is_ok());
        let b = t.create(Kind::Node, "", node("b")).unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], (rv + 1).to_string());
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Store::new(3);
        for i in 0..5 {
            s.create(Kind::Node, "", node(&format!("n{i}"))).unwrap();
        }
        assert!(s.watch(Kind::Node, None, Some(1001)).is_err());
        assert!(s.watch(Kind::Node, None, Some(s.oldest())).is_ok());
    }
}
