//! The HTTP side of the fake: bearer-token auth, routing, and each verb answered the way the
//! real API server answers it: lists with `limit`/`continue`, watches as a chunked stream of
//! JSON lines (replay from a resourceVersion, bookmarks, a single ERROR event with 410 when the
//! history is gone, end at `timeoutSeconds`), get, create, replace, patch (object and `/status`),
//! delete, discovery. Errors are `Status` objects.

use crate::selector::LabelSelector;
use crate::store::{ApiError, Kind, PatchType, Store};
use crate::table::{self, Include};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub type Body = BoxBody<Bytes, Infallible>;

/// One request as the fake saw it, for tests that check what a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
    pub status: u16,
}

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub tokens: Mutex<Vec<String>>,
    pub bookmark_every: Duration,
    pub too_large_wait: Duration,
    pub log: Mutex<VecDeque<Logged>>,
}

/// Locks a mutex whose holder may have panicked (a test asserting inside): the data is fine.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const LOG_KEEP: usize = 2000;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap_or_default()
}

fn error(e: &ApiError) -> Response<Body> {
    full(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Self(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(p), String::new()),
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | ""))
    }
    /// `labelSelector=...`, refused as the real server refuses a malformed one.
    fn label_selector(&self) -> Result<Option<LabelSelector>, ApiError> {
        match self.get("labelSelector").filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => LabelSelector::parse(s)
                .map(Some)
                .map_err(|e| ApiError::new(400, "BadRequest", format!("labelSelector: {e}"))),
        }
    }

    /// `fieldSelector=metadata.name=X` (the only field selector clients send here).
    fn name_selector(&self) -> Option<String> {
        let f = self.get("fieldSelector")?;
        f.strip_prefix("metadata.name==")
            .or_else(|| f.strip_prefix("metadata.name="))
            .map(String::from)
    }
}

enum Target {
    Collection {
        kind: Kind,
        ns: Option<String>,
    },
    Object {
        kind: Kind,
        ns: String,
        name: String,
        status: bool,
    },
}

fn parse_path(path: &str) -> Option<Target> {
    let (group, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("", r)
    } else if let Some(r) = path.strip_prefix("/apis/networking.k8s.io/v1/") {
        ("networking.k8s.io", r)
    } else {
        return None;
    };
    let seg: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let kind_of = |s: &str| Kind::from_resource(s).filter(|k| k.group() == group);
    let cluster_kind = |s: &str| kind_of(s).filter(|k| !k.namespaced());
    let ns_kind = |s: &str| kind_of(s).filter(|k| k.namespaced());
    let object = |kind: Kind, ns: &str, name: &str, status: bool| Target::Object {
        kind,
        ns: ns.to_string(),
        name: name.to_string(),
        status,
    };
    match seg.as_slice() {
        [k] => Some(Target::Collection {
            kind: kind_of(k)?,
            ns: None,
        }),
        [k, name] => Some(object(cluster_kind(k)?, "", name, false)),
        [k, name, "status"] if cluster_kind(k).is_some() => {
            Some(object(cluster_kind(k)?, "", name, true))
        }
        ["namespaces", ns, k] => Some(Target::Collection {
            kind: ns_kind(k)?,
            ns: Some(ns.to_string()),
        }),
        ["namespaces", ns, k, name] => Some(object(ns_kind(k)?, ns, name, false)),
        ["namespaces", ns, k, name, "status"] => Some(object(ns_kind(k)?, ns, name, true)),
        _ => None,
    }
}

