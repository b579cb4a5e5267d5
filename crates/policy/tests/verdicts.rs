#![allow(clippy::unwrap_used)]
//! Random pods, namespaces, policies and packets: the verdict of the nftables script the
//! compiler writes for each node (run by a small interpreter of that script) must be the
//! verdict of the policies evaluated directly, as the Kubernetes documentation defines them.

mod support;

use flannel_policy::compile::Cluster;
use flannel_policy::model::*;
use ipnet::IpNet;
use std::net::IpAddr;
use support::nft::{Packet, Table};

/// xorshift: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const KEYS: [&str; 3] = ["app", "tier", "team"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];
const PORTS: [u16; 4] = [80, 81, 82, 8080];

fn labels(r: &mut Rng) -> Labels {
    let mut l = Labels::new();
    for k in KEYS {
        if r.chance(50) {
            l.insert(k.into(), r.pick(&VALUES).to_string());
        }
    }
    l
}

fn selector(r: &mut Rng) -> Selector {
    let mut s = Selector::default();
    if r.chance(40) {
        return s;
    }
    if r.chance(60) {
        s.labels
            .insert(r.pick(&KEYS).to_string(), r.pick(&VALUES).to_string());
    }
    if r.chance(50) {
        let op = *r.pick(&[Op::In, Op::NotIn, Op::Exists, Op::DoesNotExist]);
        let values = (0..1 + r.below(2))
            .map(|_| r.pick(&VALUES).to_string())
            .collect();
        s.exprs.push(Expr {
            key: r.pick(&KEYS).to_string(),
            op,
            values,
        });
    }
    s
}

fn net(r: &mut Rng, v6: bool) -> IpNet {
    let s = if v6 {
        r.pick(&[
            "fd00::/48",
            "fd00:0:0:1::/64",
            "fd00:0:0:2::/64",
            "::/0",
            "fd00:0:0:1::3/128",
        ])
        .to_string()
    } else {
        r.pick(&[
            "10.244.0.0/16",
            "10.244.1.0/24",
            "10.244.2.0/24",
            "0.0.0.0/0",
            "10.244.1.3/32",
            "192.168.0.0/16",
        ])
        .to_string()
    };
    s.parse().expect("net")
}

fn rule(r: &mut Rng) -> Rule {
    let mut rule = Rule::default();
    for _ in 0..r.below(3) {
        rule.peers.push(match r.below(5) {
            0 => Peer::Pods {
                pods: Some(selector(r)),
                namespaces: None,
            },
            1 => Peer::Pods {
                pods: None,
                namespaces: Some(selector(r)),
            },
            2 => Peer::Pods {
                pods: Some(selector(r)),
                namespaces: Some(selector(r)),
            },
            3 => {
                let v6 = r.chance(30);
                let cidr = net(r, v6);
                let except = (0..r.below(2)).map(|_| net(r, v6)).collect();
                Peer::Block { cidr, except }
            }
            _ => Peer::Nothing,
        });
    }
    for _ in 0..r.below(3) {
        let proto = *r.pick(&PROTOS);
        rule.ports.push(match r.below(5) {
            0 => PortSpec::All(proto),
            1 => {
                let p = *r.pick(&PORTS);
                PortSpec::Range {
                    proto,
                    from: p,
                    to: p,
                }
            }
            2 => PortSpec::Range {
                proto,
                from: 80,
                to: 81,
            },
            3 => PortSpec::Named {
                proto,
                name: r.pick(&["http", "dns"]).to_string(),
            },
            _ => PortSpec::Nothing,
        });
    }
    rule
}

