//! Reads the facts the checks judge, from this node (the network namespace flannelctl runs
//! in): flanneld's state over its socket, sysctls, links and kernel entries over netlink,
//! the firewall through the tools flanneld uses, subnet.env.

use super::checks::{Facts, InputRule, LinkFact};
use crate::client;
use flannel_core::state::{KernelEntry, StateSnapshot};
use flannel_net::firewall::{self, FamilyNets, FirewallConfig};
use flannel_net::{Family, NetOps, Netlink};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Where the state comes from: flanneld's socket, or a snapshot saved before; with neither,
/// the node (`subnet_file`, the devices, the firewall).
pub struct Source<'a> {
    pub socket: &'a Path,
    pub state_file: Option<&'a Path>,
    pub subnet_file: &'a Path,
    /// flannelctl's environment (`kubectl exec` gives the pod's), for how flanneld runs here.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

pub async fn gather(src: &Source<'_>) -> anyhow::Result<Facts> {
    let mut f = Facts {
        socket: src.socket.display().to_string(),
        ..Facts::default()
    };
    f.flanneld = match client::get(src.socket, "/readyz") {
        Ok((200, _)) => Ok(()),
        // flanneld runs and answers; what holds its watch up is the datastore check's.
        Ok((503, body)) if body.contains("not progressing") => Ok(()),
        Ok((code, body)) => Err(format!("/readyz answered {code}: {}", body.trim())),
        Err(e) => {
            f.busy = e.downcast_ref::<client::Busy>().is_some();
            Err(format!("{e:#}"))
        }
    };
    f.state = match src.state_file {
        Some(file) => Some(client::state_from_file(file)?),
        None if f.flanneld.is_ok() => match client::state(src.socket) {
            Ok(s) => Some(s),
            Err(e) => {
                f.busy = e.downcast_ref::<client::Busy>().is_some();
                f.flanneld = Err(format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    let reported = f.state.as_ref().map(|s| s.node.runs_as);
    f.restart = crate::runs_as::Hints::detect(src.env, reported).restart();
    if f.state.is_none() && f.flanneld.is_err() && !f.busy {
        f.state = Some(super::from_node::read(src.subnet_file).await?);
        f.from_node = true;
    }
    let Some(s) = f.state.clone() else {
        return Ok(f);
    };
    f.sysctl = sysctls(&s);
    let nl = Netlink::new()?;
    kernel(&nl, &s, &mut f).await?;
    f.subnet_env = std::fs::read_to_string(&s.node.subnet_file).map_err(|e| e.to_string());
    f.firewall_missing = firewall_missing(&s);
    if s.node.firewall == "iptables" {
        for tool in tools(&s) {
            let lines = lines_of(tool, &["-w", "-S", "FORWARD"]);
            if let Some(p) = lines.iter().find_map(|l| l.strip_prefix("-P FORWARD ")) {
                f.forward_policy.push((tool, p.trim().to_string()));
            }
            f.input_rules.extend(
                lines_of(tool, &["-w", "-S", "INPUT"])
                    .into_iter()
                    .filter(|l| l.starts_with("-A "))
                    .map(|line| InputRule {
                        tool,
                        line,
                        nft_handle: None,
                    }),
            );
        }
    }
    // iptables-nft keeps its rules in nft tables too: those are already read through it.
    let nft_backed = lines_of("iptables", &["-V"])
        .iter()
        .any(|l| l.contains("nf_tables"));
    f.input_rules.extend(
        nft_input_rules(&lines_of("nft", &["-a", "list", "ruleset"]))
            .into_iter()
            .filter(|r| {
                let h = r.nft_handle.as_deref().unwrap_or("");
                !(nft_backed
                    && (h.starts_with("ip filter INPUT ") || h.starts_with("ip6 filter INPUT ")))
            }),
    );
    Ok(f)
}

fn tools(s: &StateSnapshot) -> Vec<&'static str> {
    let mut t = Vec::new();
    if s.own.subnet.is_some() {
        t.push("iptables");
    }
    if s.own.subnet6.is_some() {
        t.push("ip6tables");
    }
    t
}

/// A tool's output lines; none when it is missing or fails (the checks then see nothing).
fn lines_of(tool: &str, args: &[&str]) -> Vec<String> {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `net.ipv4.conf.flannel/1.rp_filter` is `/proc/sys/net/ipv4/conf/flannel.1/rp_filter`.
fn sysctl_path(name: &str) -> String {
    let swapped: String = name
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    format!("/proc/sys/{swapped}")
}

fn sysctls(s: &StateSnapshot) -> BTreeMap<String, String> {
    let mut names: Vec<String> = [
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        "net.ipv4.conf.all.rp_filter",
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ]
    .map(String::from)
    .to_vec();
    for dev in s.node.devices.iter().map(String::as_str).chain(["cni0"]) {
        names.push(format!("net.ipv4.conf.{}.rp_filter", dev.replace('.', "/")));
    }
    names
        .into_iter()
        .filter_map(|n| {
            let v = std::fs::read_to_string(sysctl_path(&n)).ok()?;
            Some((n, v.trim().to_string()))
        })
        .collect()
}

/// Links, addresses, and the routes, neighbours and FDB entries on flannel's devices.
pub async fn kernel(nl: &Netlink, s: &StateSnapshot, f: &mut Facts) -> anyhow::Result<()> {
    let links = nl.links().await?;
    let name_of: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    f.links = links
        .iter()
        .map(|l| LinkFact {
            name: l.name.clone(),
            mtu: l.mtu,
            mac: l.mac,
            master: std::fs::read_link(format!("/sys/class/net/{}/master", l.name))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        })
        .collect();
    let ours: Vec<(u32, &String)> = links
        .iter()
        .filter(|l| s.node.devices.contains(&l.name))
        .map(|l| (l.index, &l.name))
        .collect();
    let networks: Vec<IpNet> = ["Network", "IPv6Network"]
        .iter()
        .filter_map(|k| s.config.get(*k)?.as_str()?.parse().ok())
        .collect();
    for family in [Family::V4, Family::V6] {
        for (idx, a) in nl.addrs(None, family).await? {
            if let Some(n) = name_of.get(&idx) {
                f.addrs.entry(n.clone()).or_default().push(a);
            }
        }
        for r in nl.main_routes(family).await? {
            let Some(dev) = r.oif.and_then(|i| name_of.get(&i)) else {
                continue;
            };
            let on_flannel = s.node.devices.contains(dev);
            let peer_route = *dev == s.node.iface
                && r.gw.is_some()
                && networks.iter().any(|n| n.contains(&r.dst));
            // The kernel's own routes on our devices (for an address, link-local, multicast)
            // are not ours.
            const RTPROT_KERNEL: u8 = 2;
            let kernel_own = r.protocol == RTPROT_KERNEL
                || matches!(r.dst, IpNet::V6(d) if d.addr().segments()[0] & 0xffc0 == 0xfe80 || d.addr().is_multicast());
            if (on_flannel || peer_route) && r.unicast && !kernel_own {
                let e = KernelEntry::Route {
                    dst: r.dst,
                    gw: r.gw,
                    dev: dev.clone(),
                };
                f.routes.push((e, r.ours()));
            }
        }
        for (idx, dev) in &ours {
            for (ip, mac) in nl.neighbours(*idx, family).await? {
                f.neighbours.push(KernelEntry::Neighbour {
                    ip,
                    mac,
                    dev: (*dev).clone(),
                });
            }
        }
    }
    for (idx, dev) in &ours {
        if s.node.backend != "vxlan" {
            continue;
        }
        for (mac, dst) in nl.fdb(*idx).await? {
            f.fdb.push(KernelEntry::Fdb {
                mac,
                dst,
                dev: (*dev).clone(),
            });
        }
    }
    Ok(())
}

/// The rules flanneld installs for this state, checked against the kernel.
fn firewall_missing(s: &StateSnapshot) -> Result<Vec<(String, String)>, String> {
    let pairs = [("Network", s.own.subnet), ("IPv6Network", s.own.subnet6)];
    let families = pairs
        .iter()
        .filter_map(|(k, pod)| {
            let cluster: IpNet = s.config.get(*k)?.as_str()?.parse().ok()?;
            Some(FamilyNets {
                cluster,
                pod: (*pod)?,
            })
        })
        .collect();
    let cfg = FirewallConfig {
        families,
        ip_masq: s.node.ip_masq,
        forward: s.node.forward_rules,
        fully_random_disable: s.node.fully_random_disable,
    };
    firewall::manager(&cfg, s.node.firewall == "nftables")
        .missing()
        .map_err(|e| e.to_string())
}

/// Rules of nft chains hooked on input, with the handle to delete each by.
pub fn nft_input_rules(lines: &[String]) -> Vec<InputRule> {
    let mut out = Vec::new();
    let (mut table, mut chain, mut input) = (String::new(), String::new(), false);
    for l in lines {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            table = rest.split('{').next().unwrap_or("").trim().to_string();
        } else if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split('{').next().unwrap_or("").trim().to_string();
            input = false;
        } else if t.starts_with("type ") && t.contains("hook input") {
            input = true;
        } else if input {
            if let Some((rule, handle)) = t.rsplit_once("# handle ") {
                out.push(InputRule {
                    tool: "nft",
                    line: rule.trim().to_string() + " ",
                    nft_handle: Some(format!("{table} {chain} handle {}", handle.trim())),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_paths_with_dotted_devices() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.flannel/1.rp_filter"),
            "/proc/sys/net/ipv4/conf/flannel.1/rp_filter"
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }

    #[test]
    fn nft_input_rules_carry_their_handle() {
        let ruleset = "table inet filter { # handle 3\n\tchain input { # handle 1\n\t\ttype filter hook input priority filter; policy accept;\n\t\tudp dport 8472 drop # handle 4\n\t}\n\tchain output { # handle 2\n\t\ttype filter hook output priority filter; policy accept;\n\t\tudp dport 53 drop # handle 5\n\t}\n}\n";
        let lines: Vec<String> = ruleset.lines().map(String::from).collect();
        let r = nft_input_rules(&lines);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            r[0].nft_handle.as_deref(),
            Some("inet filter input handle 4")
        );
        assert!(r[0].line.starts_with("udp dport 8472 drop"));
    }
}
