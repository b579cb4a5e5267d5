//! flanneld with `--kube-subnet-mgr` against the Kubernetes API fake over HTTPS: its subnet is
//! its node's podCIDR, it publishes itself in annotations (a strategic-merge patch of only the
//! changed keys on `nodes/<name>/status`), marks the node's network available, and turns every
//! flannel Node into kernel state.

use crate::common;

use common::kube::{KubeNode, ANN, NODE, POD_CIDR};
use common::{eventually, http_get_in_ns};
use flannel_kube_fake::{Kind, PatchType};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn patches_of(k: &KubeNode, path: &str) -> Vec<Value> {
    k.api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .map(|r| {
            assert_eq!(r.content_type, "application/strategic-merge-patch+json");
            serde_json::from_str(&r.body).unwrap()
        })
        .collect()
}

#[test]
fn startup_publishes_annotations_on_status_and_marks_the_network_available() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("ks", &[POD_CIDR]);
    k.start(&[]);
    k.node.wait_ready();
    let env = std::fs::read_to_string(k.node.subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_SUBNET=10.244.0.1/24"), "{env}");
    assert!(env.contains("FLANNEL_MTU=1450"), "{env}");
    // Exactly upstream's annotations, the VTEP MAC of our device in backend-data.
    let mac = k.node.exec("cat", &["/sys/class/net/flannel.1/address"]);
    assert_eq!(k.annotation("kube-subnet-manager").as_deref(), Some("true"));
    assert_eq!(k.annotation("backend-type").as_deref(), Some("vxlan"));
    assert_eq!(k.annotation("public-ip").as_deref(), Some("10.0.0.50"));
    assert_eq!(
        k.annotation("backend-data"),
        Some(format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac.trim()))
    );
    // Sent to the status subresource, as a strategic-merge patch of only our keys.
    let status = format!("/api/v1/nodes/{NODE}/status");
    let patches = patches_of(&k, &status);
    assert!(
        k.api
            .requests()
            .iter()
            .all(|r| !(r.method == "PATCH" && r.path == format!("/api/v1/nodes/{NODE}"))),
        "nothing patched outside /status"
    );
    let ann_patch = patches
        .iter()
        .find(|p| p["metadata"]["annotations"].is_object())
        .expect("an annotation patch");
    assert_eq!(
        ann_patch.as_object().unwrap().len(),
        1,
        "only metadata: {ann_patch}"
    );
    assert_eq!(
        ann_patch["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .len(),
        4
    );
    // NetworkUnavailable=False, FlannelIsUp, the kubelet's Ready condition kept.
    let cond = eventually(T, || {
        k.own()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| {
                c["type"] == "NetworkUnavailable"
                    && c["status"] == "False"
                    && c["reason"] == "FlannelIsUp"
                    && c["message"] == "Flannel is running on this node"
            })
    });
    assert!(cond.is_some(), "{}", k.own());
    assert!(k.own()["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready"));
    // A restart sends no annotation patch: nothing changed.
    k.node.stop();
    let before = patches_of(&k, &status).len();
    k.start(&[]);
    k.node.wait_ready();
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<Value> = patches_of(&k, &status).into_iter().skip(before).collect();
    assert!(
        after.iter().all(|p| p["metadata"]["annotations"].is_null()),
        "unchanged annotations are not sent again: {after:?}"
    );
}

#[test]
fn set_node_network_unavailable_false_leaves_the_condition_alone() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kc", &[POD_CIDR]);
    k.start(&["--set-node-network-unavailable=false"]);
    k.node.wait_ready();
    std::thread::sleep(Duration::from_millis(500));
    let c = k.own()["status"]["conditions"].clone();
    assert!(
        c.as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "True"),
        "{c}"
    );
}

#[test]
fn a_cluster_larger_than_a_list_page_is_read_whole() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kl", &[POD_CIDR]);
    // 250 peers: three pages of the node list (100 per page), read before the first reconcile.
    for i in 1..=250u32 {
        k.add_peer(
            &format!("peer{i:03}"),
            &format!("10.244.{i}.0/24"),
            &format!("10.0.{}.{}", i / 200 + 1, i % 200 + 1),
            &format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
        );
    }
    k.start(&[]);
    k.node.wait_ready();
    let routes = k.routes();
    let ours = routes
        .lines()
        .filter(|l| l.starts_with("10.244.") && l.contains("dev flannel.1"))
        .count();
    assert_eq!(ours, 250, "{routes}\n{}", k.node.log());
    // Read once: one listing, then the watch (not a second listing for it).
    let lists = k
        .api
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes" && !r.query.contains("watch"))
        .map(|r| r.query.clone())
        .collect::<Vec<_>>();
    assert_eq!(lists.len(), 3, "{lists:?}");
}

