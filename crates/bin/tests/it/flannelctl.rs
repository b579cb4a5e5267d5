//! `flannelctl leases` against the lab's real datastores (etcd, and the Kubernetes API fake in
//! kube mode), with flanneld's own connection flags; and the doctor's FORWARD-policy check
//! for nodes whose flanneld adds no accept rules.

use crate::common;

use common::ctl::{ctl, doctor, failed, fails_then_fix, sh_in};
use common::lab::Lab;
use flannel_lab::cluster::Datastore;
use flannel_lab::LabSpec;
use serde_json::Value;

fn leases_json(n: &flannel_lab::state::NodeState, flags: &[&str]) -> Vec<Value> {
    let mut args = flags.to_vec();
    args.extend(["leases", "-o", "json"]);
    let (code, out) = ctl(n, &args);
    assert_eq!(code, 0, "{out}");
    let start = out.find('[').unwrap_or(0);
    let end = out.rfind(']').map_or(out.len(), |e| e + 1);
    serde_json::from_str(&out[start..end]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The listed lease of node `n`.
fn lease_of<'a>(l: &'a [Value], n: &flannel_lab::state::NodeState) -> &'a Value {
    l.iter()
        .find(|e| e["subnet"] == n.subnet.as_str())
        .unwrap_or_else(|| panic!("{} missing: {l:#?}", n.subnet))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn leases_from_etcd_show_subnet_public_ip_vtep_mac_and_expiry() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 0, &[]);
    let etcd = ["--etcd-endpoints=http://10.0.0.50:2379"];
    let l = leases_json(&lab.state.nodes[1], &etcd);
    assert_eq!(l.len(), 2, "{l:#?}");
    for n in &lab.state.nodes {
        let e = lease_of(&l, n);
        assert_eq!(e["public_ip"], n.ip.as_str());
        assert_eq!(e["backend_type"], "vxlan");
        let mac = common::link_mac(&n.netns, "flannel.1");
        assert_eq!(e["backend_data"]["VtepMAC"], mac.as_str());
        assert_eq!(
            e["key"],
            flannel_lab::cluster::lease_key(&n.subnet).as_str()
        );
        // A 24 h etcd lease, counted from now.
        let left = e["expires"].as_u64().unwrap_or(0).saturating_sub(now());
        assert!((86_000..=86_400).contains(&left), "{e:#}");
    }
    let (code, table) = ctl(&lab.state.nodes[0], &[etcd[0], "leases"]);
    assert_eq!(code, 0, "{table}");
    assert!(table.starts_with("SUBNET "), "{table}");
    assert!(table.contains("in 23h59m"), "{table}");
    // A datastore that does not answer is an error naming it, not an empty list.
    let (code, out) = ctl(
        &lab.state.nodes[0],
        &["--etcd-endpoints=http://10.0.0.50:1", "leases"],
    );
    assert_ne!(code, 0);
    assert!(out.contains("10.0.0.50:1"), "{out}");
}

#[test]
fn leases_from_the_kubernetes_api_are_the_nodes_with_flannels_annotations() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up_with(LabSpec {
        nodes: 2,
        pods_per_node: 0,
        datastore: Datastore::Kube,
        ..LabSpec::default()
    });
    let kc = format!("--kubeconfig-file={}", lab.state.kubeconfig().display());
    let l = leases_json(&lab.state.nodes[0], &["--kube-subnet-mgr", &kc]);
    assert_eq!(l.len(), 2, "{l:#?}");
    for n in &lab.state.nodes {
        let e = lease_of(&l, n);
        assert_eq!(e["public_ip"], n.ip.as_str());
        assert!(e["key"].as_str().unwrap_or("").contains(&n.name), "{e:#}");
        assert_eq!(
            e["expires"],
            Value::Null,
            "a Node's podCIDR does not expire"
        );
    }
}

#[test]
fn a_forward_policy_of_drop_without_flannels_accept_rules_is_found_and_fixed() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &["--iptables-forward-rules=false"]);
    let n = &lab.state.nodes[0];
    assert_eq!(failed(&doctor(n, &[]).1), Vec::<String>::new());
    // The same through the lab's command line, as README shows it.
    let o = std::process::Command::new(common::bin_dir().join("flannel-lab"))
        .args(["--name", &lab.name, "--state-dir"])
        .arg(lab.root.path())
        .args(["ctl", &n.name, "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("12 checks, 0 failed"),
        "{text}"
    );
    // What Docker does to a node.
    sh_in(n, "iptables -P FORWARD DROP", &[]);
    let (_, v) = doctor(n, &[]);
    let fix = fails_then_fix(n, &v, "firewall", "iptables FORWARD policy is DROP");
    assert_eq!(fix, "iptables -P FORWARD ACCEPT");
    assert_eq!(failed(&doctor(n, &[]).1), Vec::<String>::new());
    assert!(flannel_lab::ping::ping_all(&lab.state).all_ok());
}