fn cluster(r: &mut Rng) -> Cluster {
    let mut c = Cluster::default();
    for ns in ["x", "y", "z"] {
        let mut l = labels(r);
        l.insert(NAME_LABEL.into(), ns.into());
        c.namespaces.insert(
            ns.into(),
            Namespace {
                name: ns.into(),
                labels: l,
            },
        );
    }
    for i in 0..9u8 {
        let ns = ["x", "y", "z"][usize::from(i % 3)];
        let node = if r.chance(50) { "n1" } else { "n2" };
        let mut ips: Vec<IpAddr> = vec![format!("10.244.{}.{}", 1 + i % 2, 2 + i)
            .parse()
            .expect("ip")];
        if r.chance(50) {
            ips.push(
                format!("fd00:0:0:{}::{}", 1 + i % 2, 2 + i)
                    .parse()
                    .expect("ip6"),
            );
        }
        let ports = (0..r.below(3))
            .map(|_| NamedPort {
                name: r.pick(&["http", "dns"]).to_string(),
                port: *r.pick(&PORTS),
                proto: *r.pick(&PROTOS),
            })
            .collect();
        let pod = Pod {
            namespace: ns.into(),
            name: format!("p{i}"),
            node: node.into(),
            labels: labels(r),
            ips,
            host_network: r.chance(5),
            phase: if r.chance(5) {
                "Failed".into()
            } else {
                "Running".into()
            },
            ports,
        };
        c.pods.insert(pod.key(), pod);
    }
    for i in 0..r.below(5) {
        let ns = *r.pick(&["x", "y", "z"]);
        let rules = |r: &mut Rng| (0..r.below(3)).map(|_| rule(r)).collect::<Vec<_>>();
        let (ing, eg) = match r.below(3) {
            0 => (Some(rules(r)), None),
            1 => (None, Some(rules(r))),
            _ => (Some(rules(r)), Some(rules(r))),
        };
        let p = Policy {
            namespace: ns.into(),
            name: format!("np{i}"),
            pod_selector: selector(r),
            ingress: ing,
            egress: eg,
            problems: Vec::new(),
        };
        c.policies.insert(p.key(), p);
    }
    c
}

// ---- the policies evaluated directly, with matching written again here ----

