//! End to end in the lab: real namespaces, real etcd, our flanneld and CNI plugin, Debian's
//! bridge/host-local/portmap. Each test builds its own uniquely named lab and tears it down.

use crate::common;

use common::lab::Lab;
use common::{bin_dir, eventually, ip, require_root, unique, Proc, TempDir};
use flannel_lab::cluster::{etcd_del, etcd_get, etcd_put, start_flanneld, stop_flanneld};
use flannel_lab::{down, up, LabSpec};
use std::time::Duration;

fn routes(ns: &str) -> String {
    ip(&["-n", ns, "route", "show"])
}

fn fdb(ns: &str) -> String {
    let o = std::process::Command::new("bridge")
        .args(["-n", ns, "fdb", "show", "dev", "flannel.1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn neigh(ns: &str) -> String {
    ip(&["-n", ns, "neigh", "show", "dev", "flannel.1"])
}

fn vtep_mac(ns: &str) -> String {
    common::link_mac(ns, "flannel.1")
}

#[test]
fn three_nodes_all_pods_reach_each_other_and_nodes_show_the_tutorial_state() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(3, 2, &[]);
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "ping matrix:\n{}", m.render());
    assert_eq!(m.pairs(), 30);

    for n in &lab.state.nodes {
        let env =
            std::fs::read_to_string(lab.state.state_dir.join(&n.name).join("subnet.env")).unwrap();
        let first_host = n.subnet.replace(".0/24", ".1/24");
        assert_eq!(env, format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first_host}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"));
        let link = ip(&["-n", &n.netns, "-d", "link", "show", "flannel.1"]);
        assert!(
            link.contains("mtu 1450")
                && link.contains("vxlan id 1")
                && link.contains(&format!("local {}", n.ip)),
            "{link}"
        );
        assert!(
            link.contains("dstport 8472") && link.contains("nolearning"),
            "{link}"
        );
        let addr = ip(&["-n", &n.netns, "addr", "show", "flannel.1"]);
        assert!(
            addr.contains(&format!("inet {}/32", n.subnet.trim_end_matches("/24"))),
            "{addr}"
        );
        let (r, f) = (routes(&n.netns), fdb(&n.netns));
        for peer in lab.state.nodes.iter().filter(|p| p.name != n.name) {
            let gw = peer.subnet.trim_end_matches("/24");
            let want = format!("{} via {gw} dev flannel.1 ", peer.subnet);
            let line = r
                .lines()
                .find(|l| l.starts_with(&want))
                .unwrap_or_else(|| panic!("{} lacks a route to {}:\n{r}", n.name, peer.name));
            assert!(line.contains("onlink"), "{line}");
            let mac = vtep_mac(&peer.netns);
            assert!(
                f.contains(&format!("{mac} dst {} self permanent", peer.ip)),
                "{} fdb lacks {}:\n{f}",
                n.name,
                peer.name
            );
            assert!(neigh(&n.netns).contains(&format!("{gw} lladdr {mac} PERMANENT")));
        }
    }

    let status = flannel_lab::status::to_json(&lab.state);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(status["nodes"][1]["name"], "node1");
    assert_eq!(status["nodes"][1]["ip"], "10.0.0.51");
    assert_eq!(status["nodes"][1]["pods"].as_array().unwrap().len(), 2);

    // down removes every namespace, process and file of the lab.
    let removed = down(&lab.name, lab.root.path()).unwrap();
    assert_eq!(removed.len(), 1 + 3 + 6);
    let left = ip(&["netns", "list"]);
    assert!(
        !left
            .lines()
            .any(|l| l.starts_with(&format!("{}-", lab.name))),
        "{left}"
    );
    assert!(!lab.state.state_dir.exists());
    assert!(!lab.root.path().exists(), "the empty state root goes too");
}

const PEER: &str = r#"{"PublicIP":"10.0.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

