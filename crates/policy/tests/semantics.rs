#![allow(clippy::unwrap_used)]
//! One table test per rule of the NetworkPolicy semantics: policies as the API sends them
//! (decoded by `decode`), the node rulesets the compiler writes, run by the interpreter.

mod support;

use flannel_policy::compile::Cluster;
use flannel_policy::decode;
use serde_json::{json, Value};
use support::nft::{Packet, Table};

/// Namespaces x, y, z (y labelled `team=b`); pods a, b, c in each (`pod=<name>`), a and c
/// on n1, b on n2; x/a is dual-stack and names port 80/TCP `http` and 81/UDP `dns`.
fn cluster(policies: &[Value]) -> Cluster {
    let mut c = Cluster::default();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        let labels = if *ns == "y" {
            json!({"team": "b"})
        } else {
            json!({})
        };
        let n = decode::namespace(&json!({"metadata": {"name": ns, "labels": labels}})).unwrap();
        c.namespaces.insert(n.name.clone(), n);
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            let node = if *pod == "b" { "n2" } else { "n1" };
            let v4 = format!(
                "10.244.{}.{}",
                1 + usize::from(node == "n2"),
                10 * (i + 1) + j
            );
            let mut ips = vec![json!({"ip": v4})];
            if *ns == "x" && *pod == "a" {
                ips.push(json!({"ip": "fd00:0:0:1::a"}));
            }
            let ports = if *ns == "x" && *pod == "a" {
                json!([{"name": "http", "containerPort": 80}, {"name": "dns", "containerPort": 81, "protocol": "UDP"}])
            } else {
                json!([])
            };
            let p = decode::pod(&json!({
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": v4, "podIPs": ips}
            }))
            .unwrap();
            c.pods.insert(p.key(), p);
        }
    }
    for v in policies {
        let p = decode::policy(v).unwrap();
        c.policies.insert(p.key(), p);
    }
    c
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Whether a new packet from pod `src` (`ns/pod`, or an address) to pod `dst` passes.
fn passes(c: &Cluster, src: &str, dst: &str, proto: &'static str, port: u16) -> bool {
    passes_fam(c, src, dst, proto, port, false)
}

fn passes_fam(c: &Cluster, src: &str, dst: &str, proto: &'static str, port: u16, v6: bool) -> bool {
    let ip = |p: &flannel_policy::Pod| {
        *p.ips
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .expect("address of the family")
    };
    let d = &c.pods[dst];
    let s = c.pods.get(src);
    let pkt = Packet {
        src: s.map(ip).unwrap_or_else(|| src.parse().expect("address")),
        dst: ip(d),
        proto,
        dport: port,
    };
    let node = |n: &str| Table::parse(&flannel_policy::compile(c, n).script());
    match s {
        Some(s) if s.node == d.node => node(&s.node).passes(&pkt),
        Some(s) => node(&s.node).passes(&pkt) && node(&d.node).passes(&pkt),
        None => node(&d.node).passes(&pkt),
    }
}

#[test]
fn pods_no_policy_selects_are_untouched() {
    let c = cluster(&[np(
        "x",
        "only-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    )]);
    assert!(!passes(&c, "y/b", "x/a", "tcp", 80));
    assert!(passes(&c, "y/b", "x/b", "tcp", 80));
    assert!(
        passes(&c, "x/a", "y/b", "tcp", 80),
        "ingress-only policy: x/a's egress is open"
    );
}

#[test]
fn default_deny_all_and_allow_all_precedence() {
    let deny = np(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let c = cluster(std::slice::from_ref(&deny));
    assert!(!passes(&c, "x/b", "x/a", "udp", 81));
    assert!(!passes(&c, "x/a", "y/a", "tcp", 80), "egress denied");
    assert!(
        !passes(&c, "x/a", "x/c", "tcp", 80),
        "same node, denied both ways"
    );
    let allow = np(
        "x",
        "allow",
        json!({"podSelector": {}, "ingress": [{}], "egress": [{}]}),
    );
    let c = cluster(&[deny, allow]);
    assert!(passes(&c, "x/b", "x/a", "udp", 81) && passes(&c, "x/a", "y/a", "tcp", 80));
}

#[test]
fn pod_and_namespace_selectors_and_or() {
    let and = np(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
    );
    let c = cluster(&[and]);
    assert!(passes(&c, "y/b", "x/a", "tcp", 80));
    assert!(
        !passes(&c, "y/c", "x/a", "tcp", 80)
            && !passes(&c, "z/b", "x/a", "tcp", 80)
            && !passes(&c, "x/b", "x/a", "tcp", 80)
    );
    let or = np(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}}, {"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
    );
    let c = cluster(&[or]);
    assert!(passes(&c, "x/b", "x/a", "tcp", 80) && passes(&c, "y/c", "x/a", "tcp", 80));
    assert!(!passes(&c, "z/b", "x/a", "tcp", 80) && !passes(&c, "x/c", "x/a", "tcp", 80));
    let by_name = np(
        "x",
        "name",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]}}]}]}),
    );
    let c = cluster(&[by_name]);
    assert!(passes(&c, "z/c", "x/a", "tcp", 80) && !passes(&c, "x/b", "x/a", "tcp", 80));
    let all_ns = np(
        "x",
        "all-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    let c = cluster(&[all_ns]);
    assert!(
        passes(&c, "z/c", "x/a", "tcp", 80) && !passes(&c, "192.168.9.9", "x/a", "tcp", 80),
        "every pod, not every address"
    );
}

