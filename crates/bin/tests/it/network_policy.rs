//! Kubernetes NetworkPolicy in a kube lab with `--network-policy`, checked the way the
//! upstream end-to-end suite (`test/e2e/network/netpol`) checks it: namespaces x, y, z with
//! pods a, b, c each (a, b and c on different nodes, so same-node and cross-node pairs both
//! occur), TCP and UDP servers on ports 80 and 81 in every pod, probes of every ordered pair in
//! parallel with a 1 s timeout, and the whole reachability matrix compared with the expected
//! one. Policies and labels go through the real `kubectl`, as a user applies them.

use crate::common;

use common::lab::Lab;
use flannel_lab::cluster::{kubectl, Datastore};
use flannel_lab::names::IpFamily;
use flannel_lab::pods::{self, NewPod};
use flannel_lab::probe::{self, Proto};
use flannel_lab::state::PodState;
use flannel_lab::LabSpec;
use ipnet::IpNet;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

struct Np {
    lab: Lab,
    /// A case changed labels: the next reset puts them back.
    relabelled: std::cell::Cell<bool>,
}

/// One probe as the expectation sees it.
struct P<'a> {
    from: &'a PodState,
    to: &'a PodState,
    proto: Proto,
    port: u16,
    v6: bool,
}

impl P<'_> {
    fn src_is(&self, key: &str) -> bool {
        self.from.key() == key
    }
    fn dst_is(&self, key: &str) -> bool {
        self.to.key() == key
    }
    fn src_ip(&self) -> IpAddr {
        let a = if self.v6 {
            &self.from.ip6
        } else {
            &self.from.ip
        };
        a.parse().expect("a pod address")
    }
}

impl Np {
    fn up(backend: &str, family: IpFamily, nodes: usize, pods: &[&str]) -> Np {
        let mut lab = Lab::up_with(LabSpec {
            nodes,
            pods_per_node: 0,
            backend: backend.into(),
            backend_set: true,
            datastore: Datastore::Kube,
            network_policy: true,
            ip_family: family,
            ..LabSpec::default()
        });
        let node_names: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
        for ns in NAMESPACES {
            for (i, p) in pods.iter().enumerate() {
                let ports = [
                    "serve-80-tcp=80/tcp",
                    "serve-81-tcp=81/tcp",
                    "serve-80-udp=80/udp",
                    "serve-81-udp=81/udp",
                ]
                .iter()
                .map(|s| pods::parse_port(s).unwrap())
                .collect();
                pods::add(
                    &mut lab.state,
                    NewPod {
                        namespace: ns.into(),
                        name: p.to_string(),
                        node: node_names[i % node_names.len()].clone(),
                        labels: [("pod".to_string(), p.to_string())].into(),
                        ports,
                    },
                )
                .unwrap_or_else(|e| panic!("pod add {ns}/{p}: {e:#}"));
            }
        }
        let np = Np {
            lab,
            relabelled: std::cell::Cell::new(false),
        };
        for ns in NAMESPACES {
            np.kubectl(&["label", "namespace", ns, &format!("ns={ns}"), "--overwrite"]);
        }
        np
    }

