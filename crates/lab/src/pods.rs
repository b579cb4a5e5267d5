//! Pods: a network namespace attached through the CNI plugin (ours, as the kubelet calls it
//! on that node), the lab's TCP and UDP servers inside it, and in a kube lab the Pod object
//! a kubelet would register (spec.nodeName, status.podIP/podIPs, phase Running, labels,
//! containers with their named ports).

use crate::cluster::{kubectl, spawn_in_ns};
use crate::cni_exec::{self, Invocation};
use crate::kube_node;
use crate::names::*;
use crate::preflight::CNI_DIR;
use crate::sh::ip;
use crate::state::{LabState, NamedPort, NodeState, PodState};
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The ports every lab pod serves on, TCP (accept) and UDP (echo): the upstream network
/// policy suite's 80 and 81.
pub const SERVED: [u16; 2] = [80, 81];

/// What `pod add` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<NamedPort>,
}

/// `NAMESPACE/NAME` (a name alone is in `default`), checked as Kubernetes checks names.
pub fn parse_key(s: &str) -> anyhow::Result<(String, String)> {
    let (ns, name) = s.split_once('/').unwrap_or(("default", s));
    let ok = |x: &str| {
        !x.is_empty()
            && x.len() <= 63
            && x.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !x.starts_with('-')
            && !x.ends_with('-')
    };
    if !ok(ns) || !ok(name) {
        bail!("pod {s:?}: NAMESPACE/NAME, each lowercase letters, digits and '-' (at most 63)");
    }
    Ok((ns.into(), name.into()))
}

/// `k=v,k=v`.
pub fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--labels {kv:?}: KEY=VALUE"))
        })
        .collect()
}

/// `NAME=PORT/PROTO` (PROTO tcp, udp or sctp; tcp when left out).
pub fn parse_port(s: &str) -> anyhow::Result<NamedPort> {
    let bad = || anyhow!("--port {s:?}: NAME=PORT/PROTO, e.g. serve-80-tcp=80/tcp");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "sctp" => "SCTP",
        _ => return Err(bad()),
    };
    if name.is_empty() {
        return Err(bad());
    }
    Ok(NamedPort {
        name: name.into(),
        port,
        protocol: protocol.into(),
    })
}

/// The namespace of a pod: `up`'s pods keep their short names, others are `<lab>-<ns>.<name>`
/// (Kubernetes namespaces have no dot, so it cannot clash).
pub fn netns_of(lab: &str, namespace: &str, name: &str) -> String {
    if namespace == "default" {
        pod_ns(lab, name)
    } else {
        format!("{lab}-{namespace}.{name}")
    }
}

/// The conflist and plugin path a node's kubelet uses.
fn cni_config(n: &NodeState, dir: &Path, bin_dir: &Path) -> anyhow::Result<(Value, String)> {
    let node_dir = dir.join(&n.name);
    if n.cni_binds.is_empty() {
        Ok((
            cni_exec::tutorial_conflist(&node_dir),
            format!("{}:{CNI_DIR}", bin_dir.display()),
        ))
    } else {
        Ok((
            kube_node::installed_conflist(&n.cni_binds)?,
            kube_node::CNI_PATH.to_string(),
        ))
    }
}

