//! Kubernetes mode across nodes, in the lab: the API fake on master1, flanneld with
//! `--kube-subnet-mgr` on every node, pods through our CNI plugin. Pods keep talking while the
//! API server is away, and a node programmed by hand as upstream's kube-mode flanneld leaves
//! one (annotations and kernel state) talks with ours both ways.

use crate::common;

use common::lab::Lab;
use common::{cpu_seconds, eventually, ip, Netns, Proc};
use flannel_lab::cluster::{kubectl, start_api, stop_api, Datastore};
use flannel_lab::ping::ping;
use flannel_lab::{LabSpec, LabState};
use serde_json::{json, Value};
use std::time::Duration;

fn kube_lab(nodes: usize, pods: usize) -> Lab {
    Lab::up_with(LabSpec {
        datastore: Datastore::Kube,
        nodes,
        pods_per_node: pods,
        flanneld_args: vec!["--iptables-resync=1".into(), "--kernel-resync=1".into()],
        ..LabSpec::default()
    })
}

fn routes(ns: &str) -> String {
    ip(&["-n", ns, "route", "show"])
}

/// Creates `obj` through the real kubectl.
fn kubectl_create(state: &LabState, obj: &Value) {
    let f = state.state_dir.join(format!(
        "create-{}.json",
        obj["metadata"]["name"].as_str().unwrap_or("x")
    ));
    std::fs::write(&f, obj.to_string()).unwrap();
    kubectl(state, &["create", "-f", &f.display().to_string()]).expect("kubectl create");
}

/// A Node as upstream's kube-mode flanneld leaves it for a vxlan node.
fn upstream_node(name: &str, cidr: &str, ip: &str, mac: &str) -> Value {
    let mut n = flannel_kube_fake::node(name, &[cidr], ip, 0);
    n["metadata"]["annotations"] = json!({
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data": format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        "flannel.alpha.coreos.com/public-ip": ip,
    });
    n
}