/// `flannelctl leases` with no datastore flag asks the running flanneld how it reaches its
/// datastore, on every node of an etcd lab and of a kube lab (it used to try upstream's
/// default endpoints and fail on every node); flags may follow the command; an unknown flag
/// names itself; with flanneld stopped too, the error says what was tried and what to give.
#[test]
fn leases_need_no_flags_on_any_node_of_either_datastore() {
    if common::skip_without_root() {
        return;
    }
    for datastore in [Datastore::Etcd, Datastore::Kube] {
        let lab = Lab::up_with(LabSpec {
            nodes: 2,
            pods_per_node: 0,
            datastore,
            ..LabSpec::default()
        });
        for n in &lab.state.nodes {
            let l = leases_json(n, &[]);
            assert_eq!(l.len(), 2, "{datastore:?} on {}: {l:#?}", n.name);
            // The same through the lab's command line, as README shows it.
            let o = std::process::Command::new(common::bin_dir().join("flannel-lab"))
                .args(["--name", &lab.name, "--state-dir"])
                .arg(lab.root.path())
                .args(["ctl", &n.name, "leases"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && text.starts_with("SUBNET "),
                "{text}{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if datastore == Datastore::Etcd {
            let n = &lab.state.nodes[1];
            // A flag after the command, as kubectl takes them.
            let (code, out) = ctl(n, &["leases", "--etcd-endpoints=http://10.0.0.50:2379"]);
            assert_eq!(code, 0, "{out}");
            let (code, out) = ctl(n, &["leases", "--no-such-flag"]);
            assert_ne!(code, 0);
            assert!(out.contains("-no-such-flag"), "{out}");
            // Explicit flags win over what flanneld says.
            let (code, out) = ctl(n, &["leases", "--etcd-endpoints=http://10.0.0.50:1"]);
            assert_ne!(code, 0);
            assert!(out.contains("10.0.0.50:1"), "{out}");
            flannel_lab::cluster::stop_flanneld(n).unwrap();
            let (code, out) = ctl(n, &["leases"]);
            assert_ne!(code, 0);
            assert!(
                out.contains("no datastore flags were given, and flanneld does not answer on")
                    && out.contains("--etcd-endpoints=URL"),
                "{out}"
            );
        }
    }
}

/// With flanneld stopped, every command says in words that flanneld does not answer on its
/// socket and how to start it again here (in the lab: `flannel-lab restart NODE`); doctor
/// still judges the node from what is on it and marks the rest skipped; `flannel-lab trace`
/// says the same; `flannel-lab restart` brings flanneld back.
#[test]
fn with_flanneld_stopped_the_tools_say_so_and_doctor_checks_the_node() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &[]);
    let n = &lab.state.nodes[0];
    flannel_lab::cluster::stop_flanneld(n).unwrap();
    let socket = flannel_lab::cluster::state_socket(n);
    for args in [
        vec!["state"],
        vec!["metrics"],
        vec!["trace", "10.244.0.2", "10.244.1.2"],
    ] {
        let (code, out) = ctl(n, &args);
        assert_ne!(code, 0);
        assert!(
            out.contains(&format!(
                "flanneld is not answering on {}",
                socket.display()
            )) && out.contains(&format!(
                "flannel-lab restart {} --name {}",
                n.name, lab.name
            )),
            "{args:?}: {out}"
        );
    }
    let (code, v) = doctor(n, &[]);
    assert_eq!(code, 1);
    assert_eq!(v.len(), 12, "{v:#?}");
    assert_eq!(failed(&v), ["flanneld"], "{v:#?}");
    let skipped: Vec<&str> = v
        .iter()
        .filter(|c| c["skipped"] == true)
        .filter_map(|c| c["check"].as_str())
        .collect();
    assert_eq!(
        skipped,
        ["datastore", "device", "peers", "public_ip", "subnet_env"]
    );
    let fix = common::ctl::verdict(&v, "flanneld")["fix"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        fix.starts_with(&format!("flannel-lab restart {}", n.name)),
        "{fix}"
    );
    // The lab's own trace says it in words too.
    let pods = (&n.pods[0].name, &lab.state.nodes[1].pods[0].name);
    let o = std::process::Command::new(common::bin_dir().join("flannel-lab"))
        .args(["--name", &lab.name, "--state-dir"])
        .arg(lab.root.path())
        .args(["trace", pods.0, pods.1])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("flanneld is not answering on"),
        "{err}"
    );
    // The fix works.
    let o = std::process::Command::new(common::bin_dir().join("flannel-lab"))
        .args(["--name", &lab.name, "--state-dir"])
        .arg(lab.root.path())
        .args(["restart", &n.name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(failed(&doctor(n, &[]).1), Vec::<String>::new());
}