#[test]
fn peers_come_change_their_mac_and_go() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kp", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&[]);
    k.node.wait_ready();
    assert!(
        k.routes()
            .contains("10.244.1.0/24 via 10.244.1.0 dev flannel.1"),
        "{}",
        k.routes()
    );
    // Added while running.
    k.add_peer("node2", "10.244.2.0/24", "10.0.0.52", "02:00:00:00:00:52");
    let t = eventually(T, || {
        k.routes()
            .contains("10.244.2.0/24 via 10.244.2.0 dev flannel.1")
    });
    assert!(t.is_some(), "{}", k.node.log());
    let added = t;
    // A new VTEP MAC (the peer's device was recreated).
    k.annotate(
        "node2",
        "backend-data",
        Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}"#),
    );
    let t = eventually(T, || {
        k.node
            .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .contains("02:00:00:00:00:99 dst 10.0.0.52")
            && k.node
                .exec("ip", &["neigh", "show", "dev", "flannel.1"])
                .contains("10.244.2.0 lladdr 02:00:00:00:00:99")
    });
    assert!(t.is_some(), "{}", k.node.log());
    let changed = t;
    // Deleted.
    k.api.delete(Kind::Node, "", "node2").unwrap();
    let t = eventually(T, || !k.routes().contains("10.244.2.0/24"));
    assert!(t.is_some(), "{}", k.routes());
    assert!(k.routes().contains("10.244.1.0/24"));
    // For BENCHMARKS.md (`--nocapture`); polled every 50 ms.
    println!("measured: node added -> route {added:?}, VTEP MAC changed -> FDB+neigh {changed:?}, node deleted -> route gone {t:?}");
    // Heartbeats (status changes) cost nothing: no reconcile logged for them.
    let lines = k.node.log().lines().count();
    for i in 0..20 {
        k.api
            .patch(Kind::Node, "", "node1", PatchType::Strategic,
                &json!({"status":{"conditions":[{"type":"Ready","status":"True","lastHeartbeatTime":format!("2026-01-01T00:00:{i:02}Z")}]}}), true)
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        k.node.log().lines().count(),
        lines,
        "heartbeats are no news:\n{}",
        k.node.log()
    );
}

#[test]
fn foreign_and_garbage_nodes_are_ignored_with_one_line_each() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kg", &[POD_CIDR]);
    // Not a flannel node: no annotations at all.
    k.api
        .create(
            Kind::Node,
            "",
            flannel_kube_fake::node("plain", &["10.244.7.0/24"], "10.0.0.57", 0),
        )
        .unwrap();
    k.add_peer("garbage", "10.244.8.0/24", "10.0.0.58", "02:00:00:00:00:58");
    k.annotate("garbage", "public-ip", Some("not-an-ip"));
    k.add_peer(
        "outside",
        "192.168.9.0/24",
        "10.0.0.59",
        "02:00:00:00:00:59",
    );
    k.add_peer("good", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&[]);
    k.node.wait_ready();
    let t = eventually(T, || k.routes().contains("10.244.1.0/24 via"));
    assert!(t.is_some(), "{}", k.node.log());
    std::thread::sleep(Duration::from_secs(1));
    let r = k.routes();
    assert!(
        !r.contains("10.244.7.0") && !r.contains("10.244.8.0") && !r.contains("192.168.9.0"),
        "{r}"
    );
    let log = k.node.log();
    let lines = |s: &str| log.lines().filter(|l| l.contains(s)).count();
    assert_eq!(lines("skipping node garbage"), 1, "{log}");
    assert!(
        log.contains("\"not-an-ip\" is not an IPv4 address"),
        "{log}"
    );
    assert_eq!(lines("node outside"), 1, "{log}");
    assert!(
        log.contains("skipping lease node outside: lies outside the network 10.244.0.0/16"),
        "{log}"
    );
    assert_eq!(
        lines("plain"),
        0,
        "a node flannel does not manage is no news:\n{log}"
    );
}

