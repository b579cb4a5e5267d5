//! The Table form of lists, objects and watch events (`Accept: application/json;as=Table;
//! v=v1;g=meta.k8s.io`), which `kubectl get` asks for: the columns are the ones the real API
//! server's printers define for each kind (pkg/printers/internalversion in Kubernetes), with
//! their priorities (1 = only with `-o wide`), so kubectl prints what it prints against a real
//! cluster. Pure: objects in, a `Table` out, the clock passed in.

use serde_json::{json, Map, Value};

/// Whether an `Accept` header asks for the Table form (kubectl lists it first, then plain JSON).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.split(';').any(|p| p.trim() == "as=Table"))
}

/// What each row carries as `object` (the `includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    /// The real server's default is `PartialObjectMetadata`: kubectl reads the namespace and
    /// the labels (`-A`, `--show-labels`, `-L`) from it.
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// One column: its name as the server sends it (kubectl upper-cases it), type, and whether it
/// shows only with `-o wide`.
struct Column {
    name: &'static str,
    ty: &'static str,
    wide: bool,
    description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        wide: false,
        description,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        wide: true,
        description,
    }
}

const NAME: Column = col("Name", "string", "Name must be unique within a namespace.");
const AGE: Column = col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Node" => vec![
            NAME,
            col("Status", "string", "The status of the node"),
            col("Roles", "string", "The roles of the node"),
            AGE,
            col("Version", "string", "Kubelet Version reported by the node."),
            wide("Internal-IP", "string", "List of internal IPs in the node."),
            wide("External-IP", "string", "List of external IPs in the node."),
            wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        "Pod" => vec![
            NAME,
            col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", "The aggregate status of the containers in this pod."),
            col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            AGE,
            wide("IP", "string", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            wide("Node", "string", "NodeName is a request to schedule this pod onto a specific node."),
            wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node."),
            wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        "Namespace" => vec![
            NAME,
            col("Status", "string", "The status of the namespace"),
            AGE,
        ],
        "ConfigMap" => vec![
            NAME,
            col("Data", "integer", "Data contains the configuration data."),
            AGE,
        ],
        "NetworkPolicy" => vec![
            NAME,
            col("Pod-Selector", "string", "Selects the pods to which this NetworkPolicy object applies."),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// A Table of `items` (all of one kind) as of `now` (Unix seconds); `rv` and `cont` are the
/// list's resourceVersion and continue token.
pub fn table(
    kind: &str,
    items: &[&Value],
    include: Include,
    now: i64,
    rv: &str,
    cont: Option<&str>,
) -> Value {
    let cols = columns(kind);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" },
                   "description": c.description, "priority": u8::from(c.wide)})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells(kind, o, now)));
            match include {
                Include::None => {}
                Include::Object => {
                    row.insert("object".into(), (*o).clone());
                }
                Include::Metadata => {
                    row.insert(
                        "object".into(),
                        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": o["metadata"]}),
                    );
                }
            }
            Value::Object(row)
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
           "columnDefinitions": definitions, "rows": rows})
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn or_none(v: &str) -> Value {
    json!(if v.is_empty() { "<none>" } else { v })
}

fn or_unknown(v: &str) -> Value {
    json!(if v.is_empty() { "<unknown>" } else { v })
}