    fn kubectl(&self, args: &[&str]) -> String {
        kubectl(&self.lab.state, args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
    }

    fn pod(&self, key: &str) -> &PodState {
        self.lab.state.find_pod(key).unwrap().1
    }

    /// The subnet of the node pod `key` runs on.
    fn subnet_of(&self, key: &str) -> IpNet {
        let (n, _) = self.lab.state.find_pod(key).unwrap();
        n.subnet.parse().unwrap()
    }

    /// `kubectl apply -f` of a List of policies.
    fn apply(&self, policies: &[Value]) {
        if policies.is_empty() {
            return;
        }
        // A stream of JSON objects, which kubectl reads as it reads a multi-document YAML.
        let f = self.lab.state.state_dir.join("policies.json");
        let docs: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
        std::fs::write(&f, docs.join("\n")).unwrap();
        self.kubectl(&["apply", "-f", &f.display().to_string()]);
    }

    /// `kubectl label ...`, remembered so the next case starts from the first labels.
    fn label(&self, args: &[&str]) {
        self.relabelled.set(true);
        let mut a = vec!["label"];
        a.extend_from_slice(args);
        a.push("--overwrite");
        self.kubectl(&a);
    }

    /// No policy left, labels as at the start.
    fn reset(&self) {
        self.kubectl(&[
            "delete",
            "networkpolicy",
            "--all",
            "--all-namespaces",
            "--wait=false",
        ]);
        if !self.relabelled.replace(false) {
            return;
        }
        for ns in NAMESPACES {
            self.kubectl(&["label", "namespace", ns, &format!("ns={ns}"), "--overwrite"]);
            for p in PODS {
                if self.lab.state.find_pod(&format!("{ns}/{p}")).is_ok() {
                    self.kubectl(&[
                        "label",
                        "pod",
                        "-n",
                        ns,
                        p,
                        &format!("pod={p}"),
                        "--overwrite",
                    ]);
                }
            }
        }
    }

    /// Waits (up to 20 s) for the matrix to be the expected one; fails naming every
    /// wrong cell.
    fn expect(&self, case: &str, want: impl Fn(&P) -> bool) {
        let pods: BTreeMap<String, &PodState> =
            self.lab.state.pods().map(|p| (p.key(), p)).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = probe::matrix(&self.lab.state, &[80, 81], &[Proto::Tcp, Proto::Udp]);
            let wrong: Vec<String> = got
                .iter()
                .filter(|r| {
                    let p = P {
                        from: pods[&r.from],
                        to: pods[&r.to],
                        proto: r.proto,
                        port: r.port,
                        v6: r.family == 6,
                    };
                    let w = r.from == r.to || want(&p);
                    w != r.ok
                })
                .map(|r| {
                    format!(
                        "{} -> {} {}/{} v{}: {}",
                        r.from,
                        r.to,
                        r.proto.name(),
                        r.port,
                        r.family,
                        if r.ok {
                            "reachable, expected blocked"
                        } else {
                            "blocked, expected reachable"
                        }
                    )
                })
                .collect();
            let n = pods.len();
            assert!(
                got.len() >= n * n * 4,
                "{case}: only {} probes of {n} pods",
                got.len()
            );
            if wrong.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{case}: {} cells differ:\n{}\n\n{}",
                    wrong.len(),
                    wrong.join("\n"),
                    probe::render(&got)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Resets, applies `policies`, checks `want`.
    fn case(&self, name: &str, policies: &[Value], want: impl Fn(&P) -> bool) {
        self.reset();
        self.apply(policies);
        // Each node applies a change within milliseconds; probing before that only costs a
        // round of timeouts.
        std::thread::sleep(Duration::from_millis(200));
        self.expect(name, want);
    }
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn pod_is(name: &str) -> Value {
    json!({"matchLabels": {"pod": name}})
}

fn ns_is(name: &str) -> Value {
    json!({"matchLabels": {"ns": name}})
}

fn tcp(port: u16) -> Value {
    json!({"protocol": "TCP", "port": port})
}

/// The upstream suite's cases, in order; `v6` when the lab is dual stack (CIDR cases then
/// also check that an IPv4 block opens nothing over IPv6).
fn suite(t: &Np) {
    let only_to_xa = |p: &P| !p.dst_is("x/a");
    t.case(
        "default-deny-ingress",
        &[np("x", "deny", json!({"podSelector": {}}))],
        |p| p.to.namespace != "x",
    );
    t.case(
        "default-deny-all",
        &[np(
            "x",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )],
        |p| p.to.namespace != "x" && p.from.namespace != "x",
    );
    t.case(
        "allow by PodSelector within the namespace",
        &[np("x", "a-from-b", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}))],
        |p| only_to_xa(p) || p.src_is("x/b"),
    );
    t.case(
        "ingress from all namespaces",
        &[np(
            "x",
            "all-ns",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        )],
        |_| true,
    );
    t.case(
        "only from a different namespace by NamespaceSelector (MatchLabels)",
        &[np("x", "from-y", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}))],
        |p| only_to_xa(p) || p.from.namespace == "y",
    );
    t.case(
        "NamespaceSelector with MatchExpressions",
        &[np(
            "x",
            "from-yz",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector":
            {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y", "z"]}]}}]}]}),
        )],
        |p| only_to_xa(p) || p.from.namespace != "x",
    );
    t.case(
        "the default kubernetes.io/metadata.name label",
        &[np("x", "not-x", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector":
            {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]}}]}]}))],
        |p| only_to_xa(p) || p.from.namespace != "x",
    );
    t.case(
        "allow ingress traffic for a target",
        &[
            np("x", "deny", json!({"podSelector": {}})),
            np(
                "x",
                "a-open",
                json!({"podSelector": pod_is("a"), "ingress": [{}]}),
            ),
        ],
        |p| p.to.namespace != "x" || p.dst_is("x/a"),
    );
    t.case(
        "deny ingress from pods on other namespaces",
        &[np(
            "x",
            "same-ns",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        )],
        |p| p.to.namespace != "x" || p.from.namespace == "x",
    );
    t.case(
        "any of several PodSelectors",
        &[np(
            "x",
            "b-or-c",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [
            {"podSelector": pod_is("b")}, {"podSelector": pod_is("c")}]}]}),
        )],
        |p| only_to_xa(p) || p.src_is("x/b") || p.src_is("x/c"),
    );
    t.case(
        "PodSelector with MatchExpressions",
        &[np(
            "x",
            "expr",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector":
            {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]}]}),
        )],
        |p| only_to_xa(p) || p.src_is("x/b"),
    );
    t.case(
        "PodSelector OR NamespaceSelector",
        &[np(
            "x",
            "or",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [
            {"podSelector": pod_is("b")}, {"namespaceSelector": ns_is("y")}]}]}),
        )],
        |p| only_to_xa(p) || p.src_is("x/b") || p.from.namespace == "y",
    );
    t.case(
        "PodSelector AND NamespaceSelector",
        &[np(
            "x",
            "and",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [
            {"podSelector": pod_is("b"), "namespaceSelector": ns_is("y")}]}]}),
        )],
        |p| only_to_xa(p) || p.src_is("y/b"),
    );
    t.case(
        "multiple PodSelectors and NamespaceSelectors",
        &[np("x", "multi", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{
            "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}))],
        |p| only_to_xa(p) || (p.from.namespace != "x" && p.from.name != "a"),
    );
    t.case(
        "ports: TCP 80 only",
        &[np(
            "x",
            "port-80",
            json!({"podSelector": pod_is("a"), "ingress": [{"ports": [tcp(80)]}]}),
        )],
        |p| only_to_xa(p) || (p.proto == Proto::Tcp && p.port == 80),
    );
    t.case(
        "named port (ingress)",
        &[np(
            "x",
            "named",
            json!({"podSelector": pod_is("a"), "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
        )],
        |p| only_to_xa(p) || (p.proto == Proto::Tcp && p.port == 81),
    );
    t.case(
        "named port from a namespace",
        &[np("x", "named-ns", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}],
            "ports": [{"protocol": "UDP", "port": "serve-80-udp"}]}]}))],
        |p| only_to_xa(p) || (p.from.namespace == "y" && p.proto == Proto::Udp && p.port == 80),
    );
    t.case(
        "named port (egress)",
        &[np(
            "x",
            "named-eg",
            json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
        )],
        |p| !p.src_is("x/a") || (p.proto == Proto::Tcp && p.port == 80),
    );
    t.case(
        "endPort range",
        &[np("x", "range", json!({"podSelector": pod_is("a"), "ingress": [{"ports": [{"protocol": "TCP", "port": 81, "endPort": 90}]}]}))],
        |p| only_to_xa(p) || (p.proto == Proto::Tcp && p.port == 81),
    );
    t.case(
        "any port of one protocol",
        &[np(
            "x",
            "any-udp",
            json!({"podSelector": pod_is("a"), "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
        )],
        |p| only_to_xa(p) || p.proto == Proto::Udp,
    );
    t.case(
        "a policy on UDP only allows no TCP",
        &[np("x", "udp", json!({"podSelector": pod_is("a"), "ingress": [{"ports": [{"protocol": "UDP", "port": 80}]}]}))],
        |p| only_to_xa(p) || (p.proto == Proto::Udp && p.port == 80),
    );
    t.case(
        "SCTP is not TCP, and an SCTP policy isolates",
        &[np("x", "sctp", json!({"podSelector": pod_is("a"), "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}))],
        only_to_xa,
    );
    t.case(
        "stacked policies with overlapping selectors",
        &[
            np("x", "a-from-b", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]})),
            np("x", "ab-from-y", json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]})),
        ],
        |p| match p.to.key().as_str() {
            "x/a" => p.src_is("x/b") || p.from.namespace == "y",
            "x/b" => p.from.namespace == "y",
            _ => true,
        },
    );
    t.case(
        "allow-all takes precedence (ingress)",
        &[
            np("x", "deny", json!({"podSelector": {}})),
            np("x", "allow", json!({"podSelector": {}, "ingress": [{}]})),
        ],
        |_| true,
    );
    t.case(
        "allow-all takes precedence (egress)",
        &[
            np(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            ),
            np(
                "x",
                "allow",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
            ),
        ],
        |_| true,
    );
    t.case(
        "egress deny by PodSelector",
        &[np(
            "x",
            "a-out",
            json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"]}),
        )],
        |p| !p.src_is("x/a"),
    );
    t.case(
        "egress deny for a whole namespace",
        &[np(
            "x",
            "out",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        )],
        |p| p.from.namespace != "x",
    );
    t.case(
        "egress to another namespace by PodSelector and NamespaceSelector",
        &[np(
            "x",
            "to-yb",
            json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("b")}]}]}),
        )],
        |p| !p.src_is("x/a") || p.dst_is("y/b"),
    );
    t.case(
        "Ingress and Egress together, each controlled",
        &[np(
            "x",
            "both",
            json!({"podSelector": pod_is("a"), "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": pod_is("b")}]}],
            "egress": [{"to": [{"namespaceSelector": ns_is("y")}]}]}),
        )],
        |p| (!p.dst_is("x/a") || p.src_is("x/b")) && (!p.src_is("x/a") || p.to.namespace == "y"),
    );
    t.case(
        "the client side denies egress the server allows",
        &[
            np("x", "allow-in", json!({"podSelector": {}, "ingress": [{}]})),
            np(
                "y",
                "a-no-out",
                json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"]}),
            ),
        ],
        |p| !p.src_is("y/a"),
    );
    let b_net = t.subnet_of("x/b");
    t.case(
        "CIDR allow",
        &[np("x", "cidr", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"ipBlock": {"cidr": b_net.to_string()}}]}]}))],
        |p| only_to_xa(p) || (!p.v6 && b_net.contains(&p.src_ip())),
    );
    let cluster: IpNet = "10.244.0.0/16".parse().unwrap();
    t.case(
        "CIDR with except",
        &[np(
            "x",
            "except",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"ipBlock":
            {"cidr": cluster.to_string(), "except": [b_net.to_string()]}}]}]}),
        )],
        |p| only_to_xa(p) || (!p.v6 && !b_net.contains(&p.src_ip())),
    );
    let yb = format!("{}/32", t.pod("y/b").ip);
    t.case(
        "an address in both cidr and except",
        &[np("x", "both-ex", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"ipBlock": {"cidr": yb, "except": [yb]}}]}]}))],
        only_to_xa,
    );

    t.case(
        "egress to a CIDR block",
        &[np(
            "x",
            "to-b-net",
            json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": b_net.to_string()}}]}]}),
        )],
        |p| !p.src_is("x/a") || (!p.v6 && b_net.contains(&p.to.ip.parse::<IpAddr>().unwrap())),
    );
    t.case(
        "egress to a CIDR block with except",
        &[np("x", "not-b-net", json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": cluster.to_string(), "except": [b_net.to_string()]}}]}]}))],
        |p| !p.src_is("x/a") || (!p.v6 && !b_net.contains(&p.to.ip.parse::<IpAddr>().unwrap())),
    );
    t.case(
        "an address excepted by one policy and allowed by another is allowed",
        &[
            np(
                "x",
                "net-but-yb",
                json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": b_net.to_string(), "except": [yb]}}]}]}),
            ),
            np(
                "x",
                "yb",
                json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": yb}}]}]}),
            ),
        ],
        |p| !p.src_is("x/a") || (!p.v6 && b_net.contains(&p.to.ip.parse::<IpAddr>().unwrap())),
    );

    // Changes applied live.
    t.case(
        "updated policy: before",
        &[np("x", "edit", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}))],
        |p| only_to_xa(p) || p.src_is("x/b"),
    );
    t.apply(&[np(
        "x",
        "edit",
        json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("c")}]}]}),
    )]);
    t.expect("updated policy: after", |p| {
        only_to_xa(p) || p.src_is("x/c")
    });
    t.label(&["pod", "-n", "x", "b", "pod=c"]);
    t.expect("updated pod labels", |p| {
        only_to_xa(p) || p.src_is("x/c") || p.src_is("x/b")
    });
    t.case(
        "updated namespace labels: before",
        &[np("x", "from-y", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}))],
        |p| only_to_xa(p) || p.from.namespace == "y",
    );
    t.label(&["namespace", "z", "ns=y"]);
    t.expect("updated namespace labels: after", |p| {
        only_to_xa(p) || p.from.namespace != "x"
    });
    t.case(
        "deny ingress to an updated pod: before",
        &[np(
            "x",
            "deny-marked",
            json!({"podSelector": pod_is("deny")}),
        )],
        |_| true,
    );
    t.label(&["pod", "-n", "x", "a", "pod=deny"]);
    t.expect("deny ingress to an updated pod: after", only_to_xa);
    t.reset();
    t.apply(&[np("x", "from-y", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}))]);
    t.expect("before deletion", |p| {
        only_to_xa(p) || p.from.namespace == "y"
    });
    t.kubectl(&["delete", "networkpolicy", "-n", "x", "from-y"]);
    t.expect("policies stop being enforced once deleted", |_| true);
}