#[test]
fn health_stays_unready_until_a_pod_cidr_is_assigned() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kn", &[]);
    k.start(&["--healthz-port=8081", "--healthz-ip=127.0.0.1"]);
    let said = eventually(T, || {
        k.node.log().contains("node node0 has no IPv4 podCIDR yet")
    });
    assert!(said.is_some(), "{}", k.node.log());
    assert!(
        k.node.log().contains("--allocate-node-cidrs"),
        "{}",
        k.node.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        http_get_in_ns(&k.node.ns.0, 8081, "/readyz").map(|r| r.0),
        Some(503)
    );
    assert!(
        !k.node.subnet_env().exists(),
        "no subnet.env before the podCIDR"
    );
    assert!(k.node.flanneld_running(), "no crash loop");
    assert_eq!(
        k.node.log().matches("has no IPv4 podCIDR yet").count(),
        1,
        "said once"
    );
    // kube-controller-manager allocates it.
    k.api
        .patch(
            Kind::Node,
            "",
            NODE,
            PatchType::Merge,
            &json!({"spec":{"podCIDR":POD_CIDR,"podCIDRs":[POD_CIDR]}}),
            false,
        )
        .unwrap();
    k.node.wait_ready();
    assert_eq!(
        http_get_in_ns(&k.node.ns.0, 8081, "/readyz").map(|r| r.0),
        Some(200)
    );
}

#[test]
fn a_network_that_does_not_contain_the_pod_cidr_is_upstreams_error() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kx", &["10.99.0.0/24"]);
    k.start(&[]);
    let status = k.node.wait_exit(Duration::from_secs(10));
    let log = k.node.log();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(
        log.contains("subnet \"10.244.0.0/16\" specified in the flannel net config doesn't contain \"10.99.0.0/24\" PodCIDR of the \"node0\" node"),
        "{log}"
    );
}

#[test]
fn dual_stack_pod_cidrs_give_both_subnets_and_v6_is_checked() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kd", &[POD_CIDR, "fd00:10:244::/64"]);
    std::fs::write(
        k.net_conf(),
        r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    k.start(&[]);
    k.node.wait_ready();
    let env = std::fs::read_to_string(k.node.subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_SUBNET=10.244.0.1/24"), "{env}");
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56"),
        "{env}"
    );
    assert!(
        env.contains("FLANNEL_IPV6_SUBNET=fd00:10:244::1/64"),
        "{env}"
    );
    // A v6 podCIDR outside IPv6Network is upstream's error too.
    k.node.stop();
    k.api
        .patch(
            Kind::Node,
            "",
            NODE,
            PatchType::Merge,
            &json!({"spec":{"podCIDRs":[POD_CIDR, "fd99::/64"]}}),
            false,
        )
        .unwrap();
    k.start(&[]);
    let status = k.node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", k.node.log());
    assert!(
        k.node
            .log()
            .contains("doesn't contain \"fd99::/64\" PodCIDR"),
        "{}",
        k.node.log()
    );
}

#[test]
fn node_name_from_the_pod_and_a_custom_annotation_prefix() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kq", &[POD_CIDR]);
    k.api
        .create(
            Kind::Pod,
            "kube-flannel",
            json!({"metadata":{"name":"kube-flannel-ds-abcde"},"spec":{"nodeName":NODE}}),
        )
        .unwrap();
    k.start_env(
        &["--kube-annotation-prefix=example.com/x"],
        &[
            ("POD_NAME", "kube-flannel-ds-abcde"),
            ("POD_NAMESPACE", "kube-flannel"),
        ],
    );
    k.node.wait_ready();
    let a = &k.own()["metadata"]["annotations"];
    assert_eq!(a["example.com/x-public-ip"], "10.0.0.50", "{a}");
    assert_eq!(a["example.com/x-kube-subnet-manager"], "true");
    assert!(a.get(format!("{ANN}/public-ip")).is_none());
    assert!(
        k.node
            .log()
            .contains("this node, from pod kube-flannel/kube-flannel-ds-abcde"),
        "{}",
        k.node.log()
    );
    // An invalid prefix is refused at start, with the flag named.
    k.node.stop();
    k.start(&["--kube-annotation-prefix=a/b/c"]);
    let status = k.node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(
        k.node
            .log()
            .contains("--kube-annotation-prefix \"a/b/c\": a prefix can contain at most one slash"),
        "{}",
        k.node.log()
    );
}

#[test]
fn in_cluster_config_and_a_rotated_service_account_token() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("ki", &[POD_CIDR]);
    let sa = k.start_in_cluster();
    k.node.wait_ready();
    assert!(
        k.node.log().contains("server=https://127.0.0.1:6443/"),
        "{}",
        k.node.log()
    );
    // The kubelet rotates the token; the API server accepts only the new one from now on.
    std::fs::write(sa.join("token"), "rotated-token").unwrap();
    k.api.set_tokens(vec!["rotated-token".into()]);
    // Connections end (as on an API server restart): everything is asked again, with 401s.
    k.api.restart_without_history().unwrap();
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    let t = eventually(Duration::from_secs(10), || {
        k.routes().contains("10.244.1.0/24 via")
    });
    assert!(
        t.is_some(),
        "the rotated token was not picked up:\n{}",
        k.node.log()
    );
    assert!(
        k.node.log().contains("reading them again"),
        "{}",
        k.node.log()
    );
}