fn discovery(path: &str, host: &str) -> Option<Value> {
    let res = |name: &str, kind: &str, namespaced: bool, short: &[&str], verbs: &[&str]| {
        json!({"name":name,"singularName":singular(name),
               "namespaced":namespaced,"kind":kind,"verbs":verbs,"shortNames":short})
    };
    let all = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    Some(match path {
        "/version" => json!({"major":"1","minor":"32","gitVersion":"v1.32.0-flannel-kube-fake",
            "gitCommit":"0000000000000000000000000000000000000000","gitTreeState":"clean",
            "buildDate":"2026-01-01T00:00:00Z","goVersion":"go1.23","compiler":"gc","platform":"linux/amd64"}),
        "/api" => json!({"kind":"APIVersions","versions":["v1"],
            "serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":host}]}),
        "/apis" => json!({"kind":"APIGroupList","apiVersion":"v1","groups":[networking_group()]}),
        "/apis/networking.k8s.io" => {
            let mut g = networking_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        }
        "/apis/networking.k8s.io/v1" => json!({"kind":"APIResourceList","apiVersion":"v1",
            "groupVersion":"networking.k8s.io/v1","resources":[
            res("networkpolicies", "NetworkPolicy", true, &["netpol"], &all),
        ]}),
        // OpenAPI v3: only what kubectl reads to learn that the server validates fields itself
        // (the PATCH operations of each kind with a `fieldValidation` query parameter), so it
        // does not need a full schema for client-side validation.
        "/openapi/v3" => {
            json!({"paths":{"api/v1":{"serverRelativeURL":"/openapi/v3/api/v1?hash=flannel-kube-fake"},
                "apis/networking.k8s.io/v1":{"serverRelativeURL":"/openapi/v3/apis/networking.k8s.io/v1?hash=flannel-kube-fake"}}})
        }
        "/openapi/v3/apis/networking.k8s.io/v1" => {
            json!({"openapi":"3.0.0","info":{"title":"Kubernetes","version":"v1.32.0-flannel-kube-fake"},"paths":{
                "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}": {"patch": {
                    "x-kubernetes-group-version-kind": {"group": "networking.k8s.io", "version": "v1", "kind": "NetworkPolicy"},
                    "x-kubernetes-action": "patch",
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}}
                }},
            }})
        }
        "/openapi/v3/api/v1" => {
            let patch = |kind: &str| {
                json!({"patch": {
                    "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
                    "x-kubernetes-action": "patch",
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}}
                }})
            };
            json!({"openapi":"3.0.0","info":{"title":"Kubernetes","version":"v1.32.0-flannel-kube-fake"},"paths":{
                "/api/v1/nodes/{name}": patch("Node"),
                "/api/v1/namespaces/{namespace}/pods/{name}": patch("Pod"),
                "/api/v1/namespaces/{namespace}/configmaps/{name}": patch("ConfigMap"),
                "/api/v1/namespaces/{name}": patch("Namespace"),
            }})
        }
        "/api/v1" => json!({"kind":"APIResourceList","groupVersion":"v1","resources":[
            res("nodes", "Node", false, &["no"], &all),
            res("nodes/status", "Node", false, &[], &["get", "patch", "update"]),
            res("pods", "Pod", true, &["po"], &all),
            res("configmaps", "ConfigMap", true, &["cm"], &all),
            res("namespaces", "Namespace", false, &["ns"], &all),
        ]}),
        _ => return None,
    })
}

/// A resource's singular, as kubectl maps `kubectl get networkpolicy` by it.
fn singular(resource: &str) -> String {
    let base = resource.split('/').next().unwrap_or("");
    match base.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => base.trim_end_matches('s').to_string(),
    }
}

/// The one API group beside the core group.
fn networking_group() -> Value {
    let v = json!({"groupVersion":"networking.k8s.io/v1","version":"v1"});
    json!({"name":"networking.k8s.io","versions":[v.clone()],"preferredVersion":v})
}

/// Unix seconds now: the ages of a Table.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An object, or a one-row Table of it when the client asked for tables.
fn maybe_table(kind: Kind, obj: Value, as_table: Option<Include>, rv: &str) -> Value {
    match as_table {
        Some(include) => table::table(kind.name(), &[&obj], include, now_secs(), rv, None),
        None => obj,
    }
}

