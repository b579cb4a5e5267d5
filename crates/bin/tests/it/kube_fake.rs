//! The Kubernetes API fake is faithful where flannel's clients depend on it: proven with the
//! real `kubectl` (list, `get -w`, the 410 ERROR event of a watch from a compacted version,
//! `patch --subresource=status` keeping spec and merging conditions by type, `annotate k-`,
//! `get -o json`, refused tokens), over HTTPS with the fake's own CA, inside a namespace the
//! test makes.

use crate::common;

use common::{eventually, require_root, Netns, TempDir};
use flannel_kube_fake::{node, FakeApi, Kind, Options};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Api {
    fake: FakeApi,
    ns: Netns,
    _dir: TempDir,
}

fn api() -> Api {
    api_with(|_| {})
}

fn api_with(tune: impl FnOnce(&mut Options)) -> Api {
    require_root();
    let ns = Netns::new("kf");
    let dir = TempDir::new("kubefake");
    let mut o = Options::new("127.0.0.1:6443".parse().unwrap(), dir.path());
    o.netns = Some(ns.path().into());
    o.bookmark_every = Duration::from_millis(300);
    tune(&mut o);
    let fake = FakeApi::start(o).expect("start the fake");
    Api {
        fake,
        ns,
        _dir: dir,
    }
}

impl Api {
    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns.0, "kubectl", "--kubeconfig"])
            .arg(self.fake.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }
}

#[test]
fn kubectl_lists_gets_and_sees_json() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    a.fake
        .create(
            Kind::Node,
            "",
            node("node1", &["10.244.1.0/24"], "10.0.0.51", 0),
        )
        .unwrap();
    a.fake
        .create(
            Kind::Node,
            "",
            node("node2", &["10.244.2.0/24"], "10.0.0.52", 0),
        )
        .unwrap();
    let out = a.ok(&["get", "nodes"]);
    assert!(out.contains("node1") && out.contains("node2"), "{out}");
    let v: Value = serde_json::from_str(&a.ok(&["get", "node", "node2", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["podCIDR"], "10.244.2.0/24");
    assert_eq!(v["status"]["addresses"][0]["address"], "10.0.0.52");
    // Pages: kubectl asks for 500 at a time; a small page size walks `continue`.
    let out = a.ok(&["get", "nodes", "--chunk-size=1", "-o", "name"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["node/node1", "node/node2"]
    );
    let (ok, _, err) = a.kubectl(&["get", "node", "node9"]);
    assert!(!ok && err.contains("\"node9\" not found"), "{err}");
}

/// The columns of each line of `kubectl` output, split on runs of two or more spaces (so
/// "NOMINATED NODE" stays one column, as kubectl prints it).
fn columns(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// `kubectl get` prints what it prints against a real cluster: the fake serves the Table form
/// with the real printers' columns for nodes, pods and configmaps, `-o wide` included.
#[test]
fn kubectl_get_prints_the_columns_of_a_real_cluster() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    let mut n1 = node("node1", &["10.244.1.0/24"], "10.0.0.51", 0);
    n1["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
    a.fake.create(Kind::Node, "", n1).unwrap();
    let mut n2 = node("node2", &["10.244.2.0/24"], "10.0.0.52", 0);
    n2["status"]["conditions"][1]["status"] = json!("False");
    a.fake.create(Kind::Node, "", n2).unwrap();

    let out = a.ok(&["get", "nodes"]);
    let lines: Vec<Vec<String>> = out.lines().map(columns).collect();
    assert_eq!(
        lines[0],
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "{out}"
    );
    assert_eq!(lines[1][..3], ["node1", "Ready", "control-plane"], "{out}");
    assert!(
        lines[1][3].ends_with('s') && lines[1][4] == "v1.32.0",
        "{out}"
    );
    assert_eq!(lines[2][..3], ["node2", "NotReady", "<none>"], "{out}");
    let out = a.ok(&["get", "nodes", "-o", "wide"]);
    let lines: Vec<Vec<String>> = out.lines().map(columns).collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ],
        "{out}"
    );
    assert_eq!(lines[1][5..7], ["10.0.0.51", "<none>"], "{out}");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(lines[1][8], kernel.trim(), "{out}");
    // One object, and the labels kubectl takes from the rows' metadata.
    let out = a.ok(&["get", "node", "node1", "--show-labels"]);
    assert!(
        out.lines().next().unwrap().ends_with("LABELS")
            && out.contains("node-role.kubernetes.io/control-plane="),
        "{out}"
    );

    let pod = json!({"metadata": {"name": "web", "namespace": "apps"},
        "spec": {"nodeName": "node2", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.244.2.7",
                   "containerStatuses": [{"name": "c", "ready": true, "restartCount": 4,
                                          "state": {"running": {}}}]}});
    a.fake.create(Kind::Pod, "apps", pod).unwrap();
    let out = a.ok(&["get", "pods", "-A", "-o", "wide"]);
    let lines: Vec<Vec<String>> = out.lines().map(columns).collect();
    assert_eq!(
        lines[0],
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ],
        "{out}"
    );
    assert_eq!(
        lines[1][..5],
        ["apps", "web", "1/1", "Running", "4"],
        "{out}"
    );
    assert_eq!(
        lines[1][6..],
        ["10.244.2.7", "node2", "<none>", "<none>"],
        "{out}"
    );

    let cm = json!({"metadata": {"name": "kube-flannel-cfg"}, "data": {"net-conf.json": "{}", "cni-conf.json": "{}"}});
    a.fake.create(Kind::ConfigMap, "kube-flannel", cm).unwrap();
    let out = a.ok(&["-n", "kube-flannel", "get", "cm"]);
    let lines: Vec<Vec<String>> = out.lines().map(columns).collect();
    assert_eq!(lines[0], ["NAME", "DATA", "AGE"], "{out}");
    assert_eq!(lines[1][..2], ["kube-flannel-cfg", "2"], "{out}");
    // Scripts that parse JSON still get the objects themselves.
    let v: Value =
        serde_json::from_str(&a.ok(&["get", "pods", "-n", "apps", "-o", "json"])).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"][0]["status"]["podIP"], "10.244.2.7");
}