#[test]
fn ports_numbers_ranges_names_protocols() {
    let c = cluster(&[np(
        "x",
        "ports",
        json!({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000}, {"protocol": "UDP", "port": "dns"}]}]}),
    )]);
    assert!(passes(&c, "y/a", "x/a", "tcp", 80));
    assert!(!passes(&c, "y/a", "x/a", "udp", 80), "UDP 80 is not TCP 80");
    assert!(!passes(&c, "y/a", "x/a", "sctp", 80), "SCTP is not TCP");
    assert!(passes(&c, "y/a", "x/a", "udp", 1500) && !passes(&c, "y/a", "x/a", "udp", 2001));
    assert!(passes(&c, "y/a", "x/a", "udp", 81), "x/a names 81/UDP dns");
    assert!(
        !passes(&c, "y/a", "x/b", "udp", 81),
        "x/b has no port named dns"
    );
    let sctp = cluster(&[np(
        "x",
        "sctp",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
    )]);
    assert!(passes(&sctp, "y/a", "x/a", "sctp", 80) && !passes(&sctp, "y/a", "x/a", "tcp", 80));
    let egress_named = cluster(&[np(
        "y",
        "to-http",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
    )]);
    assert!(
        passes(&egress_named, "y/b", "x/a", "tcp", 80),
        "resolved on the destination"
    );
    assert!(!passes(&egress_named, "y/b", "x/b", "tcp", 80));
}

#[test]
fn ip_blocks_with_except_cover_pod_addresses_and_both_families() {
    let c = cluster(&[np(
        "x",
        "cidr",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}},
        {"ipBlock": {"cidr": "fd00::/16"}}]}]}),
    )]);
    assert!(
        passes(&c, "y/a", "x/a", "tcp", 80),
        "10.244.1.x is in the block"
    );
    assert!(
        !passes(&c, "y/b", "x/a", "tcp", 80),
        "10.244.2.x is excepted"
    );
    assert!(!passes(&c, "192.168.1.1", "x/a", "tcp", 80));
    assert!(passes_fam(&c, "fd00:0:0:9::1", "x/a", "tcp", 80, true));
    assert!(!passes_fam(&c, "fe80::1", "x/a", "tcp", 80, true));
    let both = cluster(&[np(
        "x",
        "same",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.244.1.20/32", "except": ["10.244.1.20/32"]}}]}]}),
    )]);
    assert!(
        !passes(&both, "y/a", "x/a", "tcp", 80),
        "an address in cidr and except is out"
    );
}

#[test]
fn dual_stack_peers_match_in_both_families() {
    let c = cluster(&[np(
        "x",
        "from-a",
        json!({"podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    )]);
    assert!(passes(&c, "x/a", "x/b", "tcp", 80));
    let v6 = cluster(&[np(
        "x",
        "deny",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    )]);
    assert!(
        !passes_fam(&v6, "fd00:0:0:2::1", "x/a", "tcp", 80, true),
        "the IPv6 address of an isolated pod is isolated too"
    );
}

#[test]
fn the_client_side_can_deny_what_the_server_allows() {
    let c = cluster(&[
        np("x", "allow-in", json!({"podSelector": {}, "ingress": [{}]})),
        np(
            "y",
            "deny-out",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        ),
    ]);
    assert!(!passes(&c, "y/a", "x/a", "tcp", 80));
    assert!(passes(&c, "y/b", "x/a", "tcp", 80));
}

#[test]
fn an_unreadable_policy_isolates_and_allows_nothing() {
    let c = cluster(&[np(
        "x",
        "bad",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}),
    )]);
    assert!(!passes(&c, "y/a", "x/a", "tcp", 80));
    assert_eq!(flannel_policy::compile::problems(&c).len(), 1);
}
