//! Pods, Namespaces and NetworkPolicies from the API's JSON, keeping only what the compiler
//! needs. A policy is read part by part: what cannot be read is recorded in
//! [`Policy::problems`] and allows nothing, while the rest of the policy (and above all its
//! pod selector, which isolates) still counts.

use crate::model::*;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    name: String,
    namespace: String,
    labels: Labels,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodSpecW {
    node_name: String,
    host_network: bool,
    containers: Vec<ContainerW>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContainerW {
    ports: Vec<ContainerPortW>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerPortW {
    name: String,
    container_port: i64,
    protocol: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodIpW {
    ip: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodStatusW {
    phase: String,
    #[serde(rename = "podIP")]
    pod_ip: String,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<PodIpW>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodW {
    metadata: Meta,
    spec: PodSpecW,
    status: PodStatusW,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NamespaceW {
    metadata: Meta,
}

fn named(what: &str, m: &Meta) -> Result<(), DecodeError> {
    if m.name.is_empty() {
        return Err(DecodeError(format!("{what} without metadata.name")));
    }
    Ok(())
}

/// A Pod: its labels, addresses, node, phase, hostNetwork and named container ports.
pub fn pod(v: &Value) -> Result<Pod, DecodeError> {
    let w = PodW::deserialize(v).map_err(|e| {
        DecodeError(format!(
            "pod {}/{}: {e}",
            v["metadata"]["namespace"].as_str().unwrap_or("?"),
            v["metadata"]["name"].as_str().unwrap_or("?")
        ))
    })?;
    named("pod", &w.metadata)?;
    let mut ips: Vec<IpAddr> = Vec::new();
    let texts = std::iter::once(w.status.pod_ip.as_str())
        .chain(w.status.pod_ips.iter().map(|p| p.ip.as_str()));
    for t in texts.filter(|t| !t.is_empty()) {
        if let Ok(ip) = t.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    let ports = w
        .spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone(),
                port: u16::try_from(p.container_port).ok().filter(|n| *n > 0)?,
                proto: Proto::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
            })
        })
        .collect();
    Ok(Pod {
        namespace: w.metadata.namespace,
        name: w.metadata.name,
        node: w.spec.node_name,
        labels: w.metadata.labels,
        ips,
        host_network: w.spec.host_network,
        phase: w.status.phase,
        ports,
    })
}

/// A Namespace: its name and labels, with `kubernetes.io/metadata.name` always present (the
/// API server sets it on every namespace; an object written without it still has it).
pub fn namespace(v: &Value) -> Result<Namespace, DecodeError> {
    let w = NamespaceW::deserialize(v).map_err(|e| {
        DecodeError(format!(
            "namespace {}: {e}",
            v["metadata"]["name"].as_str().unwrap_or("?")
        ))
    })?;
    named("namespace", &w.metadata)?;
    let mut labels = w.metadata.labels;
    labels.insert(NAME_LABEL.into(), w.metadata.name.clone());
    Ok(Namespace {
        name: w.metadata.name,
        labels,
    })
}

/// What one policy's reading found wrong, with where.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{at}: {what}"));
    }
}

fn selector(v: &Value, at: &str, p: &mut Problems) -> Selector {
    let mut s = Selector::default();
    if v.is_null() {
        return s;
    }
    let Some(obj) = v.as_object() else {
        p.add(at, "not an object");
        s.invalid = true;
        return s;
    };
    match &obj.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                match val.as_str() {
                    Some(val) => {
                        s.labels.insert(k.clone(), val.to_string());
                    }
                    None => {
                        p.add(&format!("{at}.matchLabels.{k}"), "not a string");
                        s.invalid = true;
                    }
                }
            }
        }
        Some(_) => {
            p.add(&format!("{at}.matchLabels"), "not an object");
            s.invalid = true;
        }
    }
    match &obj.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(es)) => {
            for (i, e) in es.iter().enumerate() {
                let at = format!("{at}.matchExpressions[{i}]");
                let op = match e["operator"].as_str() {
                    Some("In") => Op::In,
                    Some("NotIn") => Op::NotIn,
                    Some("Exists") => Op::Exists,
                    Some("DoesNotExist") => Op::DoesNotExist,
                    other => {
                        p.add(&at, format!("unknown operator {:?}", other.unwrap_or("")));
                        s.invalid = true;
                        continue;
                    }
                };
                let Some(key) = e["key"].as_str() else {
                    p.add(&at, "no key");
                    s.invalid = true;
                    continue;
                };
                let values = e["values"]
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                s.exprs.push(Expr {
                    key: key.into(),
                    op,
                    values,
                });
            }
        }
        Some(_) => {
            p.add(&format!("{at}.matchExpressions"), "not a list");
            s.invalid = true;
        }
    }
    s
}

fn net(v: &Value, at: &str, p: &mut Problems) -> Option<IpNet> {
    match v.as_str().map(|s| s.parse::<IpNet>()) {
        Some(Ok(n)) => Some(n.trunc()),
        Some(Err(e)) => {
            p.add(at, format!("{:?}: {e}", v.as_str().unwrap_or("")));
            None
        }
        None => {
            p.add(at, "not a CIDR string");
            None
        }
    }
}

