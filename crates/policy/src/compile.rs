//! Policies, pods and namespaces in; one node's ruleset out.
//!
//! Each node enforces for its own pods: ingress where the destination pod lives, egress
//! where the source pod lives. Two base chains on the forward hook (pod traffic between
//! nodes is routed, and between pods of one node bridged on `cni0`, which reaches the hook
//! through br_netfilter):
//!
//! - `egress` (priority filter - 1): established and related pass; then the source address
//!   looks up `pods-eg4`/`pods-eg6`, a verdict map from each egress-isolated local pod to
//!   its chain `pod-eg.<ns>.<pod>`;
//! - `ingress` (priority filter): the same with the destination address, `pods-in*`.
//!
//! A pod's chain jumps to the chain of every policy that selects it, in turn, and drops
//! what none of them accepted. A policy's chain (`in.<ns>.<policy>`, `eg.…`) has one rule
//! per rule × peer kind × port kind, matching peers through sets (`in.<ns>.<policy>.<i>.4`:
//! the addresses of the pods its selectors match) and named ports through sets of
//! `address . protocol . port` of the destination pods. An accept in the egress chain ends
//! only that chain, so a packet between two pods of one node is judged by both.
//!
//! What a packet walks does not grow with the number of pods or policies in the cluster:
//! two map lookups, and the rules of the policies that select its pods.

use crate::model::*;
use crate::ruleset::{Chain, Ruleset, Set};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Everything the compiler reads, keyed by `namespace/name` (namespaces by name).
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub pods: BTreeMap<String, Pod>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub policies: BTreeMap<String, Policy>,
}

impl Cluster {
    /// A namespace's labels; one we have no object for still has its name label.
    pub fn ns_labels(&self, ns: &str) -> Labels {
        match self.namespaces.get(ns) {
            Some(n) => n.labels.clone(),
            None => Labels::from([(NAME_LABEL.to_string(), ns.to_string())]),
        }
    }

    /// Whether a pod is one of `peer`'s, for a policy in namespace `ns`.
    pub fn peer_has(&self, peer: &Peer, ns: &str, pod: &Pod) -> bool {
        match peer {
            Peer::Pods { pods, namespaces } => {
                let ns_ok = match namespaces {
                    Some(sel) => sel.matches(&self.ns_labels(&pod.namespace)),
                    None => pod.namespace == ns,
                };
                ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
            }
            Peer::Block { .. } | Peer::Nothing => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Eg,
}

impl Dir {
    fn tag(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Eg => "eg",
        }
    }
    /// Where the peer's address is.
    fn peer_field(self) -> &'static str {
        match self {
            Dir::In => "saddr",
            Dir::Eg => "daddr",
        }
    }
}

/// A name nftables takes and that stays readable: `in.<ns>.<name>`. Kubernetes names are
/// lowercase letters, digits, `-` and `.`, and namespaces have no dot, so it is unique; a
/// name too long for nftables becomes a digest.
fn ident(prefix: &str, ns: &str, name: &str) -> String {
    let s = format!("{prefix}.{ns}.{name}");
    let fine = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    if s.len() <= 200 && s.chars().all(fine) {
        s
    } else {
        format!("{prefix}.h{}", crate::ruleset::digest(&s))
    }
}

fn v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

fn ip_kw(is_v4: bool) -> &'static str {
    if is_v4 {
        "ip"
    } else {
        "ip6"
    }
}

fn addr_set(is_v4: bool) -> Set {
    Set {
        decl: format!("type {}_addr ;", if is_v4 { "ipv4" } else { "ipv6" }),
        ..Set::default()
    }
}

fn named_set(is_v4: bool) -> Set {
    Set {
        decl: format!("typeof {} daddr . meta l4proto . th dport ;", ip_kw(is_v4)),
        ..Set::default()
    }
}

fn vmap(is_v4: bool) -> Set {
    Set {
        decl: format!(
            "type {}_addr : verdict ;",
            if is_v4 { "ipv4" } else { "ipv6" }
        ),
        map: true,
        ..Set::default()
    }
}

/// A match and the family it is bound to (`None`: either).
type Part = (Option<bool>, String);

struct Compiler<'a> {
    cluster: &'a Cluster,
    /// The pods the policies see, every node's.
    counted: Vec<&'a Pod>,
    out: Ruleset,
}