#[test]
fn a_peer_added_and_removed_in_etcd_reaches_and_leaves_the_kernel_within_5s() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(1, 0, &["--iptables-resync=1", "--kernel-resync=1"]);
    let ns = lab.state.nodes[0].netns.clone();
    let p = lab.spare_octet(200);
    let q = lab.spare_octet(p + 1);
    let key = &format!("/coreos.com/network/subnets/10.244.{p}.0-24");
    etcd_put(&lab.state, key, PEER).unwrap();
    let programmed = || {
        routes(&ns).contains(&format!("10.244.{p}.0/24 via 10.244.{p}.0 dev flannel.1"))
            && fdb(&ns).contains("c6:d2:32:6f:8f:44 dst 10.0.0.99 self permanent")
            && neigh(&ns).contains(&format!("10.244.{p}.0 lladdr c6:d2:32:6f:8f:44 PERMANENT"))
    };
    let took = eventually(Duration::from_secs(5), programmed);
    assert!(
        took.is_some(),
        "peer not programmed within 5 s:\n{}\n{}",
        routes(&ns),
        fdb(&ns)
    );

    // A lease of another backend type is skipped, not routed.
    etcd_put(
        &lab.state,
        &format!("/coreos.com/network/subnets/10.244.{q}.0-24"),
        r#"{"PublicIP":"10.0.0.98","PublicIPv6":null,"BackendType":"host-gw"}"#,
    )
    .unwrap();
    // State deleted by hand comes back on the next resync.
    ip(&["-n", &ns, "route", "del", &format!("10.244.{p}.0/24")]);
    ip(&[
        "-n",
        &ns,
        "neigh",
        "del",
        &format!("10.244.{p}.0"),
        "dev",
        "flannel.1",
    ]);
    assert!(
        eventually(Duration::from_secs(5), programmed).is_some(),
        "hand-deleted state not restored"
    );
    assert!(
        !routes(&ns).contains(&format!("10.244.{q}.0")),
        "host-gw lease must not get a vxlan route"
    );

    // The masquerade and forward rules are upstream's, and come back when deleted.
    let nat = || {
        String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "iptables", "-t", "nat", "-S"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let subnet = &lab.state.nodes[0].subnet;
    let rule = format!("-A FLANNEL-POSTRTG -s {subnet} -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN");
    assert!(nat().contains(&rule), "{}", nat());
    assert!(
        nat().contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG")
    );
    let del: Vec<&str> = [
        "netns",
        "exec",
        &ns,
        "iptables",
        "-t",
        "nat",
        "-D",
        "FLANNEL-POSTRTG",
        "-s",
        subnet,
        "-d",
        "10.244.0.0/16",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    ]
    .to_vec();
    ip(&del);
    assert!(
        eventually(Duration::from_secs(5), || nat().contains(&rule)).is_some(),
        "rule not restored:\n{}",
        nat()
    );
    let filter = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "iptables", "-S", "FLANNEL-FWD"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        filter.contains(
            "-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT"
        ),
        "{filter}"
    );

    etcd_del(&lab.state, key).unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        !routes(&ns).contains(&format!("10.244.{p}.0/"))
            && !fdb(&ns).contains("c6:d2:32:6f:8f:44")
            && !neigh(&ns).contains(&format!("10.244.{p}.0 "))
    });
    assert!(
        gone.is_some(),
        "peer not removed within 5 s:\n{}\n{}",
        routes(&ns),
        fdb(&ns)
    );
}

#[test]
fn restart_keeps_subnet_mac_and_kernel_state_and_our_lease_is_in_upstream_format() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &[]);
    let n = &lab.state.nodes[1];
    let key = flannel_lab::cluster::lease_key(&n.subnet);
    let mac = vtep_mac(&n.netns);
    let value = etcd_get(&lab.state, &key).unwrap();
    assert_eq!(
        value.trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
            n.ip
        )
    );
    let before = routes(&n.netns);
    stop_flanneld(n).unwrap();
    assert_eq!(
        routes(&n.netns),
        before,
        "a clean shutdown keeps the routes"
    );
    assert!(
        flannel_lab::ping::ping(&lab.state.nodes[0].pods[0].netns, &n.pods[0].ip),
        "data plane works while flanneld is down"
    );
    let _flanneld = Proc(start_flanneld(n).unwrap());
    // Restarted: same subnet (subnet.env rewritten with it), same MAC, same lease value.
    let env = lab.state.state_dir.join(&n.name).join("subnet.env");
    let same = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&env)
            .unwrap_or_default()
            .contains(&n.subnet.replace(".0/24", ".1/24"))
            && std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .matches("flannel is ready")
                .count()
                == 2
    });
    assert!(
        same.is_some(),
        "restart did not come back with the same subnet:\n{}",
        std::fs::read_to_string(&n.log).unwrap_or_default()
    );
    assert_eq!(vtep_mac(&n.netns), mac);
    assert_eq!(etcd_get(&lab.state, &key).unwrap().trim(), value.trim());
    assert_eq!(routes(&n.netns), before);
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "{}", m.render());
}