fn peer(v: &Value, at: &str, p: &mut Problems) -> Peer {
    let block = &v["ipBlock"];
    let (ps, ns) = (&v["podSelector"], &v["namespaceSelector"]);
    if !block.is_null() {
        if !ps.is_null() || !ns.is_null() {
            p.add(at, "ipBlock together with a selector");
            return Peer::Nothing;
        }
        let Some(cidr) = net(&block["cidr"], &format!("{at}.ipBlock.cidr"), p) else {
            return Peer::Nothing;
        };
        let mut except = Vec::new();
        if let Some(es) = block["except"].as_array() {
            for (i, e) in es.iter().enumerate() {
                match net(e, &format!("{at}.ipBlock.except[{i}]"), p) {
                    Some(n) => except.push(n),
                    // An exception we cannot read: the block would allow more than meant.
                    None => return Peer::Nothing,
                }
            }
        }
        return Peer::Block { cidr, except };
    }
    if ps.is_null() && ns.is_null() {
        p.add(
            at,
            "a peer with no podSelector, namespaceSelector or ipBlock",
        );
        return Peer::Nothing;
    }
    let pods = (!ps.is_null()).then(|| selector(ps, &format!("{at}.podSelector"), p));
    let namespaces = (!ns.is_null()).then(|| selector(ns, &format!("{at}.namespaceSelector"), p));
    Peer::Pods { pods, namespaces }
}

fn port_spec(v: &Value, at: &str, p: &mut Problems) -> PortSpec {
    let proto = match v["protocol"].as_str() {
        None => Proto::Tcp,
        Some(s) => match Proto::parse(s) {
            Some(pr) => pr,
            None => {
                p.add(at, format!("unknown protocol {s:?}"));
                return PortSpec::Nothing;
            }
        },
    };
    let end = &v["endPort"];
    match &v["port"] {
        Value::Null => PortSpec::All(proto),
        Value::String(name) => {
            if !end.is_null() {
                p.add(at, "endPort with a named port");
                return PortSpec::Nothing;
            }
            PortSpec::Named {
                proto,
                name: name.clone(),
            }
        }
        Value::Number(n) => {
            let from = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
            let to = match end {
                Value::Null => from,
                e => e.as_u64().and_then(|n| u16::try_from(n).ok()),
            };
            match (from, to) {
                (Some(from), Some(to)) if to >= from => PortSpec::Range { proto, from, to },
                _ => {
                    p.add(at, format!("port {n} endPort {end}: not a port range"));
                    PortSpec::Nothing
                }
            }
        }
        other => {
            p.add(at, format!("port {other}: neither a number nor a name"));
            PortSpec::Nothing
        }
    }
}

fn rules(v: &Value, peers_key: &str, at: &str, p: &mut Problems) -> Vec<Rule> {
    let Some(list) = v.as_array() else {
        if !v.is_null() {
            p.add(at, "not a list");
        }
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{at}[{i}]");
            let peers = r[peers_key]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .enumerate()
                        .map(|(j, x)| peer(x, &format!("{at}.{peers_key}[{j}]"), p))
                        .collect()
                })
                .unwrap_or_default();
            let ports = r["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .enumerate()
                        .map(|(j, x)| port_spec(x, &format!("{at}.ports[{j}]"), p))
                        .collect()
                })
                .unwrap_or_default();
            Rule { peers, ports }
        })
        .collect()
}

/// A NetworkPolicy. Fails only without a name; everything else that cannot be read is a
/// problem of the policy and allows nothing.
pub fn policy(v: &Value) -> Result<Policy, DecodeError> {
    let (Some(name), namespace) = (
        v["metadata"]["name"].as_str(),
        v["metadata"]["namespace"].as_str().unwrap_or("default"),
    ) else {
        return Err(DecodeError("networkpolicy without metadata.name".into()));
    };
    let spec = &v["spec"];
    let mut p = Problems(Vec::new());
    let pod_selector = selector(&spec["podSelector"], "spec.podSelector", &mut p);
    let ingress = rules(&spec["ingress"], "from", "spec.ingress", &mut p);
    let egress = rules(&spec["egress"], "to", "spec.egress", &mut p);
    let (mut is_in, mut is_eg) = (false, false);
    match &spec["policyTypes"] {
        Value::Null => {
            is_in = true;
            is_eg = !egress.is_empty();
        }
        Value::Array(ts) => {
            for t in ts {
                match t.as_str() {
                    Some("Ingress") => is_in = true,
                    Some("Egress") => is_eg = true,
                    other => {
                        // Unknown: isolate both ways rather than guess.
                        p.add(
                            "spec.policyTypes",
                            format!("unknown type {:?}", other.unwrap_or("")),
                        );
                        is_in = true;
                        is_eg = true;
                    }
                }
            }
        }
        _ => {
            p.add("spec.policyTypes", "not a list");
            is_in = true;
            is_eg = true;
        }
    }
    Ok(Policy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector,
        ingress: is_in.then_some(ingress),
        egress: is_eg.then_some(egress),
        problems: p.0,
    })
}

#[cfg(test)]
mod tests;
