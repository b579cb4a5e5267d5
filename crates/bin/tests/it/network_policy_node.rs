//! flanneld `--network-policy` on one node against the API fake: the table follows the
//! policies, every request flanneld sends is one the manifest's ClusterRole allows, and with
//! the flag off a table left by an earlier run is removed at start.

use crate::common;

use common::eventually;
use common::kube::{KubeNode, NODE};
use flannel_kube_fake::Kind;
use flannel_lab::manifest::objects;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn table(k: &KubeNode) -> String {
    k.node.exec(
        "sh",
        &[
            "-c",
            "nft list table inet flannel-policy 2>/dev/null || true",
        ],
    )
}

/// (verb, group, resource) the role allows.
fn cluster_role() -> Vec<(String, String, String)> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kube-flannel.yml");
    let objs = objects(&std::fs::read_to_string(p).unwrap()).unwrap();
    let role = objs
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut out = Vec::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    out.push((
                        v.as_str().unwrap().to_string(),
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// The RBAC request a REST call is: (verb, group, resource[/subresource]); `None` for the
/// paths every authenticated client may read (discovery, /version).
fn rbac_of(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let (group, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("", r)
    } else if let Some(r) = path.strip_prefix("/apis/") {
        let mut parts = r.splitn(3, '/');
        let g = parts.next()?;
        let _version = parts.next()?;
        return rbac_of(method, &format!("/api/v1/{}", parts.next()?), query)
            .map(|(v, _, res)| (v, g.to_string(), res));
    } else {
        return None;
    };
    let seg: Vec<&str> = rest.split('/').collect();
    // namespaces/<ns>/<resource>[/<name>[/<sub>]] or <resource>[/<name>[/<sub>]]
    let (res, name, sub) = match seg.as_slice() {
        ["namespaces", _, r, tail @ ..] => (*r, tail.first().copied(), tail.get(1).copied()),
        [r, tail @ ..] => (*r, tail.first().copied(), tail.get(1).copied()),
        [] => return None,
    };
    let verb = match (method, name.is_some()) {
        ("GET", false) if query.contains("watch=true") || query.contains("watch=1") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    let res = match sub {
        Some(s) => format!("{res}/{s}"),
        None => res.to_string(),
    };
    Some((verb.to_string(), group.to_string(), res))
}

#[test]
fn the_table_follows_policies_and_every_request_is_one_the_cluster_role_allows() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("np", &[common::kube::POD_CIDR]);
    k.api
        .create(Kind::Namespace, "", json!({"metadata": {"name": "x"}}))
        .unwrap();
    k.api
        .create(Kind::Pod, "x", json!({"metadata": {"name": "a", "labels": {"app": "web"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}]}}))
        .unwrap();
    k.api
        .create(
            Kind::NetworkPolicy,
            "x",
            json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}),
        )
        .unwrap();
    // br_netfilter off in this node: flanneld says so at start.
    k.node
        .exec("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    // Default resync (5 s): a hand edit must come back through notifications.
    k.start(&["--network-policy"]);
    k.node.wait_ready();
    eventually(T, || table(&k).contains("chain pod-in.x.a")).expect("x/a isolated in the table");
    let t = table(&k);
    assert!(t.contains("10.244.0.5 : jump pod-in.x.a"), "{t}");
    assert!(
        k.node
            .log()
            .contains("net.bridge.bridge-nf-call-iptables is \"0\", not 1"),
        "{}",
        k.node.log()
    );
    k.node
        .exec("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"]);

    // A policy the API accepted but we cannot read in part: its pods are isolated, the part
    // allows nothing, one line names the policy and the part.
    k.api
        .create(
            Kind::Pod,
            "x",
            json!({"metadata": {"name": "b", "labels": {"app": "db"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.6"}}),
        )
        .unwrap();
    k.api
        .create(
            Kind::NetworkPolicy,
            "x",
            json!({"metadata": {"name": "bad"}, "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.300.0.0/16"}}]}]}}),
        )
        .unwrap();
    eventually(T, || table(&k).contains("chain pod-in.x.b"))
        .expect("x/b isolated by the unreadable policy");
    eventually(T, || {
        k.node.log().contains(
            "networkpolicy x/bad: spec.ingress[0].from[0].ipBlock.cidr: \"10.300.0.0/16\"",
        )
    })
    .unwrap_or_else(|| panic!("no line names the policy: {}", k.node.log()));
    let chain = k.node.exec(
        "nft",
        &["list", "chain", "inet", "flannel-policy", "in.x.bad"],
    );
    assert!(
        !chain.contains("accept"),
        "the unreadable peer allows nothing: {chain}"
    );
    k.api.delete(Kind::NetworkPolicy, "x", "bad").unwrap();

    // A change is a difference: the base chains are not rewritten (their rules keep their
    // handles) when a policy changes; a map element deleted by hand comes back.
    let handles = |chain: &str| {
        k.node.exec(
            "nft",
            &["-a", "list", "chain", "inet", "flannel-policy", chain],
        )
    };
    let before = handles("ingress");
    let repairs = || {
        k.node
            .metrics_page()
            .lines()
            .find_map(|l| l.strip_prefix("flannel_repairs_total{kind=\"policy\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the policy repairs counter")
    };
    let repairs0 = repairs();
    let del = "nft delete element inet flannel-policy pods-in4 { 10.244.0.5 }";
    k.node.exec("sh", &["-c", del]);
    eventually(Duration::from_secs(1), || {
        table(&k).contains("10.244.0.5 : jump pod-in.x.a")
    })
    .expect("the element put back within a second (the resync is 5 s)");
    assert_eq!(
        handles("ingress"),
        before,
        "the ingress chain was not rewritten"
    );
    eventually(T, || repairs() > repairs0).expect("the repair counted");
    k.node
        .exec("nft", &["delete", "table", "inet", "flannel-policy"]);
    eventually(Duration::from_secs(1), || {
        table(&k).contains("10.244.0.5 : jump pod-in.x.a")
    })
    .expect("the whole table put back within a second");
    // A live edit: the policy now selects nothing on this node.
    k.api
        .patch(
            Kind::NetworkPolicy,
            "x",
            "deny",
            flannel_kube_fake::PatchType::Merge,
            &json!({"spec": {"podSelector": {"matchLabels": {"app": "db"}}}}),
            false,
        )
        .unwrap();
    eventually(T, || !table(&k).contains("pod-in.x.a")).expect("the edit took x/a out");

    let allowed = cluster_role();
    let mut seen = std::collections::BTreeSet::new();
    for r in k.api.requests() {
        let Some(req) = rbac_of(&r.method, &r.path, &r.query) else {
            continue;
        };
        assert!(
            allowed.contains(&req),
            "flanneld sent {} {}?{} = {req:?}, which the ClusterRole does not allow",
            r.method,
            r.path,
            r.query
        );
        seen.insert(req);
    }
    for want in [
        ("watch", "networking.k8s.io", "networkpolicies"),
        ("list", "", "namespaces"),
        ("watch", "", "pods"),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(seen.contains(&want), "{want:?} never sent: {seen:?}");
    }

    // A restart with the flag: the table stays while flanneld is down and is diffed, not
    // rebuilt, at start (the base chain's rules keep their handles; no moment without rules).
    let listing = |k: &KubeNode| {
        k.node.exec(
            "nft",
            &["-a", "list", "chain", "inet", "flannel-policy", "ingress"],
        )
    };
    let kept = listing(&k);
    k.node.stop();
    assert_eq!(listing(&k), kept, "kept as it was while flanneld is down");
    k.start(&["--network-policy"]);
    k.node.wait_ready();
    eventually(T, || {
        k.node
            .log()
            .matches("pods, namespaces and networkpolicies listed; enforcing")
            .count()
            == 2
    })
    .expect("the restarted flanneld enforcing");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listing(&k), kept, "diffed at start, not rebuilt");

    // The flag off: the table from the run before goes at start.
    k.node.stop();
    assert!(
        table(&k).contains("table inet flannel-policy"),
        "kept while flanneld is down"
    );
    k.start(&[]);
    k.node.wait_ready();
    assert_eq!(
        table(&k).trim(),
        "",
        "removed at start without --network-policy"
    );
    assert!(k
        .node
        .log()
        .contains("removed the network policy table an earlier run left"));
}

#[test]
fn the_request_mapping_is_the_one_rbac_uses() {
    let q = |m: &str, p: &str, q: &str| rbac_of(m, p, q).map(|(a, b, c)| format!("{a} {b} {c}"));
    assert_eq!(
        q("GET", "/api/v1/pods", "watch=true&resourceVersion=5").as_deref(),
        Some("watch  pods")
    );
    assert_eq!(
        q("GET", "/api/v1/namespaces", "limit=100").as_deref(),
        Some("list  namespaces")
    );
    assert_eq!(
        q("PATCH", "/api/v1/nodes/n1/status", "").as_deref(),
        Some("patch  nodes/status")
    );
    assert_eq!(
        q("GET", "/api/v1/namespaces/kube-flannel/pods/p", "").as_deref(),
        Some("get  pods")
    );
    assert_eq!(
        q(
            "GET",
            "/apis/networking.k8s.io/v1/networkpolicies",
            "watch=1"
        )
        .as_deref(),
        Some("watch networking.k8s.io networkpolicies")
    );
    assert_eq!(q("GET", "/version", ""), None);
    let _ = Value::Null;
}