#[test]
fn kubectl_watch_sees_changes_and_a_compacted_version_gets_410() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    a.fake
        .create(
            Kind::Node,
            "",
            node("node1", &["10.244.1.0/24"], "10.0.0.51", 0),
        )
        .unwrap();
    let mut w = Command::new("ip")
        .args(["netns", "exec", &a.ns.0, "kubectl", "--kubeconfig"])
        .arg(a.fake.kubeconfig())
        .args(["get", "nodes", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("node/node1")
    );
    a.fake
        .create(
            Kind::Node,
            "",
            node("node2", &["10.244.2.0/24"], "10.0.0.52", 0),
        )
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("node/node2")
    );
    let _ = w.kill();
    let _ = w.wait();

    let rv = a.fake.resource_version() - 1;
    a.fake.compact();
    let raw = a.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes?watch=1&resourceVersion={rv}"),
    ]);
    let ev: Value = serde_json::from_str(raw.lines().next().unwrap_or("")).unwrap();
    assert_eq!(ev["type"], "ERROR", "{raw}");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(ev["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with("too old resource version"));
    // A watch from now still works, with bookmarks when asked.
    let now = a.fake.resource_version();
    let raw = a.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/nodes?watch=1&resourceVersion={now}&allowWatchBookmarks=true&timeoutSeconds=1"
        ),
    ]);
    assert!(raw.contains("\"type\":\"BOOKMARK\""), "{raw}");
}