#[test]
fn a_410_and_an_api_restart_without_history_lose_no_node() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kr", &[POD_CIDR]);
    k.start(&[]);
    k.node.wait_ready();
    // The API server goes away; meanwhile a node comes and the history is compacted: when it
    // is back, the watch resumes from a version older than the history (410) and re-lists.
    k.api.stop();
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.api.compact();
    k.api.resume().unwrap();
    let t = eventually(T, || k.routes().contains("10.244.1.0/24 via"));
    assert!(t.is_some(), "{}", k.node.log());
    let log = k.node.log();
    assert!(
        log.contains("the node watch cannot resume from resourceVersion"),
        "{log}"
    );
    assert!(k.node.flanneld_running());
}

/// The issue's probe: the API server restarted without its stored objects (its
/// resourceVersion went back). It answers flanneld's watch "Too large resource version";
/// flanneld lists again (said once) and catches up: a new Node gets its route, one that is
/// gone loses it, our annotations are put back on our re-created Node and its network is
/// marked available again.
#[test]
fn an_api_server_that_lost_its_objects_is_caught_up() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kl", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.add_peer("gone", "10.244.3.0/24", "10.0.0.53", "02:00:00:00:00:53");
    // Enough history that flanneld's resourceVersion stays ahead of the new store's.
    for i in 0..20 {
        k.annotate("gone", "unrelated", Some(&i.to_string()));
    }
    k.start(&["--healthz-port=8081"]);
    k.node.wait_ready();
    assert!(k.routes().contains("10.244.3.0/24 via"), "{}", k.routes());
    k.api.restart_empty().unwrap();
    // What the cluster re-creates: our Node as kubelet registers it (no annotations,
    // NetworkUnavailable=True), node1 with its flannel annotations, a new node2.
    k.api
        .create(
            Kind::Node,
            "",
            flannel_kube_fake::node(NODE, &[POD_CIDR], "10.0.0.50", 0),
        )
        .unwrap();
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.add_peer("node2", "10.244.2.0/24", "10.0.0.52", "02:00:00:00:00:52");
    let caught_up = eventually(Duration::from_secs(20), || {
        let r = k.routes();
        r.contains("10.244.2.0/24 via")
            && r.contains("10.244.1.0/24 via")
            && !r.contains("10.244.3.0/24")
            && k.annotation("kube-subnet-manager").as_deref() == Some("true")
            && network_unavailable(&k.own()) == "False"
    });
    assert!(
        caught_up.is_some(),
        "{}\n{:#}\n{}",
        k.routes(),
        k.own(),
        k.node.log()
    );
    let log = k.node.log();
    assert_eq!(
        log.matches("Too large resource version").count(),
        1,
        "said once:\n{log}"
    );
    assert_eq!(
        http_get_in_ns(&k.node.ns.0, 8081, "/readyz").map(|r| r.0),
        Some(200)
    );
    println!("measured: caught up {caught_up:?} after the API server's restart without objects");
}

