//! Runs a CNI network configuration list the way a container runtime (libcni) does: plugins in
//! order for ADD, each given the previous result; in reverse order for DEL.

use crate::sh;
use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// One CNI invocation's environment.
pub struct Invocation<'a> {
    /// The node namespace the plugins run in (where `cni0` lives).
    pub node_ns: &'a str,
    pub container_id: &'a str,
    /// Path of the pod's network namespace, e.g. `/run/netns/flab-node1-pod1`.
    pub netns_path: &'a str,
    pub ifname: &'a str,
    /// `CNI_PATH`: our plugin's directory, then the system plugins.
    pub cni_path: &'a str,
    /// The node's own files (kube-mode labs: its `/run/flannel`, `/opt/cni/bin`, ...).
    pub binds: &'a [crate::nodefs::Bind],
}

fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> anyhow::Result<Value> {
    let mut conf: Map<String, Value> = plugin
        .as_object()
        .cloned()
        .ok_or_else(|| anyhow!("plugin entry is not an object"))?;
    conf.insert("name".into(), list["name"].clone());
    conf.insert("cniVersion".into(), list["cniVersion"].clone());
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    Ok(Value::Object(conf))
}

/// The plugin's path as the node sees it (looked up through the node's binds).
fn find(cni_path: &str, plugin: &str, binds: &[crate::nodefs::Bind]) -> anyhow::Result<String> {
    cni_path
        .split(':')
        .map(|d| Path::new(d).join(plugin))
        .find(|p| crate::nodefs::host_path(binds, p).is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("CNI plugin {plugin:?} not found in {cni_path}"))
}

fn exec(inv: &Invocation, command: &str, plugin: &str, conf: &Value) -> anyhow::Result<Value> {
    let bin = find(inv.cni_path, plugin, inv.binds)?;
    let mut c = sh::in_ns(inv.node_ns, &bin, &[]);
    crate::nodefs::apply(&mut c, inv.binds)?;
    c.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns_path)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: std::process::Child =
        spawn(&mut c).with_context(|| format!("starting CNI plugin {plugin}"))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "CNI {command} of plugin {plugin} for {} failed: {} {}",
            inv.container_id,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout)
        .with_context(|| format!("CNI plugin {plugin} printed a result that is not JSON: {stdout}"))
}

fn spawn(c: &mut Command) -> std::io::Result<std::process::Child> {
    c.spawn()
}

/// ADD through every plugin of the list; returns the final result.
pub fn add(list: &Value, inv: &Invocation) -> anyhow::Result<Value> {
    let plugins = list["plugins"]
        .as_array()
        .ok_or_else(|| anyhow!("conflist has no plugins"))?;
    let mut prev: Option<Value> = None;
    for p in plugins {
        let ty = p["type"]
            .as_str()
            .ok_or_else(|| anyhow!("plugin without type"))?;
        let conf = plugin_conf(list, p, prev.as_ref())?;
        let r = exec(inv, "ADD", ty, &conf)?;
        prev = Some(r);
    }
    prev.ok_or_else(|| anyhow!("conflist has no plugins"))
}

/// DEL through every plugin in reverse order, given the cached ADD result (if any).
pub fn del(list: &Value, inv: &Invocation, cached: Option<&Value>) -> anyhow::Result<()> {
    let plugins = list["plugins"]
        .as_array()
        .ok_or_else(|| anyhow!("conflist has no plugins"))?;
    let mut errors = Vec::new();
    for p in plugins.iter().rev() {
        let ty = p["type"].as_str().unwrap_or_default();
        let conf = plugin_conf(list, p, cached)?;
        if let Err(e) = exec(inv, "DEL", ty, &conf) {
            errors.push(e.to_string());
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// The first IPv4 address of a CNI result, without its prefix length.
pub fn result_ipv4(result: &Value) -> Option<String> {
    result_ip(result, false)
}

/// The first address of a family in a CNI result, without prefix.
pub fn result_ip(result: &Value, v6: bool) -> Option<String> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let a = ip["address"].as_str()?;
        let addr = a.split('/').next()?;
        addr.parse::<std::net::IpAddr>()
            .ok()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|_| addr.to_string())
    })
}

/// The tutorial's conflist (`cbr0`: flannel with hairpinMode and isDefaultGateway, then portmap),
/// with this node's files, since every lab node shares one filesystem.
pub fn tutorial_conflist(node_dir: &Path) -> Value {
    serde_json::json!({
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {
                "type": "flannel",
                "subnetFile": node_dir.join("subnet.env"),
                "dataDir": node_dir.join("cni/flannel"),
                "delegate": {"hairpinMode": true, "isDefaultGateway": true},
                "ipam": {"dataDir": node_dir.join("cni/networks")}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_conf_gets_name_version_and_prev_result() {
        let list = tutorial_conflist(Path::new("/x"));
        let prev = serde_json::json!({"ips":[{"version":"4","address":"10.244.1.2/24"}]});
        let c = plugin_conf(&list, &list["plugins"][1], Some(&prev)).unwrap();
        assert_eq!(c["name"], "cbr0");
        assert_eq!(c["cniVersion"], "0.3.1");
        assert_eq!(c["type"], "portmap");
        assert_eq!(result_ipv4(&c["prevResult"]).as_deref(), Some("10.244.1.2"));
        assert_eq!(list["plugins"][0]["subnetFile"], "/x/subnet.env");
    }
}