#[test]
fn the_upstream_suite_on_vxlan_ipv4() {
    if common::skip_without_root() {
        return;
    }
    let t = Np::up("vxlan", IpFamily::V4, 3, &PODS);
    suite(&t);
    sctp_by_raw_socket(&t);
}

#[test]
fn the_upstream_suite_on_vxlan_dual_stack() {
    if common::skip_without_root() {
        return;
    }
    let t = Np::up("vxlan", IpFamily::Dual, 3, &PODS);
    suite(&t);
    doctor_names_br_netfilter(&t);
}

/// host-gw, udp and wireguard: default deny plus an allow, same-node and cross-node.
#[test]
fn every_backend_enforces_a_default_deny_and_an_allow() {
    if common::skip_without_root() {
        return;
    }
    let runs: Vec<_> = ["host-gw", "udp", "wireguard"]
        .into_iter()
        .map(|b| {
            std::thread::spawn(move || {
                let t = Np::up(b, IpFamily::V4, 2, &["a", "b"]);
                t.case(
                    &format!("{b}: default deny, x/a open to x/b"),
                    &[
                        np("x", "deny", json!({"podSelector": {}})),
                        np("x", "a-from-b", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]})),
                    ],
                    |p| p.to.namespace != "x" || (p.dst_is("x/a") && p.src_is("x/b")),
                );
            })
        })
        .collect();
    for r in runs {
        if let Err(e) = r.join() {
            std::panic::resume_unwind(e);
        }
    }
}

