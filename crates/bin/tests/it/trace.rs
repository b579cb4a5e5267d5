//! `flannelctl trace` on lab nodes: the tutorial's walk from live kernel state, for every
//! backend and across two underlay segments, and a broken step flagged with its cause.

use crate::common;

use common::ctl::{ctl, sh_in, Paused};
use common::lab::Lab;
use flannel_lab::LabSpec;
use serde_json::Value;

/// Where `flannel-lab trace` captures on vxlan (pa/pb: the pods, A/B: their nodes).
const VXLAN_HOPS: [&str; 8] = [
    "pa eth0",
    "A cni0",
    "A flannel.1",
    "A eth0",
    "B eth0",
    "B flannel.1",
    "B cni0",
    "pb eth0",
];

fn spec(backend: &str, segments: usize) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 1,
        backend: backend.into(),
        segments,
        ..LabSpec::default()
    }
}

/// A lab of the test's own, for a test that breaks something.
fn lab(backend: &str, segments: usize) -> Lab {
    Lab::up_with(spec(backend, segments))
}

/// The lab the walks that only read share, with doctor's checks of a healthy node.
fn healthy(backend: &str) -> &'static Lab {
    Lab::shared(spec(backend, 1))
}

/// `flannelctl trace -o json` from the first node's pod to the second node's: exit code and
/// the steps.
fn trace(lab: &Lab) -> (i32, Vec<Value>) {
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let (code, out) = ctl(a, &["trace", "-o", "json", &a.pods[0].ip, &b.pods[0].ip]);
    let start = out.find('[').unwrap_or(0);
    let end = out.rfind(']').map_or(out.len(), |e| e + 1);
    let steps: Vec<Value> =
        serde_json::from_str(&out[start..end]).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, steps)
}

/// `flannel-lab trace` between the first pods of the two nodes: the walk proven by captures.
fn proven(lab: &Lab, hop_names: &[&str]) {
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let r = flannel_lab::trace::run(&lab.state, &a.pods[0].name, &b.pods[0].name)
        .expect("flannel-lab trace");
    let text = flannel_lab::trace::render(&r);
    assert!(r.ok, "{text}");
    let at: Vec<&str> = r.hops.iter().map(|h| h.at.as_str()).collect();
    let want: Vec<String> = hop_names
        .iter()
        .map(|h| {
            h.replace("pa", &a.pods[0].name)
                .replace("pb", &b.pods[0].name)
                .replace('A', &a.name)
                .replace('B', &b.name)
        })
        .collect();
    assert_eq!(at, want, "{text}");
    for h in &r.hops {
        assert!(h.packets >= flannel_lab::trace::PINGS, "{}: {text}", h.at);
    }
    if lab.state.backend != "host-gw" {
        assert_eq!(r.outer_dst.as_deref(), Some(b.ip.as_str()), "{text}");
    }
    assert!(text.contains("path:"), "{text}");
}

