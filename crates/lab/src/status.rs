//! `status`: the lab for people (with each node's routes and FDB as the tutorial shows them) and
//! for programs (`--json`).

use crate::sh::ip;
use crate::state::LabState;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Kube mode: each Node as the API server has it (podCIDR, flannel's annotations,
/// NetworkUnavailable), read with kubectl; an error text when that fails.
fn kube_nodes(state: &LabState) -> Result<BTreeMap<String, Value>, String> {
    if state.datastore != "kube" {
        return Ok(BTreeMap::new());
    }
    let out = crate::cluster::kubectl(state, &["get", "nodes", "-o", "json"])
        .map_err(|e| e.to_string())?;
    let list: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let unavailable = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "NetworkUnavailable")
                .map(|c| {
                    format!(
                        "{} ({})",
                        c["status"].as_str().unwrap_or("?"),
                        c["reason"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "not set".into());
            let annotations: serde_json::Map<String, Value> = n["metadata"]["annotations"]
                .as_object()
                .map(|a| {
                    a.iter()
                        .filter(|(k, _)| k.contains("flannel"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                json!({
                    "podCIDR": n["spec"]["podCIDR"],
                    "annotations": annotations,
                    "NetworkUnavailable": unavailable,
                }),
            )
        })
        .collect())
}

pub fn to_json(state: &LabState) -> serde_json::Value {
    let kube = kube_nodes(state);
    json!({
        "datastore": state.datastore,
        "kube_error": kube.as_ref().err(),
        "lab": state.lab,
        "backend": state.backend,
        "nodes": state.nodes.iter().map(|n| json!({
            "name": n.name,
            "netns": n.netns,
            "ip": n.ip,
            "subnet": n.subnet,
            "ip6": n.ip6,
            "subnet6": n.subnet6,
            "log": n.log,
            "kube": kube.as_ref().ok().and_then(|k| k.get(&n.name)),
            "metrics": crate::metrics::scrape(n).ok().map(|m| crate::metrics::key_figures(&m)),
            "pods": n.pods.iter().map(|p| json!({"name": p.name, "namespace": p.namespace, "node": n.name, "netns": p.netns, "ip": p.ip, "ip6": p.ip6, "labels": p.labels})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "logs": {
            "etcd": state.etcd_log,
            "flanneld": state.nodes.iter().map(|n| (n.name.clone(), json!(n.log))).collect::<serde_json::Map<_, _>>(),
        },
        "state_dir": state.state_dir,
    })
}

pub fn render(state: &LabState) -> String {
    let mut s = format!(
        "lab {} ({} backend), state in {}\n",
        state.lab,
        state.backend,
        state.state_dir.display()
    );
    let kube = kube_nodes(state);
    if let Err(e) = &kube {
        s += &format!("(the API server could not be asked: {e})\n");
    }
    for n in &state.nodes {
        s += &format!(
            "\n{} ({}) eth0 {} subnet {}\n",
            n.name, n.netns, n.ip, n.subnet
        );
        if !n.ip6.is_empty() {
            s += &format!("  IPv6: eth0 {} subnet {}\n", n.ip6, n.subnet6);
        }
        if let Some(k) = kube.as_ref().ok().and_then(|k| k.get(&n.name)) {
            s += &format!(
                "  Node: podCIDR {}, NetworkUnavailable {}\n",
                k["podCIDR"].as_str().unwrap_or("none"),
                k["NetworkUnavailable"].as_str().unwrap_or("?")
            );
            for (key, v) in k["annotations"].as_object().into_iter().flatten() {
                s += &format!("    {key}: {}\n", v.as_str().unwrap_or_default());
            }
        }
        for p in &n.pods {
            s += &format!(
                "  pod {} ({}) {} {}\n",
                crate::ping::display(p),
                p.netns,
                p.ip,
                p.ip6
            );
        }
        s += &format!(
            "  $ ip route\n{}",
            indent(&ip(&["-n", &n.netns, "route"]).unwrap_or_else(|e| e.to_string()))
        );
        if !n.ip6.is_empty() {
            s += &format!(
                "  $ ip -6 route\n{}",
                indent(&ip(&["-n", &n.netns, "-6", "route"]).unwrap_or_else(|e| e.to_string()))
            );
        }
        // Only vxlan has VXLAN devices and their FDB.
        let devices: &[&str] = match (state.backend.as_str(), n.ip6.is_empty()) {
            ("vxlan", true) => &["flannel.1"],
            ("vxlan", false) => &["flannel.1", "flannel-v6.1"],
            _ => &[],
        };
        for dev in devices {
            s += &format!(
                "  $ bridge fdb show dev {dev}\n{}",
                indent(
                    &crate::sh::run(&mut crate::sh::cmd(
                        "bridge",
                        &["-n", &n.netns, "fdb", "show", "dev", dev]
                    ))
                    .unwrap_or_else(|e| e.to_string())
                )
            );
        }
        s += &match crate::metrics::scrape(n) {
            Ok(m) => format!("  flanneld metrics: {}\n", crate::metrics::line(&m)),
            Err(e) => format!("  flanneld metrics: not readable ({e}): is flanneld running?\n"),
        };
        s += &format!("  flanneld log: {}\n", n.log.display());
    }
    if state.datastore == "kube" {
        s += &format!(
            "\nAPI server log: {}\nkubeconfig: {} (or: flannel-lab kubectl get nodes)\n",
            state.api_log.display(),
            state.kubeconfig().display()
        );
    } else {
        s += &format!("\netcd log: {}\n", state.etcd_log.display());
    }
    s
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("    {l}\n")).collect()
}
