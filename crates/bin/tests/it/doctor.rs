//! `flannelctl doctor` on real lab nodes: healthy nodes pass every check in every backend and
//! family; each check, broken on a node the way users break it, fails with its message and
//! passes again after the operator runs the fix command it printed.

use crate::common;

use common::ctl::{ctl, doctor, failed, fails_then_fix, sh_in, verdict, Paused};
use common::eventually;
use common::lab::Lab;
use flannel_lab::{IpFamily, LabSpec};
use std::time::Duration;

fn spec(backend: &str, family: IpFamily, nftables: bool) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 1,
        backend: backend.into(),
        ip_family: family,
        nftables,
        ..LabSpec::default()
    }
}

/// A lab of the test's own, for a test that breaks something.
fn lab(backend: &str, family: IpFamily, nftables: bool) -> Lab {
    Lab::up_with(spec(backend, family, nftables))
}

/// The lab the checks of a healthy node share (they only read), with trace's walks.
fn healthy(backend: &str, family: IpFamily, nftables: bool) -> &'static Lab {
    Lab::shared(spec(backend, family, nftables))
}

fn all_pass(lab: &Lab) {
    for n in &lab.state.nodes {
        let (code, v) = doctor(n, &[]);
        assert_eq!(failed(&v), Vec::<String>::new(), "{}: {v:#?}", n.name);
        assert_eq!(code, 0);
        assert!(v.len() >= 12, "every check ran: {v:#?}");
    }
    // The human report says the same.
    let (code, text) = ctl(&lab.state.nodes[0], &["doctor"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 failed"), "{text}");
}

#[test]
fn a_healthy_vxlan_node_passes_every_check() {
    if common::skip_without_root() {
        return;
    }
    all_pass(healthy("vxlan", IpFamily::V4, false));
}

#[test]
fn a_healthy_host_gw_node_passes_every_check() {
    if common::skip_without_root() {
        return;
    }
    all_pass(healthy("host-gw", IpFamily::V4, false));
}

#[test]
fn a_healthy_udp_node_passes_every_check() {
    if common::skip_without_root() {
        return;
    }
    all_pass(healthy("udp", IpFamily::V4, false));
}

#[test]
fn healthy_wireguard_nodes_pass_every_check_in_both_families() {
    if common::skip_without_root() {
        return;
    }
    all_pass(healthy("wireguard", IpFamily::Dual, false));
}

#[test]
fn healthy_dual_stack_nodes_pass_every_check_with_vxlan_and_host_gw() {
    if common::skip_without_root() {
        return;
    }
    all_pass(healthy("vxlan", IpFamily::Dual, false));
    all_pass(healthy("host-gw", IpFamily::Dual, true));
}

#[test]
fn a_healthy_ipv6_only_node_in_kube_mode_passes_every_check() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up_with(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        ip_family: IpFamily::V6,
        datastore: flannel_lab::cluster::Datastore::Kube,
        ..LabSpec::default()
    });
    all_pass(&lab);
    // Its subnet.env is the pod's (/run/flannel in the node's mount namespace): a wrong MTU
    // there is found and fixed where the pod sees it.
    let n = &lab.state.nodes[1];
    sh_in(n, "echo FLANNEL_MTU=1280 >> /run/flannel/subnet.env", &[]);
    let (_, v) = doctor(n, &[]);
    fails_then_fix(n, &v, "subnet_env", "FLANNEL_MTU is 1280");
    assert_eq!(failed(&doctor(n, &[]).1), Vec::<String>::new());
}

#[test]
fn sysctls_mtu_and_a_dropped_port_are_found_and_the_printed_fixes_work() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab("vxlan", IpFamily::V4, false);
    let n = &lab.state.nodes[0];
    // What users report: a node image with forwarding off and strict rp_filter, br_netfilter
    // off, a bridge left at 1500, a host firewall closing the VXLAN port.
    sh_in(
        n,
        "sysctl -w net.ipv4.ip_forward=0 net.ipv4.conf.all.rp_filter=1 \
         net.bridge.bridge-nf-call-iptables=0 && ip link set cni0 mtu 1500 \
         && iptables -I INPUT -p udp --dport 8472 -j DROP",
        &[],
    );
    let (code, v) = doctor(n, &[]);
    assert_eq!(code, 1, "any failure is a non-zero exit");
    assert_eq!(
        failed(&v),
        [
            "ip_forward",
            "rp_filter",
            "br_netfilter",
            "mtu",
            "input_port"
        ]
    );
    fails_then_fix(n, &v, "ip_forward", "net.ipv4.ip_forward is 0");
    fails_then_fix(
        n,
        &v,
        "rp_filter",
        "strict reverse path filtering on flannel.1",
    );
    fails_then_fix(n, &v, "br_netfilter", "bridge-nf-call-iptables is 0");
    fails_then_fix(n, &v, "mtu", "cni0 has MTU 1500, above the 1450");
    fails_then_fix(n, &v, "input_port", "drops UDP port 8472");
    let (code, v) = doctor(n, &[]);
    assert_eq!((code, failed(&v)), (0, vec![]), "{v:#?}");
    assert!(flannel_lab::ping::ping_all(&lab.state).all_ok());
}