/// Makes `pns` and attaches it to node `n` through the CNI plugin; returns the pod's IPv4 and
/// IPv6 addresses (empty when the network has no such family).
pub fn attach(
    n: &NodeState,
    dir: &Path,
    bin_dir: &Path,
    pns: &str,
    pod: &str,
) -> anyhow::Result<(String, String)> {
    let (list, cni_path) = cni_config(n, dir, bin_dir)?;
    ip(&["netns", "add", pns])?;
    ip(&["-n", pns, "link", "set", "lo", "up"])?;
    let netns_path = format!("/run/netns/{pns}");
    let inv = Invocation {
        node_ns: &n.netns,
        container_id: pns,
        netns_path: &netns_path,
        ifname: "eth0",
        cni_path: &cni_path,
        binds: &n.cni_binds,
    };
    let result = cni_exec::add(&list, &inv).with_context(|| format!("adding pod {pod}"))?;
    let results = dir.join(&n.name).join("results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join(format!("{pns}.json")), result.to_string())?;
    Ok((
        cni_exec::result_ip(&result, false).unwrap_or_default(),
        cni_exec::result_ip(&result, true).unwrap_or_default(),
    ))
}

/// The lab's servers in a pod (`flannel-lab serve`), logged beside the node's files.
pub fn start_servers(bin_dir: &Path, dir: &Path, pns: &str) -> anyhow::Result<()> {
    let exe = bin_dir.join("flannel-lab");
    if !exe.is_file() {
        bail!(
            "{} is not there: the pods' servers are flannel-lab's own `serve`",
            exe.display()
        );
    }
    let log = dir.join(format!("{pns}.serve.log"));
    spawn_in_ns(
        pns,
        &exe.display().to_string(),
        &["serve".to_string()],
        &log,
    )?;
    Ok(())
}

/// The Pod object a kubelet would have: created, then its status written to `/status`.
pub fn pod_object(p: &PodState, node: &str) -> (Value, Value) {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|np| json!({"name": np.name, "containerPort": np.port, "protocol": np.protocol}))
        .collect();
    let ips: Vec<Value> = [&p.ip, &p.ip6]
        .into_iter()
        .filter(|a| !a.is_empty())
        .map(|a| json!({"ip": a}))
        .collect();
    let primary = if p.ip.is_empty() { &p.ip6 } else { &p.ip };
    let obj = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "flannel-lab/serve", "ports": ports}]},
    });
    let status = json!({"status": {"phase": "Running", "podIP": primary, "podIPs": ips}});
    (obj, status)
}

/// Writes `v` to a file and runs `kubectl ARGS -f FILE`.
fn kubectl_file(state: &LabState, args: &[&str], v: &Value, tag: &str) -> anyhow::Result<()> {
    let f = state.state_dir.join(format!("{tag}.json"));
    std::fs::write(&f, v.to_string())?;
    let fs = f.display().to_string();
    let mut a = args.to_vec();
    a.extend(["-f", fs.as_str()]);
    kubectl(state, &a).map(|_| ())
}