fn network_unavailable(node: &Value) -> String {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "NetworkUnavailable"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

#[test]
fn the_api_away_for_30s_costs_no_cpu_and_heals() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("ka", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&[
        "--iptables-resync=1",
        "--kernel-resync=1",
        "--healthz-port=8081",
    ]);
    k.node.wait_ready();
    let pid = k.node.flanneld_pid();
    k.api.stop();
    let (took, cpu) = common::assert_quiet_outage(
        &[pid],
        Duration::from_secs(30),
        Duration::from_secs(3),
        0.05,
        |_| {
            assert!(
                k.routes().contains("10.244.1.0/24 via"),
                "kernel state kept"
            )
        },
    );
    assert!(k.node.flanneld_running());
    // "the node watch failed" or "starting the node watch failed", one per line.
    let warns = k
        .node
        .log()
        .lines()
        .filter(|l| l.contains("node watch failed"))
        .count();
    assert!(
        warns <= 3,
        "backs off quietly ({warns} warnings):\n{}",
        k.node.log()
    );
    // The watch has not moved for 30 s: /readyz and doctor say so (the data plane is fine).
    let stalled = eventually(Duration::from_secs(5), || {
        http_get_in_ns(&k.node.ns.0, 8081, "/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("not progressing"))
    });
    assert!(
        stalled.is_some(),
        "{:?}",
        http_get_in_ns(&k.node.ns.0, 8081, "/readyz")
    );
    let doctor = ctl(&k, &["doctor", "-o", "json"]);
    assert!(
        doctor.contains("flanneld cannot read its datastore (kubernetes https://127.0.0.1:6443/)")
            && doctor.contains("has not moved for"),
        "{doctor}"
    );
    k.api.resume().unwrap();
    k.add_peer("node2", "10.244.2.0/24", "10.0.0.52", "02:00:00:00:00:52");
    let back = eventually(T, || k.routes().contains("10.244.2.0/24 via"));
    assert!(
        back.is_some(),
        "a new node within 5 s of the API's return:\n{}",
        k.node.log()
    );
    let ready = eventually(T, || {
        http_get_in_ns(&k.node.ns.0, 8081, "/readyz").map(|r| r.0) == Some(200)
    });
    assert!(ready.is_some(), "ready again once the watch moves");
    let (secs, used) = (took.as_secs_f64(), cpu[0]);
    println!("measured: API away {secs:.0} s: flanneld CPU {used:.3} s, {warns} warning lines; a node added after its return routed in {back:?}");
}

#[test]
fn a_node_deleted_while_flanneld_was_down_is_gone_after_start() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kz", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&[]);
    k.node.wait_ready();
    assert!(k.routes().contains("10.244.1.0/24 via"));
    k.node.stop();
    k.api.delete(Kind::Node, "", "node1").unwrap();
    k.start(&[]);
    k.node.wait_ready();
    let gone = eventually(T, || {
        !k.routes().contains("10.244.1.0/24")
            && !k
                .node
                .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
                .contains("02:00:00:00:00:51")
    });
    assert!(gone.is_some(), "{}", k.routes());
}

#[test]
fn a_restart_with_the_device_deleted_takes_the_mac_back_from_our_annotation() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("km", &[POD_CIDR]);
    k.start(&[]);
    k.node.wait_ready();
    let mac = k
        .node
        .exec("cat", &["/sys/class/net/flannel.1/address"])
        .trim()
        .to_string();
    k.node.stop();
    k.node.exec("ip", &["link", "del", "flannel.1"]);
    k.start(&[]);
    k.node.wait_ready();
    let again = k
        .node
        .exec("cat", &["/sys/class/net/flannel.1/address"])
        .trim()
        .to_string();
    assert_eq!(again, mac, "peers keep valid neighbour and FDB entries");
    assert!(k.annotation("backend-data").unwrap().contains(&mac));
}

#[test]
fn our_annotations_changed_by_someone_are_put_back() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kb", &[POD_CIDR]);
    k.start(&[]);
    k.node.wait_ready();
    let data = k.annotation("backend-data").unwrap();
    k.annotate(
        NODE,
        "backend-data",
        Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}"#),
    );
    let back = eventually(T, || {
        k.annotation("backend-data").as_deref() == Some(data.as_str())
    });
    assert!(back.is_some(), "{}", k.node.log());
    k.annotate(NODE, "kube-subnet-manager", None);
    let back = eventually(T, || {
        k.annotation("kube-subnet-manager").as_deref() == Some("true")
    });
    assert!(back.is_some(), "{}", k.node.log());
}

#[test]
fn node_public_ip_and_public_ip_overwrite_annotations() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("ko", &[POD_CIDR]);
    // node-public-ip replaces --public-ip (and picks the interface carrying it); the overwrite
    // is what peers are told.
    k.node
        .exec("ip", &["addr", "add", "10.0.0.77/24", "dev", "eth0"]);
    k.annotate(NODE, "node-public-ip", Some("10.0.0.77"));
    k.annotate(NODE, "public-ip-overwrite", Some("192.0.2.7"));
    k.start_env(&[], &[("NODE_NAME", NODE)]);
    k.node.wait_ready();
    assert!(
        k.node
            .log()
            .contains("the datastore sets this node's public IP public_ip=10.0.0.77"),
        "{}",
        k.node.log()
    );
    assert_eq!(k.annotation("public-ip").as_deref(), Some("192.0.2.7"));
    let vx = k.node.exec("ip", &["-d", "link", "show", "flannel.1"]);
    assert!(
        vx.contains("local 10.0.0.77"),
        "the device uses the node public IP: {vx}"
    );
    // A node-public-ip that is no address is named, not guessed around.
    k.node.stop();
    k.annotate(NODE, "node-public-ip", Some("ten.zero"));
    k.start(&[]);
    let status = k.node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(
        k.node
            .log()
            .contains("node-public-ip \"ten.zero\" is not an IP address"),
        "{}",
        k.node.log()
    );
}