#[test]
fn drift_flanneld_would_heal_is_found_from_a_saved_state_while_it_is_stopped() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab("vxlan", IpFamily::V4, false);
    let (n, peer) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let from = format!("--state-file={}", save_state(n).display());
    let paused = Paused::flanneld(n);
    // A MAC changed by hand (it also flushes the device's neighbour entries).
    sh_in(n, "ip link set flannel.1 address 02:11:11:11:11:11", &[]);
    let (code, v) = doctor(n, &[&from]);
    assert_eq!(code, 1);
    assert_eq!(failed(&v), ["flanneld", "device", "peers"], "{v:#?}");
    assert!(verdict(&v, "flanneld")["problems"]
        .to_string()
        .contains("no answer"));
    fails_then_fix(n, &v, "device", "flannel.1 has MAC 02:11:11:11:11:11");
    fails_then_fix(n, &v, "peers", "is missing");
    // A deleted FDB entry, a stale neighbour, flushed masquerade rules, an edited subnet.env.
    let peer_mac = common::link_mac(&peer.netns, "flannel.1");
    sh_in(
        n,
        &format!(
            "ip neigh replace 10.244.254.0 lladdr 02:00:00:00:00:fe dev flannel.1 nud permanent \
             && bridge fdb del {peer_mac} dev flannel.1 dst {} self \
             && iptables -t nat -F FLANNEL-POSTRTG \
             && echo FLANNEL_MTU=1400 >> {}",
            peer.ip,
            n.subnet_file.display()
        ),
        &[],
    );
    let (_, v) = doctor(n, &[&from]);
    assert_eq!(
        failed(&v),
        ["flanneld", "peers", "subnet_env", "firewall"],
        "{v:#?}"
    );
    let fix = fails_then_fix(
        n,
        &v,
        "peers",
        &format!("fdb {peer_mac} dst {} dev flannel.1 is missing", peer.ip),
    );
    assert!(
        fix.contains("ip neigh del 10.244.254.0 dev flannel.1"),
        "{fix}"
    );
    assert!(verdict(&v, "peers")["problems"]
        .to_string()
        .contains("neighbour 10.244.254.0 lladdr 02:00:00:00:00:fe dev flannel.1 is stale"));
    fails_then_fix(
        n,
        &v,
        "subnet_env",
        "FLANNEL_MTU is 1400, our lease says 1450",
    );
    fails_then_fix(
        n,
        &v,
        "firewall",
        "iptables rule missing: -t nat FLANNEL-POSTRTG",
    );
    let (_, v) = doctor(n, &[&from]);
    assert_eq!(failed(&v), ["flanneld"], "{v:#?}");
    drop(paused);
    let (code, v) = doctor(n, &[]);
    assert_eq!((code, failed(&v)), (0, vec![]), "{v:#?}");
    assert!(flannel_lab::ping::ping_all(&lab.state).all_ok());
}

#[test]
fn host_gw_missing_and_stale_routes_and_udp_device_mtu() {
    if common::skip_without_root() {
        return;
    }
    let hg = lab("host-gw", IpFamily::V4, false);
    let (n, peer) = (&hg.state.nodes[0], &hg.state.nodes[1]);
    let from = format!("--state-file={}", save_state(n).display());
    let paused = Paused::flanneld(n);
    sh_in(
        n,
        &format!(
            "ip route del {} && ip route add 10.244.250.0/24 via {} dev eth0 proto 252",
            peer.subnet, peer.ip
        ),
        &[],
    );
    let (_, v) = doctor(n, &[&from]);
    let fix = fails_then_fix(
        n,
        &v,
        "peers",
        &format!("route {} via {} dev eth0 is missing", peer.subnet, peer.ip),
    );
    assert!(
        fix.contains("ip route del 10.244.250.0/24 dev eth0"),
        "{fix}"
    );
    drop(paused);
    let (_, v) = doctor(n, &[]);
    assert_eq!(failed(&v), Vec::<String>::new(), "{v:#?}");

    let udp = lab("udp", IpFamily::V4, false);
    let n = &udp.state.nodes[0];
    let from = format!("--state-file={}", save_state(n).display());
    let paused = Paused::flanneld(n);
    sh_in(
        n,
        "ip link set flannel0 mtu 1400 && iptables -A INPUT -p udp --dport 8285 -j REJECT",
        &[],
    );
    let (_, v) = doctor(n, &[&from]);
    fails_then_fix(n, &v, "mtu", "flannel0 has MTU 1400, not 1472");
    fails_then_fix(n, &v, "input_port", "drops UDP port 8285");
    drop(paused);
    let (_, v) = doctor(n, &[]);
    assert_eq!(failed(&v), Vec::<String>::new(), "{v:#?}");
}