/// CRC32c (Castagnoli), the SCTP checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP INIT to `port`: the common header and one INIT chunk, checksummed.
fn sctp_init(src_port: u16, port: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, below
                                              // INIT: type 1, flags 0, length 20, initiate tag, a_rwnd, streams out/in, initial TSN.
    p.extend_from_slice(&[1, 0, 0, 20]);
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 1]);
    p.extend_from_slice(&1u32.to_be_bytes());
    let sum = crc32c(&p);
    // SCTP puts the CRC32c in little-endian byte order.
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// Sends `n` SCTP INITs from the pod's namespace on a raw socket (protocol 132: these
/// kernels have no SCTP sockets, but nftables and conntrack see SCTP all the same).
fn send_sctp(netns: &str, dst: std::net::Ipv4Addr, port: u16, n: usize) {
    flannel_testkit::netns::in_ns(netns, move || {
        // SAFETY: a raw IPv4 socket for protocol 132; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 132) };
        assert!(
            fd >= 0,
            "raw SCTP socket: {}",
            std::io::Error::last_os_error()
        );
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        for i in 0..n {
            let pkt = sctp_init(40000 + i as u16, port);
            // SAFETY: pkt and to are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            assert_eq!(
                sent,
                pkt.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: closing the socket made above.
        unsafe { libc::close(fd) };
    });
}

/// The packet count of the first rule in `chain` whose text contains `has`.
fn counter(node_ns: &str, chain: &str, has: &str) -> u64 {
    let out = common::ip(&[
        "netns",
        "exec",
        node_ns,
        "nft",
        "-j",
        "list",
        "chain",
        "inet",
        "flannel-policy",
        chain,
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let rules: Vec<&Value> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .collect();
    let rule = rules
        .iter()
        .find(|r| r["expr"].to_string().contains(has))
        .unwrap_or_else(|| panic!("no rule with {has} in {chain}: {out}"));
    rule["expr"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["counter"]["packets"].as_u64())
        .expect("a counter")
}

/// SCTP: always compiled and loaded, matched by port, counted by the rules' counters.
fn sctp_by_raw_socket(t: &Np) {
    t.reset();
    t.apply(&[np("x", "sctp-80", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b"), "namespaceSelector": ns_is("y")}],
        "ports": [{"protocol": "SCTP", "port": 80}]}]}))]);
    let (node, xa) = t.lab.state.find_pod("x/a").unwrap();
    let node_ns = node.netns.clone();
    let dst: std::net::Ipv4Addr = xa.ip.parse().unwrap();
    common::eventually(Duration::from_secs(10), || {
        common::ip(&[
            "netns",
            "exec",
            &node_ns,
            "nft",
            "list",
            "table",
            "inet",
            "flannel-policy",
        ])
        .contains("chain in.x.sctp-80")
    })
    .expect("the SCTP policy loaded");
    let yb = t.pod("y/b").netns.clone();
    let (allowed0, dropped0) = (
        counter(&node_ns, "in.x.sctp-80", "sctp"),
        counter(&node_ns, "pod-in.x.a", "drop"),
    );
    send_sctp(&yb, dst, 80, 5);
    send_sctp(&yb, dst, 81, 7);
    common::eventually(Duration::from_secs(5), || {
        counter(&node_ns, "in.x.sctp-80", "sctp") >= allowed0 + 5
            && counter(&node_ns, "pod-in.x.a", "drop") >= dropped0 + 7
    })
    .unwrap_or_else(|| {
        panic!(
            "SCTP counters: allowed {} (from {allowed0}), dropped {} (from {dropped0})",
            counter(&node_ns, "in.x.sctp-80", "sctp"),
            counter(&node_ns, "pod-in.x.a", "drop")
        )
    });
    // TCP to port 80 is not SCTP: still isolated.
    assert!(!probe::one(&t.lab.state, "y/b", "x/a", Proto::Tcp, 80, false).unwrap());
}