#[test]
fn an_ipv6_only_network_runs_the_ipv6_overlay_alone() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("k6", &["fd00:10:244::/64"]);
    std::fs::write(
        k.net_conf(),
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let mut peer = flannel_kube_fake::node("node1", &["fd00:10:244:1::/64"], "10.0.0.51", 0);
    peer["metadata"]["annotations"] = json!({
        format!("{ANN}/kube-subnet-manager"): "true",
        format!("{ANN}/backend-type"): "vxlan",
        format!("{ANN}/backend-v6-data"): r#"{"VNI":1,"VtepMAC":"02:00:00:00:06:51"}"#,
        format!("{ANN}/public-ipv6"): "fd00::51",
    });
    k.api.create(Kind::Node, "", peer).unwrap();
    k.start(&["--ip-blackhole-route"]);
    k.node.wait_ready();
    let env = std::fs::read_to_string(k.node.subnet_env()).unwrap();
    assert!(
        env.contains("FLANNEL_IPV6_SUBNET=fd00:10:244::1/64"),
        "{env}"
    );
    assert!(
        !env.contains("FLANNEL_SUBNET="),
        "no IPv4 subnet in an IPv6-only network: {env}"
    );
    let links = k.node.exec("ip", &["link", "show"]);
    assert!(
        links.contains("flannel-v6.1") && !links.contains("flannel.1:"),
        "{links}"
    );
    let routes6 = k.node.exec("ip", &["-6", "route", "show", "proto", "252"]);
    assert!(
        routes6.contains("fd00:10:244:1::/64 via fd00:10:244:1:: dev flannel-v6.1"),
        "{routes6}\n{}",
        k.node.log()
    );
    // Nothing of IPv4: no route of ours, and no blackhole for the degenerate 0.0.0.0/0.
    assert_eq!(
        k.node.exec("ip", &["route", "show", "proto", "252"]).trim(),
        ""
    );
    let a = &k.own()["metadata"]["annotations"];
    assert!(
        a[format!("{ANN}/backend-v6-data")].as_str().is_some(),
        "{a}"
    );
    assert!(a.get(format!("{ANN}/public-ip")).is_none(), "{a}");
}

#[test]
fn a_sigterm_during_startup_ends_flanneld() {
    if common::skip_without_root() {
        return;
    }
    // Enough peers that the first reconcile (between "lease acquired" and "ready") takes a
    // moment: a SIGTERM then must not be lost, or the kubelet waits out its grace period and
    // kills the node's flanneld (and a test that stops it waits for ever).
    let mut k = KubeNode::new("kt", &[POD_CIDR]);
    for i in 0..2000u32 {
        k.add_peer(
            &format!("peer{i:04}"),
            &format!("10.244.{}.{}/28", 1 + i / 16, (i % 16) * 16),
            &format!("10.0.{}.{}", i / 200 + 1, i % 200 + 1),
            &format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
        );
    }
    k.start(&[]);
    let acquired = eventually(Duration::from_secs(15), || {
        k.node.log().contains("lease acquired")
    });
    assert!(acquired.is_some(), "{}", k.node.log());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(k.node.flanneld_pid(), libc::SIGTERM) };
    let status = k.node.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "flanneld did not end on a SIGTERM during startup:\n{}",
        k.node.log()
    );
    assert!(k.node.log().contains("SIGTERM"), "{}", k.node.log());
}