#[test]
fn a_kube_lab_without_the_api_fake_names_it_and_an_etcd_lab_does_not_need_it() {
    if common::skip_without_root() {
        return;
    }
    require_root();
    // Our two binaries, but no flannel-kube-fake beside them.
    let bins = TempDir::new("bins-nofake");
    for b in ["flanneld", "flannel"] {
        std::os::unix::fs::symlink(bin_dir().join(b), bins.path().join(b)).unwrap();
    }
    let check = |d| flannel_lab::preflight::check(bins.path(), d, &[]);
    let err = check(flannel_lab::cluster::Datastore::Kube).unwrap_err();
    assert!(
        format!("{err:#}").contains("flannel-kube-fake (cargo build --release)"),
        "{err:#}"
    );
    check(flannel_lab::cluster::Datastore::Etcd).expect("an etcd lab needs no API fake");
}

#[test]
fn down_cleans_up_after_a_failed_up() {
    if common::skip_without_root() {
        return;
    }
    require_root();
    // A flanneld that dies at once makes `up` fail half way, with namespaces and etcd running.
    let bins = TempDir::new("bins");
    common::write_executable(
        &bins.path().join("flanneld"),
        "#!/bin/sh\necho broken on purpose >&2\nexit 1\n",
    );
    std::os::unix::fs::symlink(bin_dir().join("flannel"), bins.path().join("flannel")).unwrap();
    let root = TempDir::new("lab");
    let name = unique("t");
    let spec = LabSpec {
        lab: name.clone(),
        nodes: 2,
        pods_per_node: 1,
        state_root: root.path().to_path_buf(),
        bin_dir: bins.path().to_path_buf(),
        ..LabSpec::default()
    };
    let err = up(&spec).map(|_| ()).unwrap_err();
    let removed = down(&name, root.path()); // before any assertion, so nothing outlives a failure
    assert!(
        format!("{err:#}").contains("broken on purpose"),
        "the failure names the cause: {err:#}"
    );
    let removed = removed.unwrap();
    assert_eq!(removed.len(), 3, "switch and both nodes: {removed:?}");
    assert!(!ip(&["netns", "list"])
        .lines()
        .any(|l| l.starts_with(&format!("{name}-"))));
    assert!(!root.path().join(&name).exists());
}

#[test]
fn host_gw_routes_via_peer_public_ips_heal_and_go() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up_with(LabSpec {
        backend: "host-gw".into(),
        nodes: 2,
        pods_per_node: 1,
        flanneld_args: vec!["--iptables-resync=1".into(), "--kernel-resync=1".into()],
        ..LabSpec::default()
    });
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "{}", m.render());
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let want = format!("{} via {} dev eth0 proto 252", b.subnet, b.ip);
    assert!(routes(&a.netns).contains(&want), "{}", routes(&a.netns));
    assert!(
        !ip(&["-n", &a.netns, "link"]).contains("flannel.1"),
        "host-gw makes no vxlan device"
    );
    let env =
        std::fs::read_to_string(lab.state.state_dir.join(&a.name).join("subnet.env")).unwrap();
    assert!(
        env.contains("FLANNEL_MTU=1500"),
        "host-gw keeps the interface MTU: {env}"
    );
    // A wrong route is replaced, a deleted one restored.
    ip(&[
        "-n",
        &a.netns,
        "route",
        "replace",
        &b.subnet,
        "via",
        "10.0.0.99",
        "dev",
        "eth0",
    ]);
    assert!(
        eventually(Duration::from_secs(5), || routes(&a.netns).contains(&want)).is_some(),
        "{}",
        routes(&a.netns)
    );
    ip(&["-n", &a.netns, "route", "del", &b.subnet]);
    assert!(
        eventually(Duration::from_secs(5), || routes(&a.netns).contains(&want)).is_some(),
        "{}",
        routes(&a.netns)
    );
    let value = etcd_get(&lab.state, &flannel_lab::cluster::lease_key(&a.subnet)).unwrap();
    assert_eq!(
        value.trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            a.ip
        )
    );
    // The peer's lease goes: so does its route; routes of others on eth0 stay.
    ip(&[
        "-n",
        &a.netns,
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "10.0.0.77",
        "dev",
        "eth0",
    ]);
    // (b's flanneld would take a deleted lease straight back: stop it first, as a node leaving.)
    stop_flanneld(b).unwrap();
    etcd_del(&lab.state, &flannel_lab::cluster::lease_key(&b.subnet)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !routes(&a.netns)
            .contains(&b.subnet))
        .is_some(),
        "{}",
        routes(&a.netns)
    );
    assert!(
        routes(&a.netns).contains("192.0.2.0/24 via 10.0.0.77"),
        "a route that is not ours is never touched"
    );
}

