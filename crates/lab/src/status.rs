//! `status`: the lab for people (with each node's routes and FDB as the tutorial shows them) and
//! for programs (`--json`).

use crate::sh::ip;
use crate::state::LabState;
use serde_json::json;

pub fn to_json(state: &LabState) -> serde_json::Value {
    json!({
        "lab": state.lab,
        "backend": state.backend,
        "nodes": state.nodes.iter().map(|n| json!({
            "name": n.name,
            "netns": n.netns,
            "ip": n.ip,
            "subnet": n.subnet,
            "log": n.log,
            "pods": n.pods.iter().map(|p| json!({"name": p.name, "netns": p.netns, "ip": p.ip})).collect::<Vec<_>>(),
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
    for n in &state.nodes {
        s += &format!(
            "\n{} ({}) eth0 {} subnet {}\n",
            n.name, n.netns, n.ip, n.subnet
        );
        for p in &n.pods {
            s += &format!("  pod {} ({}) {}\n", p.name, p.netns, p.ip);
        }
        s += &format!(
            "  $ ip route\n{}",
            indent(&ip(&["-n", &n.netns, "route"]).unwrap_or_else(|e| e.to_string()))
        );
        s += &format!(
            "  $ bridge fdb show dev flannel.1\n{}",
            indent(
                &crate::sh::run(&mut crate::sh::cmd(
                    "bridge",
                    &["-n", &n.netns, "fdb", "show", "dev", "flannel.1"]
                ))
                .unwrap_or_else(|e| e.to_string())
            )
        );
        s += &format!("  flanneld log: {}\n", n.log.display());
    }
    s += &format!("\netcd log: {}\n", state.etcd_log.display());
    s
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("    {l}\n")).collect()
}