fn list(
    sh: &Shared,
    kind: Kind,
    ns: Option<&str>,
    q: &Query,
    as_table: Option<Include>,
) -> Response<Body> {
    // `continue` is "<rv>:<last name>": the next page starts after that name.
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (crv, after) = c.split_once(':').unwrap_or(("", c));
            (Some(crv.to_string()), Some(after.to_string()))
        }
        None => (None, None),
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0);
    let name = q.name_selector();
    let labels = match q.label_selector() {
        Ok(l) => l,
        Err(e) => return error(&e),
    };
    let keep = |n: &str, o: &Value| {
        name.as_deref().is_none_or(|want| n == want) && labels.as_ref().is_none_or(|l| l.matches(o))
    };
    let store = lock(&sh.store);
    let list_rv = list_rv.unwrap_or_else(|| store.resource_version().to_string());
    let (items, more) = store.list_page(kind, ns, after.as_deref(), limit, &keep);
    let cont = more.then(|| {
        let last = items
            .last()
            .and_then(|o| o["metadata"]["name"].as_str())
            .unwrap_or("");
        format!("{list_rv}:{last}")
    });
    if let Some(include) = as_table {
        let t = table::table(
            kind.name(),
            &items,
            include,
            now_secs(),
            &list_rv,
            cont.as_deref(),
        );
        drop(store);
        return full(StatusCode::OK, &t);
    }
    let mut meta = json!({"resourceVersion": list_rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    // The items are written straight from the store (a page of 10 KB nodes is not cloned
    // first), as the real server streams from its cache.
    let head = json!({"kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(), "metadata": meta});
    let mut body = head.to_string().into_bytes();
    body.pop(); // the closing brace; the items follow
    body.extend_from_slice(br#","items":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        // Writing a Value into memory cannot fail.
        let _ = serde_json::to_writer(&mut body, item);
    }
    body.extend_from_slice(b"]}");
    drop(store);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_default()
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": ty, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A watch as a streaming response; the events come from a task of its own.
fn watch(
    sh: Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    q: &Query,
    as_table: Option<Include>,
) -> Response<Body> {
    let start = match q.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(r) => match r.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return error(&ApiError::new(
                    400,
                    "BadRequest",
                    format!("invalid resourceVersion {r:?}"),
                ))
            }
        },
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let name = q.name_selector();
    let labels = match q.label_selector() {
        Ok(l) => l,
        Err(e) => return error(&e),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let w = WatchSpec {
        kind,
        ns,
        start,
        bookmarks,
        timeout,
        name,
        labels,
        as_table,
    };
    tokio::spawn(run_watch(sh, w, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_default()
}

/// What one watch asked for.
struct WatchSpec {
    kind: Kind,
    ns: Option<String>,
    start: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
    name: Option<String>,
    labels: Option<LabelSelector>,
    /// Events carry one-row Tables (`kubectl get -w`).
    as_table: Option<Include>,
}

async fn run_watch(sh: Arc<Shared>, w: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let WatchSpec {
        kind,
        ns,
        start,
        bookmarks,
        timeout,
        name,
        labels,
        as_table,
    } = w;
    let event = |ty: &str, rv: u64, o: &Value| match as_table {
        Some(include) => event_line(
            ty,
            &table::table(
                kind.name(),
                &[o],
                include,
                now_secs(),
                &rv.to_string(),
                None,
            ),
        ),
        None => event_line(ty, o),
    };
    let wanted = |o: &Value| {
        name.as_deref().is_none_or(|n| o["metadata"]["name"] == n)
            && labels.as_ref().is_none_or(|l| l.matches(o))
            && ns
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns)
    };
    let opened = lock(&sh.store).watch(kind, ns.as_deref(), start);
    let (initial, mut live) = match opened {
        Ok(v) => v,
        Err(e) => {
            let _ = tx.send(event_line("ERROR", &e.status())).await;
            return;
        }
    };
    let mut last = start.unwrap_or(0);
    for ev in initial {
        last = last.max(ev.rv);
        if wanted(&ev.object)
            && tx
                .send(event(ev.ty.as_str(), ev.rv, &ev.object))
                .await
                .is_err()
        {
            return;
        }
    }
    let deadline =
        tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(86400 * 365));
    let mut tick = tokio::time::interval(sh.bookmark_every);
    tick.tick().await;
    loop {
        tokio::select! {
            r = live.recv() => match r {
                Ok(ev) if ev.kind == kind && ev.rv > last => {
                    last = ev.rv;
                    if wanted(&ev.object) && tx.send(event(ev.ty.as_str(), ev.rv, &ev.object)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Too slow to keep up: end the watch; the client resumes from its last event.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick(), if bookmarks => {
                // Only when every event up to the store's version has been passed on (the store
                // publishes under its lock), so a client resuming from the bookmark misses none.
                let rv = {
                    let s = lock(&sh.store);
                    live.is_empty().then(|| s.resource_version())
                };
                if let Some(rv) = rv.filter(|rv| *rv >= last) {
                    last = rv;
                    let b = json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &b)).await.is_err() {
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "BadRequest",
            format!("the request body is not JSON: {e}"),
        )
    })
}

/// One request's parts that routing looks at.
struct Req<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    ct: &'a str,
    accept: &'a str,
    body: &'a [u8],
    host: &'a str,
}

fn route(sh: &Arc<Shared>, r: &Req) -> Response<Body> {
    let Req {
        method,
        path,
        query,
        ct,
        accept,
        body,
        host,
    } = *r;
    let q = Query::parse(query);
    if ct.contains("protobuf") && body.first().is_some_and(|b| *b != b'{') {
        // The real server takes protobuf; this fake speaks JSON only and says so, as a server
        // without a serializer for the type does (client-go then sends JSON).
        return error(&ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})"),
        ));
    }
    let as_table = table::wants_table(accept).then(|| Include::from_query(q.get("includeObject")));
    if method == Method::GET {
        if let Some(v) = discovery(path, host) {
            return full(StatusCode::OK, &v);
        }
    }
    let Some(target) = parse_path(path) else {
        return error(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    };
    let result: Result<(StatusCode, Value), ApiError> = match (method, target) {
        (&Method::GET, Target::Collection { kind, ns }) => {
            return if q.flag("watch") {
                watch(sh.clone(), kind, ns, &q, as_table)
            } else {
                list(sh, kind, ns.as_deref(), &q, as_table)
            };
        }
        (&Method::POST, Target::Collection { kind, ns }) => parse_body(body).and_then(|obj| {
            let ns = ns.or_else(|| obj["metadata"]["namespace"].as_str().map(String::from)).unwrap_or_else(|| "default".into());
            lock(&sh.store).create(kind, &ns, obj).map(|o| (StatusCode::CREATED, o))
        }),
        (&Method::GET, Target::Object { kind, ns, name, .. }) => {
            let store = lock(&sh.store);
            let rv = store.resource_version().to_string();
            store.get(kind, &ns, &name).map(|o| (StatusCode::OK, maybe_table(kind, o, as_table, &rv)))
        }
        (&Method::PUT, Target::Object { kind, ns, name, status }) => parse_body(body)
            .and_then(|obj| lock(&sh.store).replace(kind, &ns, &name, obj, status))
            .map(|o| (StatusCode::OK, o)),
        (&Method::PATCH, Target::Object { kind, ns, name, status }) if ct.starts_with("application/apply-patch+yaml") => {
            // Server-side apply: the object as the client wants it (JSON, or YAML).
            parse_body(body)
                .or_else(|_| serde_saphyr::from_str::<Value>(&String::from_utf8_lossy(body))
                    .map_err(|e| ApiError::new(400, "BadRequest", format!("the apply body is neither JSON nor YAML: {e}"))))
                .and_then(|obj| lock(&sh.store).apply(kind, &ns, &name, obj, status))
        }
        (&Method::PATCH, Target::Object { kind, ns, name, status }) => match PatchType::from_content_type(ct) {
            None => Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"))),
            Some(ty) => parse_body(body)
                .and_then(|p| lock(&sh.store).patch(kind, &ns, &name, ty, &p, status))
                .map(|o| (StatusCode::OK, o)),
        },
        (&Method::DELETE, Target::Object { kind, ns, name, .. }) => lock(&sh.store).delete(kind, &ns, &name).map(|o| (StatusCode::OK, o)),
        (m, _) => Err(ApiError::new(405, "MethodNotAllowed", format!("{m} is not supported here"))),
    };
    match result {
        Ok((code, v)) => full(code, &v),
        Err(e) => error(&e),
    }
}

/// A list or watch from a resourceVersion the store has not reached: waited for up to
/// `too_large_wait` (the real server's 3 s by default), then refused as the real server
/// refuses it (a 504 with cause `ResourceVersionTooLarge`). `None` when the request may go on.
async fn too_large(sh: &Shared, query: &str) -> Option<Response<Body>> {
    let q = Query::parse(query);
    let asked = q.get("resourceVersion")?.parse::<u64>().ok()?;
    let deadline = tokio::time::Instant::now() + sh.too_large_wait;
    loop {
        let current = lock(&sh.store).resource_version();
        if asked <= current {
            return None;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut r = error(&ApiError::too_large(asked, current));
            // As the real server sets it from the Status's retryAfterSeconds.
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request: authenticated by bearer token, routed, logged.
pub(crate) async fn handle(
    req: Request<Incoming>,
    sh: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ct = header("content-type");
    let accept = header("accept");
    let host = header("host");
    let token = header("authorization")
        .strip_prefix("Bearer ")
        .map(str::to_string)
        .unwrap_or_default();
    let authorized = !token.is_empty() && lock(&sh.tokens).contains(&token);
    // Read no more than the real server would: a larger body is refused, not buffered.
    let (body, too_large_body) =
        match http_body_util::Limited::new(req.into_body(), crate::store::MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(b) => (b.to_bytes(), false),
            Err(e) => (Bytes::new(), e.is::<http_body_util::LengthLimitError>()),
        };
    let collection = matches!(parse_path(&path), Some(Target::Collection { .. }));
    let refused = match (authorized, method == Method::GET && collection) {
        (false, _) => Some(error(&ApiError::new(401, "Unauthorized", "Unauthorized"))),
        (true, _) if too_large_body => Some(error(&ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "Request entity too large: limit is {}",
                crate::store::MAX_BODY_BYTES
            ),
        ))),
        (true, true) => too_large(&sh, &query).await,
        (true, false) => None,
    };
    let resp = refused.unwrap_or_else(|| {
        let r = Req {
            method: &method,
            path: &path,
            query: &query,
            ct: &ct,
            accept: &accept,
            body: &body,
            host: &host,
        };
        route(&sh, &r)
    });
    let mut log = lock(&sh.log);
    if log.len() >= LOG_KEEP {
        log.pop_front();
    }
    log.push_back(Logged {
        method: method.to_string(),
        path,
        query,
        content_type: ct,
        body: String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned(),
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert!(matches!(
            parse_path("/api/v1/nodes"),
            Some(Target::Collection {
                kind: Kind::Node,
                ns: None
            })
        ));
        assert!(matches!(
            parse_path("/api/v1/nodes/n1/status"),
            Some(Target::Object { status: true, .. })
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/kube-flannel/pods/p"),
            Some(Target::Object {
                kind: Kind::Pod,
                ..
            })
        ));
        assert!(parse_path("/api/v1/namespaces/x/nodes").is_none());
        assert!(parse_path("/apis/apps/v1/deployments").is_none());
        let q = Query::parse("watch=1&fieldSelector=metadata.name%3Dnode1&resourceVersion=12&allowWatchBookmarks=true");
        assert!(q.flag("watch") && q.flag("allowWatchBookmarks"));
        assert_eq!(q.name_selector().as_deref(), Some("node1"));
        assert_eq!(q.get("resourceVersion"), Some("12"));
        assert_eq!(percent_decode("a%2Fb%"), "a/b%");
    }
}