/// Kube labs: the Namespace (when missing) and the Pod with its status.
pub fn register(state: &LabState, p: &PodState, node: &str) -> anyhow::Result<()> {
    if state.datastore != "kube" {
        return Ok(());
    }
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": p.namespace}});
    kubectl_file(state, &["apply"], &ns, "namespace")
        .with_context(|| format!("creating namespace {}", p.namespace))?;
    let (obj, status) = pod_object(p, node);
    kubectl_file(state, &["apply"], &obj, "pod")
        .with_context(|| format!("creating pod {}", p.key()))?;
    kubectl(
        state,
        &[
            "patch",
            "pod",
            "-n",
            &p.namespace,
            &p.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
    )
    .with_context(|| format!("writing the status of pod {}", p.key()))?;
    Ok(())
}

/// `pod add`: the namespace, CNI ADD, the servers, the Pod object; saved in the lab state.
pub fn add(state: &mut LabState, new: NewPod) -> anyhow::Result<PodState> {
    let key = format!("{}/{}", new.namespace, new.name);
    if state.pods().any(|p| p.key() == key) {
        bail!("pod {key} exists already");
    }
    let ni = state
        .nodes
        .iter()
        .position(|n| n.name == new.node)
        .ok_or_else(|| {
            anyhow!(
                "no node {:?} in lab {} (nodes: {})",
                new.node,
                state.lab,
                state
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let pns = netns_of(&state.lab, &new.namespace, &new.name);
    let (ip4, ip6) = attach(
        &state.nodes[ni],
        &state.state_dir,
        &state.bin_dir,
        &pns,
        &key,
    )?;
    start_servers(&state.bin_dir, &state.state_dir, &pns)?;
    let pod = PodState {
        name: new.name,
        netns: pns,
        ip: ip4,
        ip6,
        namespace: new.namespace,
        labels: new.labels,
        ports: new.ports,
    };
    state.nodes[ni].pods.push(pod.clone());
    state.save()?;
    register(state, &pod, &new.node)?;
    Ok(pod)
}

/// `pod del`: the servers stopped, CNI DEL, the namespace and the Pod object gone.
pub fn del(state: &mut LabState, what: &str) -> anyhow::Result<PodState> {
    let (node, pod) = {
        let (n, p) = state.find_pod(what)?;
        (n.clone(), p.clone())
    };
    for pid in flannel_testkit::netns::pids_in(&pod.netns) {
        // SAFETY: kill(2) on a PID read from the pod's namespace; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (list, cni_path) = cni_config(&node, &state.state_dir, &state.bin_dir)?;
    let netns_path = format!("/run/netns/{}", pod.netns);
    let inv = Invocation {
        node_ns: &node.netns,
        container_id: &pod.netns,
        netns_path: &netns_path,
        ifname: "eth0",
        cni_path: &cni_path,
        binds: &node.cni_binds,
    };
    let cached = std::fs::read_to_string(
        state
            .state_dir
            .join(&node.name)
            .join("results")
            .join(format!("{}.json", pod.netns)),
    )
    .ok()
    .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    cni_exec::del(&list, &inv, cached.as_ref())
        .with_context(|| format!("CNI DEL of {}", pod.key()))?;
    ip(&["netns", "del", &pod.netns])?;
    for n in &mut state.nodes {
        n.pods.retain(|p| p.key() != pod.key());
    }
    state.save()?;
    if state.datastore == "kube" {
        kubectl(
            state,
            &[
                "delete",
                "pod",
                "-n",
                &pod.namespace,
                &pod.name,
                "--wait=false",
            ],
        )
        .with_context(|| format!("deleting the Pod object {}", pod.key()))?;
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_labels_and_ports_parse_or_say_why() {
        assert_eq!(parse_key("x/a").unwrap(), ("x".into(), "a".into()));
        assert_eq!(parse_key("a").unwrap(), ("default".into(), "a".into()));
        assert!(
            parse_key("X/a").is_err() && parse_key("x/").is_err() && parse_key("x/a.b").is_err()
        );
        assert_eq!(parse_labels("pod=a,ns=x").unwrap().len(), 2);
        assert!(parse_labels("pod")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        let p = parse_port("serve-81-udp=81/udp").unwrap();
        assert_eq!(
            (p.name.as_str(), p.port, p.protocol.as_str()),
            ("serve-81-udp", 81, "UDP")
        );
        assert_eq!(parse_port("http=80").unwrap().protocol, "TCP");
        assert!(
            parse_port("http=0/tcp").is_err()
                && parse_port("=80").is_err()
                && parse_port("h=80/icmp").is_err()
        );
        assert_eq!(netns_of("flab", "x", "a"), "flab-x.a");
        assert_eq!(netns_of("flab", "default", "node1-pod1"), "flab-node1-pod1");
    }

    #[test]
    fn the_pod_object_is_what_a_kubelet_registers() {
        let p = PodState {
            name: "a".into(),
            netns: "flab-x.a".into(),
            ip: "10.244.1.5".into(),
            ip6: "fd00:0:0:1::5".into(),
            namespace: "x".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            ports: vec![parse_port("serve-80-tcp=80/tcp").unwrap()],
        };
        let (o, s) = pod_object(&p, "node2");
        assert_eq!(o["spec"]["nodeName"], "node2");
        assert_eq!(o["metadata"]["labels"]["pod"], "a");
        assert_eq!(
            o["spec"]["containers"][0]["ports"][0]["name"],
            "serve-80-tcp"
        );
        assert_eq!(
            s["status"]["podIPs"],
            json!([{"ip": "10.244.1.5"}, {"ip": "fd00:0:0:1::5"}])
        );
        assert_eq!(s["status"]["phase"], "Running");
    }
}