fn age(o: &Value, now: i64) -> Value {
    match flannel_core::time::parse_rfc3339(s(&o["metadata"]["creationTimestamp"])) {
        Some(t) => json!(human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn cells(kind: &str, o: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(&o["metadata"]["name"]));
    match kind {
        "Node" => node_cells(o, name, now),
        "Pod" => pod_cells(o, name, now),
        "Namespace" => vec![name, json!(s(&o["status"]["phase"])), age(o, now)],
        "ConfigMap" => {
            let len = |f: &str| o[f].as_object().map_or(0, Map::len);
            vec![name, json!(len("data") + len("binaryData")), age(o, now)]
        }
        "NetworkPolicy" => vec![
            name,
            json!(selector_string(&o["spec"]["podSelector"])),
            age(o, now),
        ],
        _ => vec![name, age(o, now)],
    }
}

fn node_cells(o: &Value, name: Value, now: i64) -> Vec<Value> {
    let status = &o["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let mut state = match ready.map(|c| s(&c["status"])) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o["spec"]["unschedulable"] == true {
        state.push_str(",SchedulingDisabled");
    }
    // Roles: `node-role.kubernetes.io/<role>` labels, and the older `kubernetes.io/role`.
    let mut roles: Vec<String> = o["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(r) if !r.is_empty() => Some(r.to_string()),
                    _ if k == "kubernetes.io/role" && !s(v).is_empty() => Some(s(v).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    let address = |ty: &str| {
        status["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["type"] == ty))
            .map(|a| s(&a["address"]).to_string())
            .unwrap_or_default()
    };
    let info = &status["nodeInfo"];
    vec![
        name,
        json!(state),
        or_none(&roles.join(",")),
        age(o, now),
        json!(s(&info["kubeletVersion"])),
        or_none(&address("InternalIP")),
        or_none(&address("ExternalIP")),
        or_unknown(s(&info["osImage"])),
        or_unknown(s(&info["kernelVersion"])),
        or_unknown(s(&info["containerRuntimeVersion"])),
    ]
}

fn pod_cells(o: &Value, name: Value, now: i64) -> Vec<Value> {
    let (spec, status) = (&o["spec"], &o["status"]);
    let total = spec["containers"].as_array().map_or(0, Vec::len);
    let statuses = status["containerStatuses"].as_array();
    let ready = statuses.map_or(0, |cs| cs.iter().filter(|c| c["ready"] == true).count());
    let restarts: u64 = statuses.map_or(0, |cs| {
        cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
    });
    // The reason: the pod's, else a container's waiting or terminated reason, else the phase.
    let mut reason = match s(&status["reason"]) {
        "" => s(&status["phase"]).to_string(),
        r => r.to_string(),
    };
    for c in statuses.into_iter().flatten() {
        let st = &c["state"];
        let r = match (s(&st["waiting"]["reason"]), s(&st["terminated"]["reason"])) {
            ("", "") => continue,
            ("", t) => t,
            (w, _) => w,
        };
        reason = r.to_string();
    }
    if !o["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    let gates = spec["readinessGates"].as_array().map_or(0, Vec::len);
    let gates = if gates == 0 {
        "<none>".to_string()
    } else {
        let met = status["conditions"].as_array().map_or(0, |cs| {
            spec["readinessGates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| {
                    cs.iter()
                        .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                })
                .count()
        });
        format!("{met}/{gates}")
    };
    vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        age(o, now),
        or_none(s(&status["podIP"])),
        or_none(s(&spec["nodeName"])),
        or_none(s(&status["nominatedNodeName"])),
        json!(gates),
    ]
}

/// A label selector as kubectl prints it: `app=web,tier in (a,b),!debug`; `<none>` when empty
/// (an empty selector selects every pod of the namespace).
pub fn selector_string(sel: &Value) -> String {
    // (key, requirement): sorted by key, as the selector's String() prints them.
    let mut parts: Vec<(&str, String)> = sel["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str(), format!("{k}={}", s(v))))
                .collect()
        })
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = s(&e["key"]);
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().map(s).collect())
            .unwrap_or_default();
        values.sort_unstable();
        let req = match s(&e["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op} ({})", values.join(",")),
        };
        parts.push((key, req));
    }
    parts.sort();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How the real server prints an age (apimachinery's `duration.HumanDuration`): exact at
/// first, coarser as it grows: `45s`, `5m3s`, `47m`, `5h2m`, `20h`, `3d4h`, `40d`, `2y10d`, `9y`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_as_the_api_server_prints_them() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (303, "5m3s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 120, "5h2m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (2 * 86400, "2d"),
            (40 * 86400, "40d"),
            (2 * 365 * 86400 + 10 * 86400, "2y10d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs} s");
        }
    }

    #[test]
    fn only_a_table_first_in_accept_is_a_table_request() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(""));
        assert!(!wants_table("application/json, application/json;as=Table"));
    }

    fn cells_of(kind: &str, o: &Value, now: i64) -> Vec<Value> {
        let t = table(kind, &[o], Include::Metadata, now, "7", None);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let n = t["columnDefinitions"].as_array().unwrap().len();
        let cells = t["rows"][0]["cells"].as_array().unwrap().clone();
        assert_eq!(cells.len(), n, "a cell per column");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        cells
    }

    #[test]
    fn nodes_show_status_roles_version_and_wide_columns() {
        let t0 = flannel_core::time::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let mut n = crate::node("n1", &["10.244.1.0/24"], "10.0.0.1", 0);
        n["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        n["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "ExternalIP", "address": "203.0.113.9"}));
        let c = cells_of("Node", &n, t0 + 303);
        assert_eq!(
            c[0..5],
            [
                json!("n1"),
                json!("Ready"),
                json!("control-plane"),
                json!("5m3s"),
                json!("v1.32.0")
            ]
        );
        assert_eq!(c[5..7], [json!("10.0.0.1"), json!("203.0.113.9")]);
        n["spec"]["unschedulable"] = json!(true);
        n["status"]["conditions"][1]["status"] = json!("Unknown");
        n["metadata"]["labels"] = json!({});
        n["status"]["addresses"] = json!([]);
        let c = cells_of("Node", &n, t0);
        assert_eq!(
            c[1..3],
            [json!("NotReady,SchedulingDisabled"), json!("<none>")]
        );
        assert_eq!(c[5..7], [json!("<none>"), json!("<none>")]);
    }

    #[test]
    fn pods_show_ready_status_restarts_and_where_they_run() {
        let p = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n2", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.2.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c = cells_of("Pod", &p, 0);
        assert_eq!(c[1..4], [json!("1/2"), json!("CrashLoopBackOff"), json!(3)]);
        assert_eq!(
            c[5..9],
            [
                json!("10.244.2.5"),
                json!("n2"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let pending =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        let c = cells_of("Pod", &pending, 0);
        assert_eq!(
            c[1..5],
            [json!("0/0"), json!("Pending"), json!(0), json!("<unknown>")]
        );
    }

    #[test]
    fn namespaces_configmaps_and_network_policies() {
        let ns = json!({"metadata": {"name": "prod"}, "status": {"phase": "Active"}});
        assert_eq!(cells_of("Namespace", &ns, 0)[1], "Active");
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}});
        assert_eq!(cells_of("ConfigMap", &cm, 0)[1], 3);
        let np = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                 {"key": "debug", "operator": "DoesNotExist"}]}}});
        assert_eq!(
            cells_of("NetworkPolicy", &np, 0)[1],
            "app=web,!debug,tier in (a,b)"
        );
        let all = json!({"metadata": {"name": "all"}, "spec": {"podSelector": {}}});
        assert_eq!(cells_of("NetworkPolicy", &all, 0)[1], "<none>");
    }

    #[test]
    fn rows_carry_what_include_object_asks_for() {
        let cm = json!({"metadata": {"name": "cfg", "namespace": "x"}, "data": {}});
        let t = table("ConfigMap", &[&cm], Include::Object, 0, "1", Some("1:cfg"));
        assert_eq!(t["rows"][0]["object"], cm);
        assert_eq!(t["metadata"]["continue"], "1:cfg");
        let t = table("ConfigMap", &[&cm], Include::None, 0, "1", None);
        assert!(t["rows"][0].get("object").is_none());
    }
}