/// A resourceVersion the server does not have yet (its storage lost history, as after a
/// restart without its objects): after waiting for it, the real API server's 504 whose cause
/// `ResourceVersionTooLarge` tells clients to list again; kubectl reports it as such.
#[test]
fn a_watch_from_a_future_resource_version_is_too_large() {
    if common::skip_without_root() {
        return;
    }
    // The real server waits 3 s for the store to reach the version, then answers 504 with
    // `Retry-After: 1`, and kubectl asks again ten times: 44 s a call. The wait is shortened
    // here, which changes nothing else of the answer.
    let wait = Duration::from_millis(300);
    let a = api_with(|o| o.too_large_wait = wait);
    let ahead = a.fake.resource_version() + 1000;
    // In the order kubectl sends them (sorted), as the fake logs them.
    let watch = format!("resourceVersion={ahead}&watch=1");
    let list = format!("resourceVersion={ahead}&resourceVersionMatch=NotOlderThan");
    let t0 = std::time::Instant::now();
    // A watch and a list from the future, side by side (each takes eleven waits and ten
    // Retry-After seconds); -v=9 shows the whole Status, as a client library reads it.
    let ((watched, watch_took), (listed, _)) = std::thread::scope(|s| {
        let timed = |q: &str| {
            let url = format!("/api/v1/nodes?{q}");
            let a = &a;
            s.spawn(move || {
                let r = a.kubectl(&["get", "--raw", &url, "-v=9"]);
                (r, t0.elapsed())
            })
        };
        let (w, l) = (timed(&watch), timed(&list));
        (w.join().unwrap(), l.join().unwrap())
    });
    for (what, (ok, out, err)) in [("watch", watched), ("list", listed)] {
        assert!(!ok, "{what}: {out}");
        assert!(
            err.contains(&format!("Too large resource version: {ahead}, current:"))
                && err.contains("ResourceVersionTooLarge")
                && err.contains("504 Gateway Timeout"),
            "{what}: {err}"
        );
    }
    // kubectl honoured the Retry-After header: ten retries, each after the server's wait.
    let tries = a
        .fake
        .requests()
        .iter()
        .filter(|r| r.query == watch && r.status == 504)
        .count();
    assert_eq!(tries, 11, "kubectl's tries of the watch");
    assert!(
        watch_took >= wait * 11 + Duration::from_secs(10),
        "the server waits for the version first, and kubectl the Retry-After second ({watch_took:?})"
    );
    // One the store reaches within the wait is served.
    let next = a.fake.resource_version() + 1;
    let fake = &a.fake;
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(wait / 2);
            fake.create(
                Kind::Node,
                "",
                node("late", &["10.244.9.0/24"], "10.0.0.59", 0),
            )
            .unwrap();
        });
        let raw = a.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes?watch=1&resourceVersion={next}&timeoutSeconds=1"),
        ]);
        assert!(!raw.contains("ERROR"), "{raw}");
    });
}

#[test]
fn kubectl_status_patch_keeps_spec_and_merges_conditions_by_type() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    a.fake
        .create(
            Kind::Node,
            "",
            node("node1", &["10.244.1.0/24"], "10.0.0.51", 0),
        )
        .unwrap();
    let patch = json!({
        "spec": {"podCIDR": "10.99.0.0/24"},
        "metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "10.0.0.51"}},
        "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"}]}
    })
    .to_string();
    a.ok(&[
        "patch",
        "node",
        "node1",
        "--subresource=status",
        "--type=strategic",
        "-p",
        &patch,
    ]);
    let v = a.fake.get(Kind::Node, "", "node1").unwrap();
    assert_eq!(v["spec"]["podCIDR"], "10.244.1.0/24", "status keeps spec");
    assert_eq!(
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"], "10.0.0.51",
        "and persists annotations"
    );
    let c = v["status"]["conditions"].as_array().unwrap();
    assert_eq!(c.len(), 2, "merged by type: {c:?}");
    assert!(c
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"));
    assert!(c
        .iter()
        .any(|c| c["type"] == "NetworkUnavailable" && c["reason"] == "FlannelIsUp"));
    // A patch of the object itself keeps status.
    a.ok(&[
        "patch",
        "node",
        "node1",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":null}}"#,
    ]);
    assert_eq!(
        a.fake.get(Kind::Node, "", "node1").unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // JSON patch too.
    a.ok(&[
        "patch",
        "node",
        "node1",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/x","value":"y"}]"#,
    ]);
    assert_eq!(
        a.fake.get(Kind::Node, "", "node1").unwrap()["metadata"]["labels"]["x"],
        "y"
    );
}

#[test]
fn kubectl_annotate_and_remove_an_annotation() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    a.fake
        .create(
            Kind::Node,
            "",
            node("node1", &["10.244.1.0/24"], "10.0.0.51", 0),
        )
        .unwrap();
    a.ok(&[
        "annotate",
        "node",
        "node1",
        "flannel.alpha.coreos.com/public-ip-overwrite=192.0.2.1",
    ]);
    let v = a.fake.get(Kind::Node, "", "node1").unwrap();
    assert_eq!(
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip-overwrite"],
        "192.0.2.1"
    );
    a.ok(&[
        "annotate",
        "node",
        "node1",
        "flannel.alpha.coreos.com/public-ip-overwrite-",
    ]);
    let v = a.fake.get(Kind::Node, "", "node1").unwrap();
    assert!(
        v["metadata"]["annotations"]
            .get("flannel.alpha.coreos.com/public-ip-overwrite")
            .is_none(),
        "{v}"
    );
    let seen = a.fake.requests();
    assert!(
        seen.iter()
            .any(|r| r.method == "PATCH"
                && r.content_type.starts_with("application/merge-patch+json")),
        "annotate sends a merge patch: {seen:?}"
    );
}