impl<'a> Compiler<'a> {
    /// The peer matches of one rule: pod peers through a pair of sets, each ipBlock inline.
    fn peers(&mut self, dir: Dir, set: &str, p: &Policy, r: &Rule) -> Vec<Part> {
        if r.peers.is_empty() {
            return vec![(None, String::new())];
        }
        let f = dir.peer_field();
        let mut parts = Vec::new();
        if r.peers.iter().any(|x| matches!(x, Peer::Pods { .. })) {
            let (mut s4, mut s6) = (addr_set(true), addr_set(false));
            for pod in &self.counted {
                if r.peers
                    .iter()
                    .any(|x| self.cluster.peer_has(x, &p.namespace, pod))
                {
                    for ip in &pod.ips {
                        let s = if v4(ip) { &mut s4 } else { &mut s6 };
                        s.elems.insert(ip.to_string());
                    }
                }
            }
            for (is_v4, s) in [(true, s4), (false, s6)] {
                let name = format!("{set}.{}", if is_v4 { "4" } else { "6" });
                parts.push((Some(is_v4), format!("{} {f} @{name}", ip_kw(is_v4))));
                self.out.sets.insert(name, s);
            }
        }
        for x in &r.peers {
            if let Peer::Block { cidr, except } = x {
                let is_v4 = matches!(cidr, IpNet::V4(_));
                let kw = ip_kw(is_v4);
                let mut m = format!("{kw} {f} {cidr}");
                let ex: Vec<String> = except
                    .iter()
                    .filter(|e| matches!(e, IpNet::V4(_)) == is_v4)
                    .map(|e| e.to_string())
                    .collect();
                if !ex.is_empty() {
                    m += &format!(" {kw} {f} != {{ {} }}", ex.join(", "));
                }
                parts.push((Some(is_v4), m));
            }
        }
        parts
    }

    /// The port matches of one rule; named ports resolve on the destination pods `dsts`.
    fn ports(&mut self, set: &str, r: &Rule, dsts: &[&Pod]) -> Vec<Part> {
        if r.ports.is_empty() {
            return vec![(None, String::new())];
        }
        let mut parts = Vec::new();
        let mut names = Vec::new();
        for spec in &r.ports {
            match spec {
                PortSpec::All(pr) => parts.push((None, format!("meta l4proto {}", pr.nft()))),
                PortSpec::Range { proto, from, to } if from == to => parts.push((
                    None,
                    format!("meta l4proto {} th dport {from}", proto.nft()),
                )),
                PortSpec::Range { proto, from, to } => parts.push((
                    None,
                    format!("meta l4proto {} th dport {from}-{to}", proto.nft()),
                )),
                PortSpec::Named { proto, name } => names.push((*proto, name.as_str())),
                PortSpec::Nothing => {}
            }
        }
        if !names.is_empty() {
            let (mut s4, mut s6) = (named_set(true), named_set(false));
            for pod in dsts {
                for (proto, name) in &names {
                    let Some(port) = pod.named_port(name, *proto) else {
                        continue;
                    };
                    for ip in &pod.ips {
                        let s = if v4(ip) { &mut s4 } else { &mut s6 };
                        s.elems.insert(format!("{ip} . {} . {port}", proto.nft()));
                    }
                }
            }
            for (is_v4, s) in [(true, s4), (false, s6)] {
                let name = format!("{set}.n{}", if is_v4 { "4" } else { "6" });
                parts.push((
                    Some(is_v4),
                    format!("{} daddr . meta l4proto . th dport @{name}", ip_kw(is_v4)),
                ));
                self.out.sets.insert(name, s);
            }
        }
        parts
    }