#[test]
fn vxlan_direct_routing_uses_plain_routes_on_the_same_segment_only() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up_with(LabSpec {
        nodes: 3,
        pods_per_node: 1,
        segments: 2,
        direct_routing: true,
        ..LabSpec::default()
    });
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "{}", m.render());
    let (master, other_seg, same_seg) = (
        &lab.state.nodes[0],
        &lab.state.nodes[1],
        &lab.state.nodes[2],
    );
    assert_eq!(other_seg.ip, "10.0.1.51");
    let r = routes(&master.netns);
    assert!(
        r.contains(&format!(
            "{} via {} dev eth0 proto 252",
            same_seg.subnet, same_seg.ip
        )),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "{} via {} dev flannel.1 proto 252 onlink",
            other_seg.subnet,
            other_seg.subnet.trim_end_matches("/24")
        )),
        "{r}"
    );
    let f = fdb(&master.netns);
    assert!(
        f.contains(&format!("dst {} self permanent", other_seg.ip)) && !f.contains(&same_seg.ip),
        "{f}"
    );
}

#[test]
fn hand_deleted_state_comes_back_within_a_second_by_netlink_event() {
    if common::skip_without_root() {
        return;
    }
    // The resync period is long here, so only the netlink notification can explain a fast return.
    let lab = Lab::up(2, 1, &["--iptables-resync=60"]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let mac_a = vtep_mac(&a.netns);
    let gw = b.subnet.trim_end_matches("/24");
    let mac = vtep_mac(&b.netns);
    let route = format!("{} via {gw} dev flannel.1", b.subnet);
    let neigh_line = format!("{gw} lladdr {mac} PERMANENT");
    let fdb_line = format!("{mac} dst {} self permanent", b.ip);
    let all_back = || {
        routes(&a.netns).contains(&route)
            && neigh(&a.netns).contains(&neigh_line)
            && fdb(&a.netns).contains(&fdb_line)
    };
    assert!(all_back());
    for (what, args) in [
        ("route", vec!["-n", &a.netns, "route", "del", &b.subnet]),
        (
            "neighbour",
            vec!["-n", &a.netns, "neigh", "del", gw, "dev", "flannel.1"],
        ),
        ("device", vec!["-n", &a.netns, "link", "del", "flannel.1"]),
    ] {
        ip(&args);
        let t = eventually(Duration::from_secs(1), all_back);
        assert!(
            t.is_some(),
            "{what} deleted by hand did not come back within 1 s:\n{}\n{}",
            routes(&a.netns),
            fdb(&a.netns)
        );
    }
    // A MAC changed by hand goes back to the one our lease publishes.
    ip(&[
        "-n",
        &a.netns,
        "link",
        "set",
        "flannel.1",
        "address",
        "02:11:22:33:44:55",
    ]);
    assert!(
        eventually(Duration::from_secs(1), || vtep_mac(&a.netns) == mac_a).is_some(),
        "MAC not restored within 1 s"
    );
    let o = std::process::Command::new("bridge")
        .args([
            "-n",
            &a.netns,
            "fdb",
            "del",
            &mac,
            "dev",
            "flannel.1",
            "dst",
            &b.ip,
        ])
        .status()
        .unwrap();
    assert!(o.success());
    assert!(
        eventually(Duration::from_secs(1), all_back).is_some(),
        "FDB entry did not come back within 1 s"
    );
    assert_eq!(
        vtep_mac(&a.netns),
        mac_a,
        "the recreated device keeps the MAC peers know"
    );
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "{}", m.render());
}

#[test]
fn twenty_nodes_starting_together_get_distinct_subnets_and_all_stay_up() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(20, 0, &[]);
    let subnets: std::collections::BTreeSet<&str> =
        lab.state.nodes.iter().map(|n| n.subnet.as_str()).collect();
    assert_eq!(subnets.len(), 20, "{subnets:?}");
    for n in &lab.state.nodes {
        assert_eq!(
            flannel_lab::cluster::flanneld_pids(n).len(),
            1,
            "flanneld on {} exited:\n{}",
            n.name,
            std::fs::read_to_string(&n.log).unwrap_or_default()
        );
    }
}