#[test]
fn pods_keep_talking_while_the_api_server_is_away() {
    if common::skip_without_root() {
        return;
    }
    let lab = kube_lab(2, 1);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    assert!(ping(&a.pods[0].netns, &b.pods[0].ip));
    let pids: Vec<i32> = lab
        .state
        .nodes
        .iter()
        .flat_map(flannel_lab::cluster::flanneld_pids)
        .collect();
    stop_api(&lab.state).unwrap();
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        assert!(
            ping(&a.pods[0].netns, &b.pods[0].ip) && ping(&b.pods[0].netns, &a.pods[0].ip),
            "pods stopped talking {:?} into the outage",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    let secs = t0.elapsed().as_secs_f64();
    for (p, c0) in pids.iter().zip(&cpu0) {
        let used = cpu_seconds(*p) - c0;
        assert!(
            used < 0.05 * secs,
            "flanneld {p}: {used:.2} s of CPU in {secs:.0} s"
        );
    }
    let _api = Proc(start_api(&lab.state).unwrap());
    kubectl_create(
        &lab.state,
        &upstream_node("late", "10.244.50.0/24", "10.0.0.70", "02:00:00:00:00:70"),
    );
    let t = eventually(Duration::from_secs(5), || {
        routes(&a.netns).contains("10.244.50.0/24 via 10.244.50.0 dev flannel.1")
    });
    assert!(
        t.is_some(),
        "a node added after the API's return is programmed within 5 s:\n{}",
        std::fs::read_to_string(&a.log).unwrap_or_default()
    );
}

#[test]
fn a_node_programmed_as_upstream_and_ours_talk_both_ways() {
    if common::skip_without_root() {
        return;
    }
    let lab = kube_lab(2, 1);
    let ours = &lab.state.nodes[1];
    // The upstream node: 10.0.0.60 on the switch, podCIDR 10.244.5.0/24, VTEP MAC fixed.
    let up = lab.on_switch("up", "10.0.0.60/24");
    let pod = Netns::new("upod");
    let sh = |ns: &Netns, cmd: &str| {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh(&up, "echo 1 > /proc/sys/net/ipv4/ip_forward");
    // What upstream's vxlan backend creates (device.go), and a pod on cni0.
    sh(&up, "ip link add flannel.1 type vxlan id 1 local 10.0.0.60 dev eth0 nolearning dstport 8472 \
             && ip link set flannel.1 address 02:00:00:00:00:60 mtu 1450 \
             && ip addr add 10.244.5.0/32 dev flannel.1 && ip link set flannel.1 up \
             && ip link add cni0 type bridge && ip addr add 10.244.5.1/24 dev cni0 && ip link set cni0 up");
    ip(&[
        "-n", &up.0, "link", "add", "vethp", "type", "veth", "peer", "name", "eth0", "netns",
        &pod.0,
    ]);
    sh(&up, "ip link set vethp master cni0 up");
    sh(&pod, "ip addr add 10.244.5.2/24 dev eth0 && ip link set eth0 up && ip link set lo up && ip route add default via 10.244.5.1");
    // Upstream's per-peer entries for every flannel node, from their annotations (what its
    // kube-mode flanneld reads from the API).
    let nodes: Value =
        serde_json::from_str(&kubectl(&lab.state, &["get", "nodes", "-o", "json"]).unwrap())
            .unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let a = &n["metadata"]["annotations"];
        let data: Value =
            serde_json::from_str(a["flannel.alpha.coreos.com/backend-data"].as_str().unwrap())
                .unwrap();
        let (mac, ip_) = (
            data["VtepMAC"].as_str().unwrap(),
            a["flannel.alpha.coreos.com/public-ip"].as_str().unwrap(),
        );
        let cidr = n["spec"]["podCIDR"].as_str().unwrap();
        let gw = cidr.trim_end_matches("/24");
        sh(
            &up,
            &format!(
                "ip neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent \
             && bridge fdb append {mac} dev flannel.1 dst {ip_} self permanent \
             && ip route replace {cidr} via {gw} dev flannel.1 onlink"
            ),
        );
    }
    // And its Node object, as upstream publishes it.
    kubectl_create(
        &lab.state,
        &upstream_node(
            "upstream1",
            "10.244.5.0/24",
            "10.0.0.60",
            "02:00:00:00:00:60",
        ),
    );
    let t = eventually(Duration::from_secs(5), || {
        routes(&ours.netns).contains("10.244.5.0/24 via 10.244.5.0 dev flannel.1")
    });
    assert!(t.is_some(), "{}", routes(&ours.netns));
    let there = eventually(Duration::from_secs(5), || {
        ping(&ours.pods[0].netns, "10.244.5.2")
    });
    assert!(there.is_some(), "our pod -> the upstream node's pod");
    assert!(
        ping(&pod.0, &ours.pods[0].ip),
        "the upstream node's pod -> our pod"
    );
    assert!(
        ping(&pod.0, &lab.state.nodes[0].pods[0].ip),
        "and master1's"
    );
}

/// Nodes as `kubectl get nodes -o json` shows them, by name.
fn nodes_json(state: &LabState) -> Vec<Value> {
    let out = kubectl(state, &["get", "nodes", "-o", "json"]).expect("kubectl get nodes");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn network_unavailable(n: &Value) -> Value {
    n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn every_backend_runs_from_the_manifest_and_down_leaves_nothing() {
    if common::skip_without_root() {
        return;
    }
    for backend in ["vxlan", "host-gw", "udp"] {
        let lab = Lab::up_with(LabSpec {
            datastore: Datastore::Kube,
            nodes: 2,
            pods_per_node: 1,
            backend: backend.into(),
            backend_set: true,
            ..LabSpec::default()
        });
        let s = &lab.state;
        let m = flannel_lab::ping::ping_all(s);
        assert!(m.all_ok(), "{backend}:\n{}", m.render());
        for (i, n) in nodes_json(s).iter().enumerate() {
            let name = n["metadata"]["name"].as_str().unwrap();
            let node = s.nodes.iter().find(|x| x.name == name).unwrap();
            assert_eq!(n["spec"]["podCIDR"], format!("10.244.{i}.0/24"));
            assert_eq!(node.subnet, format!("10.244.{i}.0/24"));
            let a = &n["metadata"]["annotations"];
            // Upstream's udp backend publishes no backend type.
            let want_type = if backend == "udp" { "" } else { backend };
            assert_eq!(a["flannel.alpha.coreos.com/backend-type"], want_type, "{a}");
            assert_eq!(a["flannel.alpha.coreos.com/public-ip"], node.ip.as_str());
            assert_eq!(a["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
            assert_eq!(network_unavailable(n), "False", "{n}");
            // flanneld runs as the container does: in-cluster config, its name from its pod,
            // the node's own /run/flannel.
            let log = std::fs::read_to_string(&node.log).unwrap();
            assert!(
                log.contains("from pod kube-flannel/kube-flannel-ds-"),
                "{log}"
            );
            assert!(
                node.subnet_file.starts_with(&s.state_dir),
                "{:?}",
                node.subnet_file
            );
            // What the init containers installed on the node.
            let cni = node
                .cni_binds
                .iter()
                .find(|b| b.dst == std::path::Path::new("/opt/cni/bin"))
                .unwrap();
            assert!(cni.src.join("flannel").is_file());
        }
        let (name, root) = (lab.name.clone(), lab.root.path().to_path_buf());
        let made: Vec<std::path::PathBuf> = serde_json::from_str(
            &std::fs::read_to_string(s.state_dir.join("mount-points.json")).unwrap(),
        )
        .unwrap();
        drop(lab);
        assert!(
            !ip(&["netns", "list"]).contains(&name),
            "namespaces left by {name}"
        );
        assert!(!root.join(&name).exists());
        // Mount points the lab made are gone, unless another lab (another test) still uses one:
        // then that lab removes it when it goes. Checked under the labs' mount lock: a lab
        // being built makes a mount point before it registers it, holding that lock.
        let _lock = flannel_lab::nodefs::lock().unwrap();
        for p in made {
            assert!(
                !p.exists() || other_labs_use(&p) || registered_users(&p),
                "{} left behind",
                p.display()
            );
        }
    }
}

/// Whether the machine-wide registry of lab-made mount points says another lab uses `p`.
fn registered_users(p: &std::path::Path) -> bool {
    let r: std::collections::BTreeMap<std::path::PathBuf, Vec<std::path::PathBuf>> =
        std::fs::read_to_string("/run/flannel-lab-mounts.json")
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    r.get(p).is_some_and(|u| !u.is_empty())
}

/// Whether some process's mount namespace has `p` as a mount point (a lab of another test).
fn other_labs_use(p: &std::path::Path) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path().join("mountinfo"))
            .map(|m| {
                m.lines()
                    .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
            })
            .unwrap_or(false)
    })
}

#[test]
fn the_lab_follows_an_edited_manifest() {
    if common::skip_without_root() {
        return;
    }
    // The manifest is the lab's source of truth: another Network in the ConfigMap and an extra
    // flanneld flag in the DaemonSet reach every node.
    let dir = common::TempDir::new("manifest");
    let edited = flannel_lab::manifest::DEFAULT
        .replace(
            r#""Network": "10.244.0.0/16""#,
            r#""Network": "10.50.0.0/16""#,
        )
        .replace(
            "        - --healthz-port=8081\n",
            "        - --healthz-port=8081\n        - --ip-blackhole-route\n",
        );
    assert_ne!(edited, flannel_lab::manifest::DEFAULT);
    let path = dir.path().join("kube-flannel.yml");
    std::fs::write(&path, &edited).unwrap();
    let lab = Lab::up_with(LabSpec {
        datastore: Datastore::Kube,
        nodes: 2,
        pods_per_node: 1,
        manifest: Some(path),
        ..LabSpec::default()
    });
    let s = &lab.state;
    for (i, n) in s.nodes.iter().enumerate() {
        let want = format!("10.50.{i}.0/24");
        assert_eq!(n.subnet, want);
        assert!(
            n.pods[0].ip.starts_with(&format!("10.50.{i}.")),
            "{}",
            n.pods[0].ip
        );
        assert!(n.flanneld.iter().any(|a| a == "--ip-blackhole-route"));
        let log = std::fs::read_to_string(&n.log).unwrap();
        assert!(log.contains("ip-blackhole-route: true"), "{log}");
        // Like upstream, the blackhole route comes with the first resync (5 s).
        let bh = eventually(Duration::from_secs(15), || {
            ip(&["-n", &n.netns, "route", "show", "type", "blackhole"]).contains(&want)
        });
        assert!(bh.is_some(), "{}: no blackhole route for {want}", n.name);
    }
    for n in nodes_json(s) {
        assert!(n["spec"]["podCIDR"].as_str().unwrap().starts_with("10.50."));
        assert_eq!(network_unavailable(&n), "False");
    }
    // The operator's view, through flannel-lab's own commands.
    let lab_cmd = |args: &[&str]| {
        let (ok, out, err) = lab.cli(args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let list: Value =
        serde_json::from_str(&lab_cmd(&["kubectl", "get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        lab_cmd(&["kubeconfig"]).trim(),
        s.kubeconfig().display().to_string()
    );
    let status = lab_cmd(&["status"]);
    assert!(
        status.contains("Node: podCIDR 10.50.1.0/24, NetworkUnavailable False (FlannelIsUp)"),
        "{status}"
    );
    assert!(
        status.contains("flannel.alpha.coreos.com/kube-subnet-manager: true"),
        "{status}"
    );
    let m = flannel_lab::ping::ping_all(s);
    assert!(m.all_ok(), "{}", m.render());
    // A manifest the lab cannot run is a clear error before anything starts.
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        flannel_lab::manifest::DEFAULT.replace("/opt/bin/flanneld", "/usr/local/bin/flanneld-go"),
    )
    .unwrap();
    let e = flannel_lab::manifest::Manifest::read(Some(&bad)).unwrap_err();
    assert!(
        format!("{e:#}").contains("no container runs flanneld"),
        "{e:#}"
    );
}

/// The issue's reproduction: a Node `dup` with node1's podCIDR and valid flannel annotations
/// (another MAC and public IP), created and then deleted. master1 keeps node1's entries all
/// along, doctor names the conflict while it lasts, node1 never mistakes dup for its own
/// lease, and after the delete every pod still reaches every other.
#[test]
fn a_short_lived_node_with_another_nodes_pod_cidr_cuts_nobody_off() {
    if common::skip_without_root() {
        return;
    }
    let lab = kube_lab(2, 1);
    let (m, n1) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let n1_mac = common::link_mac(&n1.netns, "flannel.1");
    let neigh_of_n1 = || {
        let gw = n1.subnet.trim_end_matches("/24");
        ip(&["-n", &m.netns, "neigh", "show", "dev", "flannel.1"])
            .lines()
            .find(|l| l.starts_with(&format!("{gw} ")))
            .unwrap_or("")
            .to_string()
    };
    assert!(neigh_of_n1().contains(&n1_mac), "{}", neigh_of_n1());
    kubectl_create(
        &lab.state,
        &upstream_node("dup", &n1.subnet, "10.0.0.99", "02:00:00:00:00:99"),
    );
    let reported = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&m.log)
            .unwrap_or_default()
            .contains("skipping lease node dup")
    });
    assert!(
        reported.is_some(),
        "{}",
        std::fs::read_to_string(&m.log).unwrap_or_default()
    );
    let (code, all) = common::ctl::doctor(m, &[]);
    assert_ne!(code, 0);
    let peers = common::ctl::verdict(&all, "peers");
    assert!(
        peers["problems"][0]
            .as_str()
            .unwrap_or("")
            .contains("lease node dup claims"),
        "{peers:#}"
    );
    assert!(neigh_of_n1().contains(&n1_mac), "{}", neigh_of_n1());
    let fdb = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &m.netns,
            "bridge",
            "fdb",
            "show",
            "dev",
            "flannel.1",
        ])
        .output()
        .expect("bridge fdb");
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains(&n1_mac) && !fdb.contains("02:00:00:00:00:99"),
        "{fdb}"
    );
    assert!(ping(&m.pods[0].netns, &n1.pods[0].ip));

    kubectl(&lab.state, &["delete", "node", "dup"]).expect("kubectl delete node dup");
    // Past a resync and a relabel of node1: its entries stay on master1.
    std::thread::sleep(Duration::from_secs(2));
    kubectl(&lab.state, &["label", "node", &n1.name, "relabelled=yes"]).expect("label");
    std::thread::sleep(Duration::from_secs(1));
    assert!(neigh_of_n1().contains(&n1_mac), "{}", neigh_of_n1());
    let matrix = flannel_lab::ping::ping_all(&lab.state);
    assert!(matrix.all_ok(), "{}", matrix.render());
    let (code, all) = common::ctl::doctor(m, &[]);
    assert_eq!(code, 0, "{all:#?}");
    let (_, state) = common::ctl::ctl(m, &["state"]);
    assert!(state.contains(&format!("\"node {}\"", n1.name)), "{state}");
    let n1_log = std::fs::read_to_string(&n1.log).unwrap_or_default();
    assert!(!n1_log.contains("taking it back"), "{n1_log}");
}