#[test]
fn lease_events_are_applied_without_a_full_pass_and_drift_still_heals() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kd", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&["-v=2", "--iptables-resync=600"]);
    k.node.wait_ready();
    let full_passes = |k: &KubeNode| {
        k.node
            .log()
            .lines()
            .filter(|l| l.contains("full pass"))
            .count()
    };
    // The watch starts with a snapshot of every node: one full pass for it.
    assert!(eventually(T, || k.node.log().contains("full pass trigger=Lease")).is_some());
    let after_start = full_passes(&k);
    // A node comes, changes its VTEP MAC and goes: each reaches the kernel with no full pass
    // (no dump of every route, neighbour and FDB entry), and our own deletions coming back as
    // notifications are not taken for drift.
    k.add_peer("node2", "10.244.2.0/24", "10.0.0.52", "02:00:00:00:00:52");
    assert!(eventually(T, || k.routes().contains("10.244.2.0/24 via")).is_some());
    k.annotate(
        "node2",
        "backend-data",
        Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}"#),
    );
    let fdb = || k.node.exec("bridge", &["fdb", "show", "dev", "flannel.1"]);
    assert!(eventually(T, || fdb().contains("02:00:00:00:00:99 dst 10.0.0.52")).is_some());
    assert!(!fdb().contains("02:00:00:00:00:52"), "{}", fdb());
    k.api.delete(Kind::Node, "", "node2").unwrap();
    assert!(eventually(T, || !k.routes().contains("10.244.2.0/24")).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!fdb().contains("02:00:00:00:00:99"), "{}", fdb());
    assert_eq!(full_passes(&k), after_start, "{}", k.node.log());
    assert!(k.node.log().contains("applied lease changes"));
    // Drift is still drift: a route deleted by hand comes back, put back alone from its
    // notification (no full pass either).
    k.node.exec("ip", &["route", "del", "10.244.1.0/24"]);
    assert!(eventually(T, || k.routes().contains("10.244.1.0/24 via")).is_some());
    assert!(
        eventually(T, || k.node.log().contains("deleted peer entries put back")).is_some(),
        "{}",
        k.node.log()
    );
    assert_eq!(full_passes(&k), after_start, "{}", k.node.log());
    // A deleted device is more than one entry: that takes a full pass.
    k.node.exec("ip", &["link", "del", "flannel.1"]);
    assert!(eventually(T, || k.routes().contains("10.244.1.0/24 via")).is_some());
    assert!(full_passes(&k) > after_start);
}

/// `flannelctl ARGS` against this node's flanneld: its output.
fn ctl(k: &KubeNode, args: &[&str]) -> String {
    let sock = format!("--state-socket={}", k.node.state_socket().display());
    let bin = common::bin_dir().join("flannelctl");
    let mut all = vec![sock.as_str()];
    all.extend_from_slice(args);
    k.node.exec(&bin.display().to_string(), &all)
}

/// The vxlan entries programmed for 10.244.1.0/24, as (neighbour line, fdb lines).
fn entries_for_node1_subnet(k: &KubeNode) -> (String, String) {
    let neigh = k.node.exec("ip", &["neigh", "show", "dev", "flannel.1"]);
    let fdb = k.node.exec("bridge", &["fdb", "show", "dev", "flannel.1"]);
    let line = neigh
        .lines()
        .find(|l| l.starts_with("10.244.1.0 "))
        .unwrap_or("")
        .to_string();
    (line, fdb)
}