    /// A policy's chain for one direction.
    fn policy_chain(&mut self, dir: Dir, p: &Policy, rules: &[Rule], selected: &[&Pod]) -> String {
        let chain = ident(dir.tag(), &p.namespace, &p.name);
        let mut lines = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let set = format!("{chain}.{i}");
            let peers = self.peers(dir, &set, p, r);
            let dsts: Vec<&Pod> = match dir {
                Dir::In => selected.to_vec(),
                Dir::Eg => self.counted.clone(),
            };
            let ports = self.ports(&set, r, &dsts);
            for (pf, pm) in &peers {
                for (tf, tm) in &ports {
                    if pf.is_some() && tf.is_some() && pf != tf {
                        continue;
                    }
                    let m: Vec<&str> = [pm.as_str(), tm.as_str()]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect();
                    let mut line = m.join(" ");
                    if !line.is_empty() {
                        line.push(' ');
                    }
                    // Counted: `nft list` shows what each rule let through.
                    line += "counter accept";
                    lines.push(line);
                }
            }
        }
        self.out.chains.insert(
            chain.clone(),
            Chain {
                base: None,
                rules: lines,
            },
        );
        chain
    }
}

/// ICMPv6 neighbour and router discovery: link plumbing, not traffic a policy speaks of.
pub const NEIGHBOUR_DISCOVERY: &str = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept";

/// A local pod isolated in one direction: its addresses and the chains of the policies that
/// select it.
type Isolated = (Vec<IpAddr>, Vec<String>);

/// The ruleset `node` enforces for its own pods.
pub fn compile(cluster: &Cluster, node: &str) -> Ruleset {
    let counted: Vec<&Pod> = cluster.pods.values().filter(|p| p.counts()).collect();
    let local: Vec<&Pod> = counted.iter().copied().filter(|p| p.node == node).collect();
    let mut c = Compiler {
        cluster,
        counted,
        out: Ruleset::default(),
    };
    // Per direction: each local isolated pod's policy chains, in policy order.
    let mut isolated: [BTreeMap<String, Isolated>; 2] = Default::default();
    for p in cluster.policies.values() {
        for (k, dir, rules) in [(0, Dir::In, &p.ingress), (1, Dir::Eg, &p.egress)] {
            let Some(rules) = rules else { continue };
            let selected: Vec<&Pod> = local
                .iter()
                .copied()
                .filter(|pod| pod.namespace == p.namespace && p.pod_selector.selects(&pod.labels))
                .collect();
            if selected.is_empty() {
                continue;
            }
            let chain = c.policy_chain(dir, p, rules, &selected);
            for pod in selected {
                isolated[k]
                    .entry(ident(
                        &format!("pod-{}", dir.tag()),
                        &pod.namespace,
                        &pod.name,
                    ))
                    .or_insert_with(|| (pod.ips.clone(), Vec::new()))
                    .1
                    .push(chain.clone());
            }
        }
    }
    let mut out = c.out;
    for (k, dir) in [(0, Dir::In), (1, Dir::Eg)] {
        let (mut m4, mut m6) = (vmap(true), vmap(false));
        for (pod_chain, (ips, chains)) in &isolated[k] {
            let mut rules: Vec<String> = chains.iter().map(|c| format!("jump {c}")).collect();
            rules.push("counter drop".into());
            out.chains
                .insert(pod_chain.clone(), Chain { base: None, rules });
            for ip in ips {
                let m = if v4(ip) { &mut m4 } else { &mut m6 };
                m.elems.insert(format!("{ip} : jump {pod_chain}"));
            }
        }
        let (field, name, prio) = match dir {
            Dir::In => ("daddr", "ingress", "filter"),
            Dir::Eg => ("saddr", "egress", "filter - 1"),
        };
        let map = |is_v4: bool| format!("pods-{}{}", dir.tag(), if is_v4 { "4" } else { "6" });
        out.chains.insert(
            name.into(),
            Chain {
                base: Some(format!(
                    "type filter hook forward priority {prio} ; policy accept ;"
                )),
                rules: vec![
                    "ct state established,related accept".into(),
                    // IPv6 neighbour discovery between pods of one node is bridged through
                    // this hook: an isolated pod must still resolve its peers' addresses.
                    NEIGHBOUR_DISCOVERY.into(),
                    format!("ip {field} vmap @{}", map(true)),
                    format!("ip6 {field} vmap @{}", map(false)),
                ],
            },
        );
        out.sets.insert(map(true), m4);
        out.sets.insert(map(false), m6);
    }
    out
}

/// Every policy's problems, named: what a log line says is not enforced.
pub fn problems(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .policies
        .values()
        .flat_map(|p| {
            p.problems.iter().map(move |x| {
                format!(
                    "networkpolicy {}: {x} (not enforced: allows nothing)",
                    p.key()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