fn sel_ok(s: &Selector, l: &Labels) -> bool {
    for (k, v) in &s.labels {
        if l.get(k) != Some(v) {
            return false;
        }
    }
    for e in &s.exprs {
        let v = l.get(&e.key);
        let ok = match e.op {
            Op::In => matches!(v, Some(v) if e.values.iter().any(|x| x == v)),
            Op::NotIn => !matches!(v, Some(v) if e.values.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn live(p: &Pod) -> bool {
    !p.host_network && !p.ips.is_empty() && p.phase != "Failed" && p.phase != "Succeeded"
}

/// Whether `rules` of policy `pol` (`ingress`: peer is the source) allow a packet whose peer
/// is at `peer_ip` (the pod `peer` when it is one) and whose destination is `dst` (a pod or not).
fn rules_allow(
    c: &Cluster,
    pol: &Policy,
    rules: &[Rule],
    peer_ip: IpAddr,
    peer: Option<&Pod>,
    dst: Option<&Pod>,
    pkt: &Packet,
) -> bool {
    rules.iter().any(|r| {
        let peer_ok = r.peers.is_empty()
            || r.peers.iter().any(|x| match x {
                Peer::Pods { pods, namespaces } => peer.is_some_and(|p| {
                    live(p)
                        && match namespaces {
                            None => p.namespace == pol.namespace,
                            Some(s) => sel_ok(s, &c.namespaces[&p.namespace].labels),
                        }
                        && pods.as_ref().is_none_or(|s| sel_ok(s, &p.labels))
                }),
                Peer::Block { cidr, except } => {
                    cidr.contains(&peer_ip) && !except.iter().any(|e| e.contains(&peer_ip))
                }
                Peer::Nothing => false,
            });
        let port_ok = r.ports.is_empty()
            || r.ports.iter().any(|s| match s {
                PortSpec::All(p) => p.nft() == pkt.proto,
                PortSpec::Range { proto, from, to } => {
                    proto.nft() == pkt.proto && (*from..=*to).contains(&pkt.dport)
                }
                PortSpec::Named { proto, name } => {
                    proto.nft() == pkt.proto
                        && dst.is_some_and(|d| {
                            d.ports.iter().any(|np| {
                                &np.name == name && np.proto == *proto && np.port == pkt.dport
                            })
                        })
                }
                PortSpec::Nothing => false,
            });
        peer_ok && port_ok
    })
}

fn expected(c: &Cluster, src: Option<&Pod>, dst: &Pod, pkt: &Packet) -> bool {
    if let Some(s) = src.filter(|s| live(s)) {
        let pols: Vec<&Policy> = c
            .policies
            .values()
            .filter(|p| {
                p.egress.is_some()
                    && p.namespace == s.namespace
                    && sel_ok(&p.pod_selector, &s.labels)
            })
            .collect();
        if !pols.is_empty()
            && !pols.iter().any(|p| {
                rules_allow(
                    c,
                    p,
                    p.egress.as_deref().unwrap_or(&[]),
                    pkt.dst,
                    Some(dst),
                    Some(dst),
                    pkt,
                )
            })
        {
            return false;
        }
    }
    if !live(dst) {
        return true;
    }
    let pols: Vec<&Policy> = c
        .policies
        .values()
        .filter(|p| {
            p.ingress.is_some()
                && p.namespace == dst.namespace
                && sel_ok(&p.pod_selector, &dst.labels)
        })
        .collect();
    pols.is_empty()
        || pols.iter().any(|p| {
            rules_allow(
                c,
                p,
                p.ingress.as_deref().unwrap_or(&[]),
                pkt.src,
                src,
                Some(dst),
                pkt,
            )
        })
}

#[test]
fn emitted_rulesets_give_the_verdicts_of_the_policies() {
    let mut checked = 0;
    let mut denied = 0;
    for seed in 1..=400u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let c = cluster(&mut r);
        let tables: Vec<(&str, Table)> = ["n1", "n2"]
            .into_iter()
            .map(|n| (n, Table::parse(&flannel_policy::compile(&c, n).script())))
            .collect();
        let table = |node: &str| &tables.iter().find(|(n, _)| *n == node).expect("node").1;
        let pods: Vec<&Pod> = c.pods.values().filter(|p| !p.ips.is_empty()).collect();
        for _ in 0..60 {
            let dst = *r.pick(&pods);
            let ext = r.chance(15);
            let src = (!ext).then(|| *r.pick(&pods));
            if src.is_some_and(|s| s.key() == dst.key()) {
                continue; // a pod reaching itself never leaves its namespace
            }
            let v6 = r.chance(40);
            let pick_ip = |p: &Pod| p.ips.iter().copied().find(|ip| ip.is_ipv6() == v6);
            let Some(dst_ip) = pick_ip(dst) else { continue };
            let src_ip = match src {
                Some(s) => match pick_ip(s) {
                    Some(ip) => ip,
                    None => continue,
                },
                None => (if v6 {
                    "fd00:0:0:1::3"
                } else {
                    *r.pick(&["10.244.1.3", "192.168.5.5", "172.16.0.1"])
                })
                .parse()
                .expect("ip"),
            };
            // hostNetwork pods send from the node: not through the forward hook of their node.
            if src.is_some_and(|s| s.host_network) || dst.host_network {
                continue;
            }
            let pkt = Packet {
                src: src_ip,
                dst: dst_ip,
                proto: r.pick(&PROTOS).nft(),
                dport: *r.pick(&PORTS),
            };
            let got = match src {
                Some(s) if s.node == dst.node => table(&s.node).passes(&pkt),
                Some(s) => table(&s.node).passes(&pkt) && table(&dst.node).passes(&pkt),
                None => table(&dst.node).passes(&pkt),
            };
            let want = expected(&c, src, dst, &pkt);
            assert_eq!(
                got, want,
                "seed {seed}: {pkt:?} from {:?} to {}\npolicies: {:#?}\npods: {:#?}\nn1:\n{}\nn2:\n{}",
                src.map(|s| s.key()),
                dst.key(),
                c.policies,
                c.pods,
                flannel_policy::compile(&c, "n1").script(),
                flannel_policy::compile(&c, "n2").script(),
            );
            checked += 1;
            denied += usize::from(!want);
        }
    }
    // The random cases must exercise both verdicts in earnest.
    assert!(checked > 10_000, "only {checked} packets checked");
    assert!(
        denied > checked / 10 && denied < checked * 9 / 10,
        "{denied} of {checked} denied"
    );
}