#[test]
fn restarting_flanneld_loses_no_ping_across_nodes() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &[]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    // 700 pings at 10 ms intervals (~7 s) while both flanneld restart.
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.pods[0].netns,
            "ping",
            "-i",
            "0.01",
            "-c",
            "700",
            "-W",
            "1",
            "-q",
            &b.pods[0].ip,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut restarted = Vec::new();
    for n in [a, b] {
        restarted.push(common::lab::restart_flanneld(n));
    }
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("700 packets transmitted, 700 received, 0% packet loss"),
        "{text}"
    );
}

#[test]
fn an_etcd_outage_keeps_the_data_plane_and_costs_no_cpu_then_heals() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &["--iptables-resync=1", "--kernel-resync=1"]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let pids: Vec<i32> = lab
        .state
        .nodes
        .iter()
        .flat_map(flannel_lab::cluster::flanneld_pids)
        .collect();
    assert_eq!(pids.len(), 2);
    flannel_lab::cluster::stop_etcd(&lab.state).unwrap();
    // 30 s without etcd: pods keep talking; flanneld stays up and quiet (under 1 % of a core).
    common::assert_quiet_outage(
        &pids,
        Duration::from_secs(30),
        Duration::from_secs(5),
        0.01,
        |into| {
            assert!(
                flannel_lab::ping::ping(&a.pods[0].netns, &b.pods[0].ip),
                "ping failed {into:?} into the outage"
            )
        },
    );
    assert_eq!(
        lab.state
            .nodes
            .iter()
            .flat_map(flannel_lab::cluster::flanneld_pids)
            .count(),
        2,
        "both flanneld still running"
    );
    let _etcd = Proc(flannel_lab::cluster::start_etcd(&lab.state).unwrap());
    let p = lab.spare_octet(200);
    etcd_put(
        &lab.state,
        &format!("/coreos.com/network/subnets/10.244.{p}.0-24"),
        PEER,
    )
    .unwrap();
    let t = eventually(Duration::from_secs(5), || {
        routes(&a.netns).contains(&format!("10.244.{p}.0/24 via 10.244.{p}.0 dev flannel.1"))
    });
    assert!(
        t.is_some(),
        "a new peer was not programmed within 5 s of etcd's return:\n{}",
        std::fs::read_to_string(&a.log).unwrap_or_default()
    );
}

#[test]
fn routes_of_a_lease_deleted_while_flanneld_was_stopped_are_gone_after_it_starts() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 0, &[]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    assert!(routes(&a.netns).contains(&b.subnet));
    stop_flanneld(a).unwrap();
    stop_flanneld(b).unwrap();
    etcd_del(&lab.state, &flannel_lab::cluster::lease_key(&b.subnet)).unwrap();
    assert!(
        routes(&a.netns).contains(&b.subnet),
        "nothing changes while flanneld is stopped"
    );
    let _a = Proc(start_flanneld(a).unwrap());
    let gone = eventually(Duration::from_secs(10), || {
        !routes(&a.netns).contains(&b.subnet)
            && !fdb(&a.netns).contains(&b.ip)
            && !neigh(&a.netns).contains(b.subnet.trim_end_matches("/24"))
    });
    assert!(
        gone.is_some(),
        "stale state survived the start:\n{}\n{}",
        routes(&a.netns),
        fdb(&a.netns)
    );
}

#[test]
fn a_config_change_or_a_stolen_lease_is_reported_without_losing_state() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &["--iptables-resync=1", "--kernel-resync=1"]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let log = || std::fs::read_to_string(&a.log).unwrap_or_default();
    let before = routes(&a.netns);
    etcd_put(
        &lab.state,
        "/coreos.com/network/config",
        r#"{"Network": "10.250.0.0/16", "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    let said = eventually(Duration::from_secs(5), || {
        log().contains("the network config changed while flanneld runs: it differs")
    });
    assert!(said.is_some(), "{}", log());
    // Another writer claims our subnet.
    let key = flannel_lab::cluster::lease_key(&a.subnet);
    etcd_put(&lab.state, &key, r#"{"PublicIP":"10.0.0.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:77"}}"#).unwrap();
    let said = eventually(Duration::from_secs(5), || {
        log().contains("our lease was overwritten by another writer (PublicIP 10.0.0.77)")
    });
    assert!(said.is_some(), "{}", log());
    assert_eq!(routes(&a.netns), before, "nothing of ours was torn down");
    assert_eq!(
        flannel_lab::cluster::flanneld_pids(a).len(),
        1,
        "still running"
    );
    assert_eq!(
        log().matches("our lease was overwritten").count(),
        1,
        "said once, not every pass"
    );
    // The other node follows etcd: it now sends a's subnet to the claimant.
    let follows = eventually(Duration::from_secs(5), || {
        fdb(&b.netns).contains("02:00:00:00:00:77 dst 10.0.0.77")
    });
    assert!(follows.is_some(), "{}", fdb(&b.netns));
}