fn hops(steps: &[Value]) -> Vec<String> {
    steps
        .iter()
        .map(|s| s["hop"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn detail<'a>(steps: &'a [Value], hop: &str) -> &'a str {
    steps
        .iter()
        .find(|s| s["hop"] == hop)
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_else(|| panic!("no {hop} step in {steps:#?}"))
}

#[test]
fn vxlan_walk_names_route_neighbour_fdb_and_the_peers_public_ip() {
    if common::skip_without_root() {
        return;
    }
    let lab = healthy("vxlan");
    let b = &lab.state.nodes[1];
    let (code, s) = trace(lab);
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(
        hops(&s),
        [
            "pod eth0 → cni0",
            "route",
            "neighbour",
            "fdb",
            "encapsulation",
            "underlay route",
            "peer",
            "masquerade"
        ]
    );
    let gw = b.subnet.replace(".0/24", ".0");
    assert!(detail(&s, "route").contains(&format!("{} via {gw} dev flannel.1", b.subnet)));
    let mac = common::link_mac(&b.netns, "flannel.1");
    assert!(detail(&s, "neighbour").contains(&format!("{gw} lladdr {mac}")));
    assert!(detail(&s, "fdb").contains(&format!("{mac} dst {} dev flannel.1", b.ip)));
    assert!(detail(&s, "encapsulation").contains(&format!(
        "VXLAN VNI 1, UDP port 8472, outer 10.0.0.50 → {}",
        b.ip
    )));
    assert!(detail(&s, "masquerade").starts_with("no"));
    // The human form ends with the path.
    let (_, text) = ctl(
        &lab.state.nodes[0],
        &["trace", &lab.state.nodes[0].pods[0].ip, &b.pods[0].ip],
    );
    assert!(
        text.contains("path: pod eth0 → cni0 ─▶ route ─▶ neighbour ─▶ fdb"),
        "{text}"
    );
    proven(lab, &VXLAN_HOPS);
}

#[test]
fn host_gw_and_udp_walks() {
    if common::skip_without_root() {
        return;
    }
    let hg = healthy("host-gw");
    let b = &hg.state.nodes[1];
    let (code, s) = trace(hg);
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(
        hops(&s),
        [
            "pod eth0 → cni0",
            "route",
            "eth0",
            "underlay route",
            "peer",
            "masquerade"
        ]
    );
    assert!(detail(&s, "route").contains(&format!("{} via {} dev eth0", b.subnet, b.ip)));
    proven(
        hg,
        &["pa eth0", "A cni0", "A eth0", "B eth0", "B cni0", "pb eth0"],
    );

    let udp = healthy("udp");
    let b = &udp.state.nodes[1];
    let (code, s) = trace(udp);
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(
        hops(&s),
        [
            "pod eth0 → cni0",
            "route",
            "flannel0",
            "encapsulation",
            "underlay route",
            "peer",
            "masquerade"
        ]
    );
    assert!(detail(&s, "encapsulation").contains(&format!("UDP to {}:8285", b.ip)));
    proven(
        udp,
        &[
            "pa eth0",
            "A cni0",
            "A flannel0",
            "A eth0",
            "B eth0",
            "B flannel0",
            "B cni0",
            "pb eth0",
        ],
    );
}

#[test]
fn wireguard_walk_names_the_peer_key_and_every_hop_sees_the_packet() {
    if common::skip_without_root() {
        return;
    }
    let wg = healthy("wireguard");
    let b = &wg.state.nodes[1];
    let (code, s) = trace(wg);
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(
        hops(&s),
        [
            "pod eth0 → cni0",
            "route",
            "flannel-wg",
            "encapsulation",
            "underlay route",
            "peer",
            "masquerade"
        ]
    );
    let lease =
        flannel_lab::cluster::etcd_get(&wg.state, &flannel_lab::cluster::lease_key(&b.subnet))
            .unwrap();
    let lease: Value = serde_json::from_str(lease.trim()).unwrap();
    let key = lease["BackendData"]["PublicKey"].as_str().unwrap();
    assert!(detail(&s, "flannel-wg").contains(key), "{s:#?}");
    assert!(detail(&s, "encapsulation").contains(&format!("UDP to {}:51820", b.ip)));
    proven(
        wg,
        &[
            "pa eth0",
            "A cni0",
            "A flannel-wg",
            "A eth0",
            "B eth0",
            "B flannel-wg",
            "B cni0",
            "pb eth0",
        ],
    );
}

#[test]
fn across_two_segments_the_underlay_goes_through_the_router() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab("vxlan", 2);
    let b = &lab.state.nodes[1];
    let (code, s) = trace(&lab);
    assert_eq!(code, 0, "{s:#?}");
    let under = detail(&s, "underlay route");
    assert!(under.starts_with(&format!("{} via ", b.ip)), "{under}");
    assert!(detail(&s, "fdb").contains(&format!("dst {}", b.ip)));
    proven(&lab, &VXLAN_HOPS);
}

#[test]
fn a_deleted_fdb_entry_is_the_flagged_step_while_flanneld_is_stopped() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab("vxlan", 1);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let saved = common::TempDir::new("tr");
    let file = saved.path().join("state.json");
    std::fs::write(&file, ctl(a, &["state"]).1).unwrap();
    let paused = Paused::flanneld(a);
    let mac = common::link_mac(&b.netns, "flannel.1");
    sh_in(
        a,
        &format!("bridge fdb del {mac} dev flannel.1 dst {} self", b.ip),
        &[],
    );
    let (code, out) = ctl(
        a,
        &[
            "trace",
            &format!("--state-file={}", file.display()),
            &a.pods[0].ip,
            &b.pods[0].ip,
        ],
    );
    drop(paused);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "✗ fdb              no entry for {mac} on flannel.1"
        )),
        "{out}"
    );
    assert!(
        out.contains("broken: the device does not know which host has that MAC"),
        "{out}"
    );
    assert!(
        !out.contains("underlay route"),
        "the walk stops at the broken step: {out}"
    );
}

#[test]
fn in_a_dual_stack_lab_the_ipv6_walk_goes_through_flannel_v6() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up_with(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        ip_family: flannel_lab::IpFamily::Dual,
        ..LabSpec::default()
    });
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let (code, text) = ctl(a, &["trace", &a.pods[0].ip6, &b.pods[0].ip6]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("dst {} dev flannel-v6.1", b.ip6)),
        "{text}"
    );
    assert!(text.contains("(inner 1430 + 70)"), "{text}");
    let r = flannel_lab::trace::run(&lab.state, &a.pods[0].ip6, &b.pods[0].ip6).unwrap();
    let text = flannel_lab::trace::render(&r);
    assert!(r.ok, "{text}");
    assert_eq!(r.outer_dst.as_deref(), Some(b.ip6.as_str()), "{text}");
    assert!(
        r.hops
            .iter()
            .any(|h| h.at == format!("{} flannel-v6.1", b.name)),
        "{text}"
    );
}