/// With policy on, `flannelctl doctor` judges br_netfilter (the node's own sysctl, as these
/// are per network namespace) and names what breaks.
fn doctor_names_br_netfilter(t: &Np) {
    let n = &t.lab.state.nodes[1];
    let set = |v: &str| {
        common::ip(&[
            "netns",
            "exec",
            &n.netns,
            "sysctl",
            "-qw",
            &format!("net.bridge.bridge-nf-call-iptables={v}"),
        ]);
    };
    set("0");
    let (_, all) = common::ctl::doctor(n, &[]);
    set("1");
    let v = common::ctl::verdict(&all, "br_netfilter");
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("network policy does not apply between pods of this node"),
        "{v:#}"
    );
    assert_eq!(v["fix"], "sysctl -w net.bridge.bridge-nf-call-iptables=1");
    let (_, all) = common::ctl::doctor(n, &[]);
    assert_eq!(common::ctl::verdict(&all, "br_netfilter")["ok"], true);
}

/// `flannel-lab pod add|del`, `status --json`, `probe`, `ping-all POD` and `trace` with
/// NAMESPACE/NAME, run as a user runs them, in an etcd lab (no objects there): x/a and y/a
/// are two pods.
#[test]
fn pods_in_namespaces_through_the_lab_command_line() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up(2, 1, &[]);
    let run = |args: &[&str]| {
        let (ok, out, err) = lab.cli(args);
        (ok, format!("{out}{err}"))
    };
    let (ok, out) = run(&[
        "pod",
        "add",
        "x/a",
        "--node",
        "node1",
        "--labels",
        "app=web,tier=1",
        "--port",
        "http=80/tcp",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["pod", "add", "y/a", "--node", "master1"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["pod", "add", "y/a", "--node", "master1"]);
    assert!(!ok && out.contains("pod y/a exists already"), "{out}");
    let (ok, out) = run(&["pod", "add", "z/a", "--node", "node9"]);
    assert!(!ok && out.contains("no node \"node9\""), "{out}");
    let (_, out) = run(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let pods: Vec<&Value> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["pods"].as_array().unwrap())
        .collect();
    let xa = pods
        .iter()
        .find(|p| p["namespace"] == "x" && p["name"] == "a")
        .expect("x/a in status");
    assert_eq!(xa["node"], "node1");
    assert_eq!(xa["labels"], json!({"app": "web", "tier": "1"}));
    assert!(
        xa["netns"].as_str().unwrap().ends_with("-x.a") && !xa["ip"].as_str().unwrap().is_empty()
    );
    assert!(pods
        .iter()
        .any(|p| p["namespace"] == "y" && p["name"] == "a" && p["node"] == "master1"));
    // Both a pods answer, each by its own name; a bare "a" is ambiguous and said so.
    let (ok, out) = run(&["probe", "y/a", "x/a", "--proto", "udp", "--port", "81"]);
    assert!(ok && out.contains("reachable"), "{out}");
    let (ok, out) = run(&["probe", "a", "x/a"]);
    assert!(!ok && out.contains("say NAMESPACE/NAME"), "{out}");
    let (ok, out) = run(&["ping-all", "x/a"]);
    assert!(ok && out.contains("x/a -> y/a"), "{out}");
    let (ok, out) = run(&["trace", "y/a", "x/a"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["pod", "del", "x/a"]);
    assert!(ok, "{out}");
    let (_, out) = run(&["status", "--json"]);
    assert!(!out.contains("\"x\""), "x/a gone from the lab: {out}");
    assert!(
        !common::ip(&["netns", "list"]).contains(&format!("{}-x.a", lab.name)),
        "its namespace removed"
    );
}