#[test]
fn a_lease_that_vanishes_while_running_is_taken_back_with_the_same_subnet() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 0, &[]);
    let a = &lab.state.nodes[0];
    let key = flannel_lab::cluster::lease_key(&a.subnet);
    let value = etcd_get(&lab.state, &key).unwrap();
    etcd_del(&lab.state, &key).unwrap();
    let back = eventually(Duration::from_secs(5), || {
        etcd_get(&lab.state, &key)
            .map(|v| v == value)
            .unwrap_or(false)
    });
    assert!(
        back.is_some(),
        "lease not taken back:\n{}",
        std::fs::read_to_string(&a.log).unwrap_or_default()
    );
    assert_eq!(
        flannel_lab::cluster::flanneld_pids(a).len(),
        1,
        "still running"
    );
}

#[test]
fn the_lease_is_renewed_when_its_margin_says_so() {
    if common::skip_without_root() {
        return;
    }
    // 24 h lease, 1439 min margin: renewal falls due one minute after the lease was taken.
    let lab = Lab::up(1, 0, &["--subnet-lease-renew-margin=1439"]);
    let a = &lab.state.nodes[0];
    let key = flannel_lab::cluster::lease_key(&a.subnet);
    let lease_id = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &a.netns, "etcdctl", "get", &key, "-w", "json",
            ])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["kvs"][0]["lease"].as_i64().unwrap_or(0)
    };
    let first = lease_id();
    assert_ne!(first, 0);
    let renewed = eventually(Duration::from_secs(80), || {
        std::fs::read_to_string(&a.log)
            .unwrap_or_default()
            .contains("lease renewed")
            && lease_id() != first
    });
    assert!(
        renewed.is_some(),
        "not renewed:\n{}",
        std::fs::read_to_string(&a.log).unwrap_or_default()
    );
    let took = renewed.unwrap();
    assert!(
        took > Duration::from_secs(40),
        "renewed too early ({took:?})"
    );
}

/// The labs that read-only tests share live until the test process exits, and go down then,
/// pass or fail, as a test's own lab goes down when its test ends: no namespace, daemon or
/// state directory left behind.
#[test]
fn a_shared_lab_goes_down_when_the_test_process_exits() {
    if common::skip_without_root() {
        return;
    }
    let me = std::env::current_exe().expect("the test executable");
    let test = "doctor::a_healthy_vxlan_node_passes_every_check";
    // Once passing (libtest returns from main), once failing (it calls exit(101)).
    for fail in [false, true] {
        let mut child = std::process::Command::new(&me);
        child.args(["--exact", test, "--nocapture", "--test-threads=1"]);
        if fail {
            child.env("FLANNEL_TEST_FAIL_IN_SHARED_LAB", "1");
        }
        let out = child.output().expect("run the test executable");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), !fail, "{text}");
        let (name, root) = text
            .lines()
            .find_map(|l| l.strip_prefix("shared lab up: "))
            .and_then(|l| l.trim().split_once(' '))
            .unwrap_or_else(|| panic!("no shared lab was made: {text}"));
        let left = ip(&["netns", "list"]);
        assert!(
            !left.lines().any(|l| l.starts_with(name)),
            "{name} left namespaces behind:\n{left}"
        );
        let procs = std::process::Command::new("pgrep")
            .args(["-f", name])
            .output()
            .expect("pgrep");
        assert!(
            procs.stdout.is_empty(),
            "{name} left processes behind: {}",
            String::from_utf8_lossy(&procs.stdout)
        );
        assert!(
            !std::path::Path::new(root).exists(),
            "{name} left its state in {root}"
        );
    }
}