#[test]
fn a_wrong_token_is_refused_and_a_rotated_one_accepted() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    a.fake.set_tokens(vec!["new-token".into()]);
    let (ok, _, err) = a.kubectl(&["get", "nodes"]);
    // kubectl says a 401 in its version's words: "Unauthorized" (Debian's 1.20), "the server
    // has asked for the client to provide credentials" (1.32).
    let err_l = err.to_lowercase();
    assert!(
        !ok && (err_l.contains("unauthorized") || err_l.contains("provide credentials")),
        "{err}"
    );
    a.fake.set_tokens(vec![
        "new-token".into(),
        "flannel-kube-fake-admin-token".into(),
    ]);
    assert!(eventually(Duration::from_secs(5), || a.kubectl(&["get", "nodes"]).0).is_some());
    // Pods and ConfigMaps are served too (flanneld reads its own Pod; the lab its ConfigMap).
    a.fake
        .create(
            Kind::Pod,
            "kube-flannel",
            json!({"metadata":{"name":"kube-flannel-ds-x"},"spec":{"nodeName":"node1"}}),
        )
        .unwrap();
    let v: Value = serde_json::from_str(&a.ok(&[
        "get",
        "pod",
        "-n",
        "kube-flannel",
        "kube-flannel-ds-x",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(v["spec"]["nodeName"], "node1");
}

/// The fake holds what a real cluster holds: a request body over the API server's 3 MiB is
/// refused (413) without being read whole, an object over etcd's 1.5 MiB is refused as etcd
/// refuses it; one under both is stored. (A 50 MB Node used to be accepted.)
#[test]
fn objects_and_bodies_over_the_real_limits_are_refused() {
    if common::skip_without_root() {
        return;
    }
    let a = api();
    let dir = TempDir::new("kf-big");
    let create = |name: &str, pad: usize| {
        let mut n = node(name, &["10.244.9.0/24"], "10.0.0.59", 0);
        n["metadata"]["annotations"] = json!({"example.com/pad": "x".repeat(pad)});
        let f = dir.path().join(format!("{name}.json"));
        std::fs::write(&f, n.to_string()).unwrap();
        a.kubectl(&["create", "-f", &f.display().to_string()])
    };
    let (ok, _, err) = create("huge", 4 << 20);
    assert!(
        !ok && err.contains("Request entity too large: limit is 3145728"),
        "{err}"
    );
    let (ok, _, err) = create("big", 2 << 20);
    assert!(
        !ok && err.contains("etcdserver: request is too large"),
        "{err}"
    );
    let (ok, _, err) = create("fits", 1 << 20);
    assert!(ok, "{err}");
    assert_eq!(a.fake.names(Kind::Node), vec!["fits".to_string()]);
}

/// The fake's secrets are its owner's alone, as a real cluster's are: the server key, the
/// admin token and the kubeconfig holding it 0600 (they were 0644); the CA stays readable.
#[test]
fn the_fakes_secrets_are_not_world_readable() {
    if common::skip_without_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let a = api();
    let mode = |name: &str| {
        std::fs::metadata(a.fake.dir().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    for secret in ["server.key", "token", "kubeconfig"] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    assert_eq!(mode("ca.crt") & 0o044, 0o044, "the CA is public");
}

/// The kinds network policy reads, driven as a user drives them: `kubectl apply -f` (client-
/// and server-side) of a NetworkPolicy, `kubectl label ns|pod`, `get networkpolicy`, label
/// selectors, discovery of networking.k8s.io/v1, and a watch that sees each change.
#[test]
fn kubectl_applies_policies_and_labels_namespaces_and_pods() {
    let a = api();
    let dir = TempDir::new("netpol-yaml");
    let f = dir.path().join("policy.yaml");
    let policy = |port: u16| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-web\n  namespace: x\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: b\n    ports:\n    - port: {port}\n      protocol: TCP\n"
        )
    };
    // (`kubectl create namespace` sends protobuf, which the fake refuses with a 415 naming it.)
    let nsf = dir.path().join("ns.yaml");
    std::fs::write(
        &nsf,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n",
    )
    .unwrap();
    a.ok(&["apply", "-f", &nsf.display().to_string()]);
    std::fs::write(&f, policy(80)).unwrap();
    let out = a.ok(&["apply", "-f", &f.display().to_string()]);
    assert!(
        out.contains("networkpolicy.networking.k8s.io/allow-web created"),
        "{out}"
    );
    std::fs::write(&f, policy(8080)).unwrap();
    let out = a.ok(&["apply", "-f", &f.display().to_string()]);
    assert!(out.contains("configured"), "{out}");
    let got: Value =
        serde_json::from_str(&a.ok(&["get", "netpol", "-n", "x", "allow-web", "-o", "json"]))
            .unwrap();
    assert_eq!(
        got["spec"]["ingress"][0]["ports"][0]["port"], 8080,
        "the edit applied"
    );
    assert_eq!(got["apiVersion"], "networking.k8s.io/v1");
    let table = a.ok(&["get", "networkpolicy", "-n", "x"]);
    assert!(
        table.contains("allow-web") && table.contains("app=web"),
        "{table}"
    );
    std::fs::write(&f, policy(9090)).unwrap();
    let out = a.ok(&["apply", "--server-side", "-f", &f.display().to_string()]);
    assert!(out.contains("serverside-applied"), "{out}");
    let got = a.fake.get(Kind::NetworkPolicy, "x", "allow-web").unwrap();
    assert_eq!(got["spec"]["ingress"][0]["ports"][0]["port"], 9090);

    // Namespaces carry their name label; labels change with kubectl label and select.
    let ns = a.fake.get(Kind::Namespace, "", "x").unwrap();
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
    a.ok(&["label", "namespace", "x", "team=b"]);
    let names = a.ok(&["get", "ns", "-l", "team=b", "-o", "name"]);
    assert_eq!(names.trim(), "namespace/x");
    assert!(a
        .ok(&["get", "ns", "-l", "team in (c,d)", "-o", "name"])
        .trim()
        .is_empty());
    a.fake
        .create(Kind::Pod, "x", json!({"metadata": {"name": "a", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}}))
        .unwrap();
    let mut watch = Command::new("ip")
        .args(["netns", "exec", &a.ns.0, "kubectl", "--kubeconfig"])
        .arg(a.fake.kubeconfig())
        .args(["get", "pods", "-n", "x", "-w", "-o", "name", "-l", "app=db"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    a.ok(&["label", "pod", "-n", "x", "a", "app=db", "--overwrite"]);
    let mut line = String::new();
    BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        line.trim(),
        "pod/a",
        "the relabelled pod enters the selector's watch"
    );
    a.ok(&["delete", "networkpolicy", "-n", "x", "allow-web"]);
    assert!(a.fake.get(Kind::NetworkPolicy, "x", "allow-web").is_err());
    let groups = a.ok(&[
        "api-resources",
        "--api-group=networking.k8s.io",
        "-o",
        "name",
    ]);
    assert!(
        groups.contains("networkpolicies.networking.k8s.io"),
        "{groups}"
    );
}