/// `flannelctl state` saved beside the node's subnet.env (in the lab's state directory), for
/// `doctor --state-file` while flanneld is stopped: a stopped flanneld answers nothing.
fn save_state(n: &flannel_lab::state::NodeState) -> std::path::PathBuf {
    let p = n.subnet_file.with_file_name("doctor-state.json");
    let (code, s) = ctl(n, &["state"]);
    assert_eq!(code, 0, "{s}");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn two_leases_on_one_public_ip_and_a_datastore_or_flanneld_down() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab("vxlan", IpFamily::V4, false);
    let (n, other) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    // A second node that came up with the same eth0 address (the Vagrant NAT trap).
    let o = lab.spare_octet(200);
    let key = format!("/coreos.com/network/subnets/10.244.{o}.0-24");
    flannel_lab::cluster::etcd_put(
        &lab.state,
        &key,
        &format!(r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}}}"#, other.ip),
    )
    .unwrap();
    let mut v = Vec::new();
    let seen = eventually(Duration::from_secs(5), || {
        v = doctor(n, &[]).1;
        verdict(&v, "public_ip")["ok"] == false
    });
    assert!(seen.is_some(), "{v:#?}");
    let p = verdict(&v, "public_ip");
    assert!(
        p["problems"]
            .to_string()
            .contains(&format!("2 leases publish the public IP {}", other.ip)),
        "{p:#}"
    );
    // The fix removes the impostor, not the real node's lease (etcdctl pointed at the lab's etcd).
    let fix = p["fix"].as_str().unwrap();
    assert!(fix.contains(&key), "{fix}");
    sh_in(n, fix, &[("ETCDCTL_ENDPOINTS", "http://10.0.0.50:2379")]);
    let gone = eventually(Duration::from_secs(5), || {
        verdict(&doctor(n, &[]).1, "public_ip")["ok"] == true
    });
    assert!(gone.is_some());

    // etcd down: flanneld says what it cannot do, doctor reports it.
    flannel_lab::cluster::stop_etcd(&lab.state).unwrap();
    let down = eventually(Duration::from_secs(10), || {
        v = doctor(n, &[]).1;
        verdict(&v, "datastore")["ok"] == false
    });
    assert!(down.is_some(), "{v:#?}");
    assert!(verdict(&v, "datastore")["problems"]
        .to_string()
        .contains("cannot read its datastore"));
    let _etcd = common::Proc(flannel_lab::cluster::start_etcd(&lab.state).unwrap());
    let back = eventually(Duration::from_secs(20), || {
        verdict(&doctor(n, &[]).1, "datastore")["ok"] == true
    });
    assert!(back.is_some());

    // flanneld gone: said first, and the checks that need its state are not guessed.
    flannel_lab::cluster::stop_flanneld(n).unwrap();
    let (code, v) = doctor(n, &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&v), ["flanneld"]);
    assert!(verdict(&v, "flanneld")["problems"]
        .to_string()
        .contains("flanneld does not answer"));
    let _f = common::Proc(flannel_lab::cluster::start_flanneld(n).unwrap());
    let up = eventually(Duration::from_secs(10), || doctor(n, &[]).0 == 0);
    assert!(up.is_some(), "{:#?}", doctor(n, &[]).1);
}

#[test]
fn nftables_and_ipv6_drift_is_found_and_fixed() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab("vxlan", IpFamily::Dual, true);
    let (n, peer) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let from = format!("--state-file={}", save_state(n).display());
    let paused = Paused::flanneld(n);
    let mac6 = common::link_mac(&peer.netns, "flannel-v6.1");
    sh_in(
        n,
        &format!(
            "nft flush chain ip flannel-ipv4 postrtg && bridge fdb del {mac6} dev flannel-v6.1 dst {} self \
             && sysctl -w net.ipv6.conf.all.forwarding=0",
            peer.ip6
        ),
        &[],
    );
    let (_, v) = doctor(n, &[&from]);
    assert_eq!(
        failed(&v),
        ["flanneld", "ip_forward", "peers", "firewall"],
        "{v:#?}"
    );
    fails_then_fix(n, &v, "ip_forward", "net.ipv6.conf.all.forwarding is 0");
    fails_then_fix(
        n,
        &v,
        "peers",
        &format!("fdb {mac6} dst {} dev flannel-v6.1 is missing", peer.ip6),
    );
    fails_then_fix(n, &v, "firewall", "nftables table ip flannel-ipv4 differs");
    let (_, v) = doctor(n, &[&from]);
    assert_eq!(failed(&v), ["flanneld"], "{v:#?}");
    drop(paused);
    assert!(flannel_lab::ping::ping_all(&lab.state).all_ok());
}