/// A Node claiming another node's podCIDR (or a part of it, or ours) never replaces the first
/// holder's entries, is reported once naming both, and counted; when the first holder goes,
/// the oldest claim waiting behind it is programmed within a second. Our own lease is never
/// mistaken for another Node's object.
#[test]
fn overlapping_claims_keep_the_first_holder_and_the_survivor_takes_over() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kov", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&[]);
    k.node.wait_ready();
    let own_before = k.own()["metadata"]["annotations"].clone();
    k.add_peer("dup", "10.244.1.0/24", "10.0.0.99", "02:00:00:00:00:99");
    k.add_peer("half", "10.244.1.128/25", "10.0.0.98", "02:00:00:00:00:98");
    k.add_peer("mine", POD_CIDR, "10.0.0.97", "02:00:00:00:00:97");
    let said = eventually(T, || k.node.log().contains("skipping lease node mine"));
    assert!(said.is_some(), "{}", k.node.log());
    std::thread::sleep(Duration::from_millis(500));
    let (neigh, fdb) = entries_for_node1_subnet(&k);
    assert!(neigh.contains("lladdr 02:00:00:00:00:51"), "{neigh}");
    for mac in [
        "02:00:00:00:00:99",
        "02:00:00:00:00:98",
        "02:00:00:00:00:97",
    ] {
        assert!(!fdb.contains(mac), "{mac} must not be programmed:\n{fdb}");
    }
    assert!(!k.routes().contains("10.244.1.128/25"), "{}", k.routes());
    let log = k.node.log();
    for who in ["dup", "half", "mine"] {
        assert_eq!(
            log.matches(&format!("skipping lease node {who} ")).count(),
            1,
            "one warning for {who}:\n{log}"
        );
    }
    assert!(
        log.contains("skipping lease node dup (10.244.1.0/24): it overlaps 10.244.1.0/24 of lease node node1, which was there first"),
        "{log}"
    );
    assert!(!log.contains("taking it back"), "{log}");
    assert_eq!(k.own()["metadata"]["annotations"], own_before);
    let metrics = ctl(&k, &["metrics"]);
    assert!(
        metrics.contains("flannel_lease_conflicts_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flannel_lease_conflicts_current 3"),
        "{metrics}"
    );
    let state: Value = serde_json::from_str(&ctl(&k, &["state"])).expect("state is JSON");
    let keys: Vec<&str> = state["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["key"].as_str())
        .collect();
    for n in [
        "node node1",
        "node dup",
        "node half",
        "node mine",
        "node node0",
    ] {
        assert!(keys.contains(&n), "{n} in {keys:?}");
    }
    assert_eq!(state["conflicts"].as_array().unwrap().len(), 3, "{state:#}");

    // The first holder goes: the oldest claim waiting behind it (dup) within a second.
    k.api.delete(Kind::Node, "", "node1").unwrap();
    let t = eventually(Duration::from_secs(1), || {
        let (neigh, fdb) = entries_for_node1_subnet(&k);
        neigh.contains("lladdr 02:00:00:00:00:99")
            && fdb.contains("02:00:00:00:00:99 dst 10.0.0.99")
            && !fdb.contains("02:00:00:00:00:51")
    });
    assert!(
        t.is_some(),
        "{:?}\n{}",
        entries_for_node1_subnet(&k),
        k.node.log()
    );
    // Then dup goes: half, inside it, is next.
    k.api.delete(Kind::Node, "", "dup").unwrap();
    let t = eventually(Duration::from_secs(1), || {
        k.routes()
            .contains("10.244.1.128/25 via 10.244.1.128 dev flannel.1")
            && !k.routes().contains("10.244.1.0/24")
    });
    assert!(t.is_some(), "{}\n{}", k.routes(), k.node.log());
    // mine still waits behind us; our annotations are untouched.
    assert_eq!(k.own()["metadata"]["annotations"], own_before);
    assert!(!k.node.log().contains("taking it back"));
    let metrics = ctl(&k, &["metrics"]);
    assert!(
        metrics.contains("flannel_lease_conflicts_current 1"),
        "{metrics}"
    );
}

/// A peer's Node as large as the API server lets it be (just under etcd's 1.5 MiB: images in
/// its status, a foreign annotation, padding inside `backend-data`), created and changed a
/// few times: flanneld keeps only what the lease needs, and its RSS stays within 2 MiB of
/// what it was (a 50 MB Node used to take it from 11 to 64 MB).
#[test]
fn a_huge_peer_node_costs_flanneld_no_memory() {
    if common::skip_without_root() {
        return;
    }
    let mut k = KubeNode::new("kbig", &[POD_CIDR]);
    k.add_peer("node1", "10.244.1.0/24", "10.0.0.51", "02:00:00:00:00:51");
    k.start(&[]);
    k.node.wait_ready();
    std::thread::sleep(Duration::from_secs(1));
    let pid = k.node.flanneld_pid();
    let before = common::rss_kib(pid);
    for i in 0..5 {
        let mut n = flannel_kube_fake::node("huge", &["10.244.7.0/24"], "10.0.0.57", 600_000);
        n["metadata"]["annotations"] = json!({
            format!("{ANN}/kube-subnet-manager"): "true",
            format!("{ANN}/backend-type"): "vxlan",
            format!("{ANN}/backend-data"): format!(
                r#"{{"VNI":1,"VtepMAC":"02:00:00:00:00:57","Pad":"{}"}}"#,
                "p".repeat(300_000)
            ),
            format!("{ANN}/public-ip"): "10.0.0.57",
            "example.com/junk": "j".repeat(300_000 + i),
        });
        if i == 0 {
            k.api.create(Kind::Node, "", n).expect("within the limits");
        } else {
            k.api
                .patch(
                    Kind::Node,
                    "",
                    "huge",
                    PatchType::Merge,
                    &json!({"metadata": n["metadata"]}),
                    false,
                )
                .expect("within the limits");
        }
        let routed = eventually(T, || k.routes().contains("10.244.7.0/24 via"));
        assert!(routed.is_some(), "{}", k.node.log());
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = common::rss_kib(pid);
    println!("measured: flanneld RSS {before} KiB before, {after} KiB after a 1.4 MiB peer Node and 4 changes");
    assert!(
        after <= before + 2048,
        "RSS grew from {before} to {after} KiB"
    );
    let state = ctl(&k, &["state"]);
    assert!(
        state.len() < 200_000,
        "the state keeps the padding: {} bytes",
        state.len()
    );
}
