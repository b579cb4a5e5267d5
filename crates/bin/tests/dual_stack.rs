//! Dual stack end to end in the lab: an IPv6 underlay beside the tutorial's IPv4 one, pods with
//! both addresses, vxlan (`flannel-v6.1`) and host-gw carrying both families, and the IPv6
//! overlay healing like the IPv4 one.

mod common;

use common::lab::Lab;
use common::{eventually, ip};
use flannel_lab::{IpFamily, LabSpec};
use std::time::Duration;

fn dual(backend: &str, args: &[&str]) -> Lab {
    Lab::up_with(LabSpec {
        nodes: 3,
        pods_per_node: 1,
        backend: backend.into(),
        ip_family: IpFamily::Dual,
        flanneld_args: args.iter().map(|s| s.to_string()).collect(),
        ..LabSpec::default()
    })
}

fn assert_every_pair_answers(lab: &Lab) {
    let m4 = flannel_lab::ping::ping_all(&lab.state);
    assert!(m4.all_ok(), "IPv4:\n{}", m4.render());
    let m6 = flannel_lab::ping::ping_all_in(&lab.state, true);
    assert!(m6.all_ok(), "IPv6:\n{}", m6.render());
}

#[test]
fn dual_stack_vxlan_answers_every_pair_in_both_families() {
    if common::skip_without_root() {
        return;
    }
    let lab = dual("vxlan", &[]);
    assert_every_pair_answers(&lab);
    let n = &lab.state.nodes[0];
    assert!(n.pods[0].ip6.starts_with("fd00:10:244:"), "{:?}", n.pods[0]);
    let link = ip(&["-n", &n.netns, "-d", "link", "show", "flannel-v6.1"]);
    assert!(
        link.contains("mtu 1430"),
        "VXLAN over IPv6 costs 70 bytes: {link}"
    );
    assert!(link.contains(&format!("local {}", n.ip6)), "{link}");
    let env = std::fs::read_to_string(&n.subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=1430"), "{env}");
    assert!(env.contains("FLANNEL_IPV6_SUBNET="), "{env}");
    // The lease publishes the v6 VTEP: upstream's key form and BackendV6Data.
    let key = format!(
        "{}&{}",
        flannel_lab::cluster::lease_key(&n.subnet),
        n.subnet6.replace('/', "-")
    );
    let value = flannel_lab::cluster::etcd_get(&lab.state, &key).unwrap();
    let mac = ip(&["-n", &n.netns, "link", "show", "flannel-v6.1"]);
    let mac = mac
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(
        value.contains(&format!(r#""BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
        "{value}"
    );
    assert!(
        value.contains(&format!(r#""PublicIPv6":"{}""#, n.ip6)),
        "{value}"
    );
}

#[test]
fn dual_stack_host_gw_answers_every_pair_in_both_families() {
    if common::skip_without_root() {
        return;
    }
    let lab = dual("host-gw", &[]);
    assert_every_pair_answers(&lab);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let routes = ip(&["-n", &a.netns, "-6", "route", "show", "proto", "252"]);
    assert!(
        routes.contains(&format!("{} via {} dev eth0", b.subnet6, b.ip6)),
        "{routes}"
    );
}

#[test]
fn hand_deleted_ipv6_entries_come_back_within_a_second_and_go_with_their_lease() {
    if common::skip_without_root() {
        return;
    }
    // The kernel pass is 30 s away: only the notifications can explain a fast return.
    let lab = dual("vxlan", &["--iptables-resync=60"]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let gw = b.subnet6.trim_end_matches("/64");
    let dev = "flannel-v6.1";
    let route_line = format!("{} via {gw} dev {dev}", b.subnet6);
    let entries = || {
        (
            ip(&["-n", &a.netns, "-6", "route"]).contains(&route_line),
            ip(&["-n", &a.netns, "-6", "neigh", "show", "dev", dev]).contains(gw),
            std::process::Command::new("bridge")
                .args(["-n", &a.netns, "fdb", "show", "dev", dev])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("dst {}", b.ip6)))
                .unwrap_or(false),
        )
    };
    assert_eq!(entries(), (true, true, true));
    let mac = ip(&["-n", &b.netns, "link", "show", dev]);
    let mac = mac
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    for (what, cmd) in [
        (
            "route",
            vec!["ip", "-n", &a.netns, "-6", "route", "del", &b.subnet6],
        ),
        (
            "neighbour",
            vec!["ip", "-n", &a.netns, "-6", "neigh", "del", gw, "dev", dev],
        ),
        (
            "fdb",
            vec![
                "bridge", "-n", &a.netns, "fdb", "del", &mac, "dev", dev, "dst", &b.ip6,
            ],
        ),
    ] {
        let st = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .status()
            .unwrap();
        assert!(st.success(), "{cmd:?}");
        assert!(
            eventually(Duration::from_secs(1), || entries() == (true, true, true)).is_some(),
            "the IPv6 {what} deleted by hand did not come back within 1 s: {:?}",
            entries()
        );
    }
    assert_every_pair_answers(&lab);
    // b's lease goes: its IPv6 entries leave a's flannel-v6.1 too.
    let key = format!(
        "{}&{}",
        flannel_lab::cluster::lease_key(&b.subnet),
        b.subnet6.replace('/', "-")
    );
    flannel_lab::cluster::stop_flanneld(b).unwrap();
    flannel_lab::cluster::etcd_del(&lab.state, &key).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || entries()
            == (false, false, false))
        .is_some(),
        "{:?}",
        entries()
    );
}
