//! The doctor's checks: each judges the gathered [`Facts`] and nothing else.

use super::Verdict;
use flannel_core::state::{KernelEntry, StateSnapshot};
use flannel_core::subnet_env::SubnetEnv;
use flannel_core::MacAddr;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A link as sysfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFact {
    pub name: String,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// The bridge it is a port of (`cni0` for pods' veths).
    pub master: Option<String>,
}

/// An INPUT rule of a firewall (iptables, ip6tables or nft), as that tool prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRule {
    /// "iptables", "ip6tables" or "nft".
    pub tool: &'static str,
    pub line: String,
    /// For nft: "family table chain handle", to delete it by.
    pub nft_handle: Option<String>,
}

/// What the doctor read on this node.
#[derive(Debug, Clone)]
pub struct Facts {
    /// flanneld's snapshot (from its socket or a saved file), or why there is none.
    pub state: Option<StateSnapshot>,
    /// Whether flanneld answered on its socket, and ready; or what went wrong.
    pub flanneld: Result<(), String>,
    /// flanneld runs but was too busy to answer (then `flanneld` holds what it said).
    pub busy: bool,
    /// flanneld does not answer: `state` was read off the node (subnet.env, devices,
    /// firewall), and the checks that need flanneld's own view are skipped.
    pub from_node: bool,
    /// How to start flanneld again here (see `runs_as`).
    pub restart: String,
    /// The socket the doctor asked.
    pub socket: String,
    /// sysctl name (`net.ipv4.ip_forward`) → value; missing when the file does not exist.
    pub sysctl: BTreeMap<String, String>,
    pub links: Vec<LinkFact>,
    /// The device's addresses, by device name.
    pub addrs: BTreeMap<String, Vec<IpNet>>,
    /// Routes (main table) whose device is one of flannel's or the external interface, with a
    /// gateway or on a flannel device; `ours` when tagged with flannel's route protocol.
    pub routes: Vec<(KernelEntry, bool)>,
    /// Permanent neighbour and FDB entries on flannel's devices.
    pub neighbours: Vec<KernelEntry>,
    pub fdb: Vec<KernelEntry>,
    pub subnet_env: Result<String, String>,
    /// Our firewall rules missing now, each with its fix (or why they could not be read).
    pub firewall_missing: Result<Vec<(String, String)>, String>,
    /// `(tool, policy)` of the FORWARD chain.
    pub forward_policy: Vec<(&'static str, String)>,
    pub input_rules: Vec<InputRule>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            state: None,
            flanneld: Ok(()),
            busy: false,
            from_node: false,
            restart: String::new(),
            socket: String::new(),
            sysctl: BTreeMap::new(),
            links: Vec::new(),
            addrs: BTreeMap::new(),
            routes: Vec::new(),
            neighbours: Vec::new(),
            fdb: Vec::new(),
            subnet_env: Err("not read".into()),
            firewall_missing: Ok(Vec::new()),
            forward_policy: Vec::new(),
            input_rules: Vec::new(),
        }
    }
}

const FLANNELD_WHY: &str = "without flanneld nothing follows lease changes: new nodes get no routes, deleted state is not put back, and the node's own lease expires after 24 h";

/// Every check, in the order of the tutorial's walk.
pub fn all(f: &Facts) -> Vec<Verdict> {
    let mut v = vec![flanneld(f)];
    let Some(s) = &f.state else {
        v.push(datastore(f));
        return v;
    };
    if f.from_node {
        // The node's own facts are judged; flanneld's view of the cluster is not there.
        v.extend([
            Verdict::skipped("datastore", "what its lease watch reports"),
            ip_forward(f, s),
            rp_filter(f, s),
            br_netfilter(f, s),
            mtu(f, s),
            Verdict::skipped("device", "the MAC and address our lease publishes"),
            Verdict::skipped("peers", "the entries the leases ask for"),
            Verdict::skipped("public_ip", "the leases"),
            Verdict::skipped("subnet_env", "our lease, to compare subnet.env with"),
            firewall(f, s),
            input_port(f, s),
        ]);
        return v;
    }
    v.push(datastore(f));
    v.extend([
        ip_forward(f, s),
        rp_filter(f, s),
        br_netfilter(f, s),
        mtu(f, s),
        device(f, s),
        peers(f, s),
        duplicate_public_ip(s),
        subnet_env(f, s),
        firewall(f, s),
        input_port(f, s),
    ]);
    v
}

pub fn flanneld(f: &Facts) -> Verdict {
    match (&f.flanneld, &f.state) {
        (Ok(()), Some(_)) => Verdict::pass("flanneld"),
        (Err(e), _) if f.busy => Verdict::fail(
            "flanneld",
            vec![format!("flanneld is busy: {e}")],
            "the doctor needs flanneld's state to judge the node; flanneld itself runs (a restart would not help)",
            Some("flannelctl doctor   # again in a few seconds".into()),
        ),
        (Err(e), _) => Verdict::fail(
            "flanneld",
            vec![format!("flanneld does not answer on {}: {e}", f.socket)],
            FLANNELD_WHY,
            Some(if f.restart.is_empty() {
                "start flanneld again the way it was started (its log says why it stopped)".into()
            } else {
                f.restart.clone()
            }),
        ),
        (Ok(()), None) => Verdict::fail(
            "flanneld",
            vec!["flanneld has no state to show yet".into()],
            FLANNELD_WHY,
            None,
        ),
    }
}

pub fn datastore(f: &Facts) -> Verdict {
    let Some(s) = &f.state else {
        return Verdict::pass("datastore");
    };
    let Some(p) = &s.datastore_problem else {
        return Verdict::pass("datastore");
    };
    let store = &s.node.datastore;
    let (why, fix) = match store.split_once(' ') {
        Some(("kubernetes", server)) => (
            "node changes do not reach this node: a new node gets no route, a deleted one keeps its routes, and our own annotations are not put back if someone changes them".to_string(),
            format!("kubectl --server={server} get --raw /readyz   # is the API server up and reachable from this node?"),
        ),
        Some(("etcd", endpoints)) => (
            "leases of new or moved nodes do not arrive, and this node cannot renew its own lease: when it expires (24 h after the last renewal), another node may take this subnet".to_string(),
            format!("ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint health   # is etcd up and reachable from this node?"),
        ),
        _ => (
            "lease changes do not reach this node".to_string(),
            "check that the datastore flanneld uses is up and reachable from this node".to_string(),
        ),
    };
    Verdict::fail(
        "datastore",
        vec![format!("flanneld cannot read its datastore ({store}): {p}")],
        &why,
        Some(fix),
    )
}

fn sysctl<'a>(f: &'a Facts, name: &str) -> Option<&'a str> {
    f.sysctl.get(name).map(|s| s.trim())
}

fn v4(s: &StateSnapshot) -> bool {
    s.own.subnet.is_some()
}

fn v6(s: &StateSnapshot) -> bool {
    s.own.subnet6.is_some()
}

pub fn ip_forward(f: &Facts, s: &StateSnapshot) -> Verdict {
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for (on, name) in [
        (v4(s), "net.ipv4.ip_forward"),
        (v6(s), "net.ipv6.conf.all.forwarding"),
    ] {
        if on && sysctl(f, name) != Some("1") {
            problems.push(format!(
                "{name} is {}",
                sysctl(f, name).unwrap_or("missing")
            ));
            fix.push(format!("sysctl -w {name}=1"));
        }
    }
    Verdict::judged(
        "ip_forward",
        problems,
        "the node does not route packets between cni0 and the flannel device: pods reach nothing off their node",
        fix,
    )
}

/// sysctl's name for a device's knob (`flannel.1` is written `flannel/1`).
fn dev_key(dev: &str) -> String {
    dev.replace('.', "/")
}

pub fn rp_filter(f: &Facts, s: &StateSnapshot) -> Verdict {
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    if v4(s) {
        let all = sysctl(f, "net.ipv4.conf.all.rp_filter")
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0);
        let devs = s
            .node
            .devices
            .iter()
            .cloned()
            .chain(std::iter::once("cni0".to_string()));
        for dev in devs {
            let name = format!("net.ipv4.conf.{}.rp_filter", dev_key(&dev));
            let Some(own) = sysctl(f, &name).and_then(|v| v.parse::<u8>().ok()) else {
                continue;
            };
            if all.max(own) == 1 {
                problems.push(format!(
                    "strict reverse path filtering on {dev} (max of all={all} and {dev}={own} is 1)"
                ));
                if all == 1 {
                    fix.push("sysctl -w net.ipv4.conf.all.rp_filter=2".to_string());
                }
                if own == 1 {
                    fix.push(format!("sysctl -w {name}=2"));
                }
            }
        }
    }
    fix.dedup();
    Verdict::judged(
        "rp_filter",
        problems,
        "a packet whose source is routed out another interface is dropped silently (asymmetric paths: several NICs, host-gw, DirectRouting); loose mode (2) keeps the anti-spoofing check",
        fix,
    )
}

pub fn br_netfilter(f: &Facts, s: &StateSnapshot) -> Verdict {
    // iptables mode needs it for Services between pods of a node; network policy (either
    // firewall mode) for policy between pods of a node.
    if s.node.firewall != "iptables" && !s.node.network_policy {
        return Verdict::pass("br_netfilter");
    }
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for (on, name) in [
        (v4(s), "net.bridge.bridge-nf-call-iptables"),
        (v6(s), "net.bridge.bridge-nf-call-ip6tables"),
    ] {
        match sysctl(f, name) {
            _ if !on => {}
            Some("1") => {}
            Some(v) => {
                problems.push(format!("{name} is {v}"));
                fix.push(format!("sysctl -w {name}=1"));
            }
            None => {
                problems.push(format!(
                    "{name} does not exist (br_netfilter is not loaded)"
                ));
                fix.push(format!("modprobe br_netfilter && sysctl -w {name}=1"));
            }
        }
    }
    let why = if s.node.network_policy {
        "traffic between pods on the same cni0 bridge skips the IP hooks: network policy does not apply between pods of this node (and Service addresses do not work from a pod to a pod on its own node)"
    } else {
        "traffic between pods on the same cni0 bridge skips iptables: Service addresses (kube-proxy's DNAT) do not work from a pod to a pod on its own node"
    };
    Verdict::judged("br_netfilter", problems, why, fix)
}

fn link<'a>(f: &'a Facts, name: &str) -> Option<&'a LinkFact> {
    f.links.iter().find(|l| l.name == name)
}

/// What each flannel device's MTU must be, from the external interface's.
fn device_mtu(backend: &str, dev: &str, ext: u32) -> Option<u32> {
    match backend {
        "vxlan" if dev.starts_with("flannel-v6") => Some(ext.saturating_sub(70)),
        "vxlan" => Some(ext.saturating_sub(50)),
        "udp" => Some(ext.saturating_sub(28)),
        "wireguard" => Some(ext.saturating_sub(80)),
        _ => None,
    }
}

pub fn mtu(f: &Facts, s: &StateSnapshot) -> Verdict {
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    let ext = link(f, &s.node.iface).map_or(s.node.iface_mtu, |l| l.mtu);
    // The external interface unknown (flanneld down, no default route): what subnet.env
    // says the overlay carries.
    let mut limit = if ext > 0 { ext } else { s.node.mtu };
    for dev in s.node.devices.iter().filter(|_| ext > 0) {
        let (Some(l), Some(want)) = (link(f, dev), device_mtu(&s.node.backend, dev, ext)) else {
            continue;
        };
        limit = limit.min(want);
        if l.mtu != want {
            problems.push(format!(
                "{dev} has MTU {}, not {want} ({} {} minus the {} encapsulation)",
                l.mtu, s.node.iface, ext, s.node.backend
            ));
            fix.push(format!("ip link set dev {dev} mtu {want}"));
        }
    }
    // cni0 and the pods' veths must not send more than the flannel device carries.
    for l in f
        .links
        .iter()
        .filter(|l| l.name == "cni0" || l.master.as_deref() == Some("cni0"))
    {
        if l.mtu > limit {
            problems.push(format!(
                "{} has MTU {}, above the {limit} the overlay carries",
                l.name, l.mtu
            ));
            fix.push(format!("ip link set dev {} mtu {limit}", l.name));
        }
    }
    Verdict::judged(
        "mtu",
        problems,
        "full-size packets do not fit the encapsulation: pings work, but TCP transfers (HTTP, image pulls, anything large) hang",
        fix,
    )
}

pub fn device(f: &Facts, s: &StateSnapshot) -> Verdict {
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for dev in &s.node.devices {
        let v6dev = dev.starts_with("flannel-v6") || dev == "flannel-wg-v6";
        let Some(l) = link(f, dev) else {
            problems.push(format!("{dev} does not exist"));
            fix.push("kubectl -n kube-flannel rollout restart daemonset/kube-flannel-ds   # flanneld recreates it (or: systemctl restart flanneld)".to_string());
            continue;
        };
        if s.node.backend == "vxlan" {
            if let (Some(want), have) = (s.own.vtep_mac(v6dev), l.mac) {
                if have != Some(want) {
                    problems.push(format!(
                        "{dev} has MAC {}, but our lease publishes VtepMAC {want}",
                        have.map_or("none".into(), |m| m.to_string())
                    ));
                    fix.push(format!("ip link set dev {dev} address {want}"));
                }
            }
        }
        let subnet = if v6dev { s.own.subnet6 } else { s.own.subnet };
        if let Some(sn) = subnet {
            let want = IpNet::new(sn.network(), sn.max_prefix_len()).unwrap_or(sn);
            let have = f.addrs.get(dev).cloned().unwrap_or_default();
            if !have.contains(&want) {
                problems.push(format!("{dev} lacks its address {want}"));
                fix.push(format!("ip addr add {want} dev {dev}"));
            }
        }
    }
    Verdict::judged(
        "device",
        problems,
        "peers send this node's pod traffic to the MAC and address our lease publishes: a device that differs drops it",
        fix,
    )
}

/// The `ip`/`bridge` command that writes or removes an entry.
fn entry_cmd(e: &KernelEntry, add: bool) -> String {
    match (e, add) {
        (
            KernelEntry::Route {
                dst,
                gw: Some(gw),
                dev,
            },
            true,
        ) => {
            let onlink = if dev.starts_with("flannel") {
                " onlink"
            } else {
                ""
            };
            format!("ip route replace {dst} via {gw} dev {dev}{onlink}")
        }
        (KernelEntry::Route { dst, gw: None, dev }, true) => {
            format!("ip route replace {dst} dev {dev}")
        }
        (KernelEntry::Route { dst, dev, .. }, false) => format!("ip route del {dst} dev {dev}"),
        (KernelEntry::Neighbour { ip, mac, dev }, true) => {
            format!("ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent")
        }
        (KernelEntry::Neighbour { ip, dev, .. }, false) => format!("ip neigh del {ip} dev {dev}"),
        (KernelEntry::Fdb { mac, dst, dev }, true) => {
            format!("bridge fdb replace {mac} dev {dev} dst {dst} self permanent")
        }
        (KernelEntry::Fdb { mac, dst, dev }, false) => {
            format!("bridge fdb del {mac} dev {dev} dst {dst} self")
        }
    }
}

fn describe(e: &KernelEntry) -> String {
    match e {
        KernelEntry::Route { dst, gw, dev } => match gw {
            Some(g) => format!("route {dst} via {g} dev {dev}"),
            None => format!("route {dst} dev {dev}"),
        },
        KernelEntry::Neighbour { ip, mac, dev } => format!("neighbour {ip} lladdr {mac} dev {dev}"),
        KernelEntry::Fdb { mac, dst, dev } => format!("fdb {mac} dst {dst} dev {dev}"),
    }
}

pub fn peers(f: &Facts, s: &StateSnapshot) -> Verdict {
    let want: BTreeSet<&KernelEntry> = s.expected.iter().collect();
    let have_routes: BTreeSet<&KernelEntry> = f.routes.iter().map(|(e, _)| e).collect();
    let have: BTreeSet<&KernelEntry> = have_routes
        .iter()
        .copied()
        .chain(&f.neighbours)
        .chain(&f.fdb)
        .collect();
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for e in want.iter().filter(|e| !have.contains(*e)) {
        // A route there, but another: say what it is.
        let other = match e {
            KernelEntry::Route { dst, .. } => f.routes.iter().find_map(|(r, _)| match r {
                KernelEntry::Route { dst: d, .. } if d == dst => Some(describe(r)),
                _ => None,
            }),
            _ => None,
        };
        problems.push(match other {
            Some(o) => format!("{} is missing ({o} instead)", describe(e)),
            None => format!("{} is missing", describe(e)),
        });
        fix.push(entry_cmd(e, true));
    }
    // Stale: entries on flannel's devices (and our tagged routes) that no lease asks for.
    let flannel_dev = |d: &str| s.node.devices.iter().any(|x| x == d);
    let stale = f
        .routes
        .iter()
        .filter(|(e, ours)| match e {
            KernelEntry::Route { dev, .. } => *ours || flannel_dev(dev),
            _ => false,
        })
        .map(|(e, _)| e)
        .chain(&f.neighbours)
        .chain(&f.fdb)
        .filter(|e| !want.contains(e));
    for e in stale {
        problems.push(format!("{} is stale (no lease asks for it)", describe(e)));
        fix.push(entry_cmd(e, false));
    }
    for c in &s.conflicts {
        problems.push(format!(
            "lease {} claims {}, which overlaps {} of lease {} (there first): left out",
            c.key, c.subnet, c.holder_subnet, c.holder
        ));
        fix.push(remove_lease_cmd(&c.key));
    }
    Verdict::judged(
        "peers",
        problems,
        "each peer needs its route (and for vxlan its neighbour and FDB entry) or pods cannot reach that node's pods; a stale entry sends packets to a node that no longer holds the subnet; two leases claiming one subnet mean one node's pods are unreachable (flannel keeps the first holder's routes)",
        fix,
    )
}

/// How to remove a lease named as the state names it: an etcd key, or `node NAME`. The
/// command is for the newcomer, the one left out (the first holder's pods are reachable).
fn remove_lease_cmd(key: &str) -> String {
    match key.strip_prefix("node ") {
        Some(node) => format!("kubectl delete node {node}"),
        None => format!("etcdctl del {key}"),
    }
}

pub fn duplicate_public_ip(s: &StateSnapshot) -> Verdict {
    let mut by: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for l in &s.leases {
        for ip in [l.public_ip, l.public_ipv6].into_iter().flatten() {
            by.entry(ip).or_default().push(&l.key);
        }
    }
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for (ip, keys) in by.iter().filter(|(_, k)| k.len() > 1) {
        problems.push(format!(
            "{} leases publish the public IP {ip}: {}",
            keys.len(),
            keys.join(", ")
        ));
        let others: Vec<&&str> = keys.iter().filter(|k| **k != s.own.key).collect();
        for k in others {
            if k.starts_with('/') {
                fix.push(format!("etcdctl del {k}"));
            }
        }
    }
    Verdict::judged(
        "public_ip",
        problems,
        "every node must publish its own address: with two leases on one IP (the multi-NIC Vagrant trap: every VM's eth0 is 10.0.2.15) traffic for one node's pods goes to the other; start flanneld with --iface or --public-ip naming the right interface, then remove the wrong lease",
        fix,
    )
}

fn config_net(s: &StateSnapshot, key: &str) -> Option<IpNet> {
    s.config.get(key)?.as_str()?.parse().ok()
}

pub fn subnet_env(f: &Facts, s: &StateSnapshot) -> Verdict {
    let v4 = match (config_net(s, "Network"), s.own.subnet) {
        (Some(IpNet::V4(n)), Some(IpNet::V4(sub))) => Some((n, sub)),
        _ => None,
    };
    let v6 = match (config_net(s, "IPv6Network"), s.own.subnet6) {
        (Some(IpNet::V6(n)), Some(IpNet::V6(sub))) => Some((n, sub)),
        _ => None,
    };
    let want = SubnetEnv {
        v4,
        v6,
        mtu: s.node.mtu,
        ipmasq: s.node.ip_masq,
    }
    .render();
    let path = &s.node.subnet_file;
    let problems = match &f.subnet_env {
        Err(e) => vec![format!("{path} cannot be read: {e}")],
        Ok(have) => {
            let parse = |t: &str| -> BTreeMap<String, String> {
                flannel_core::subnet_env::parse_env_lines(t)
                    .into_iter()
                    .collect()
            };
            let (h, w) = (parse(have), parse(&want));
            w.iter()
                .filter(|(k, v)| h.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{path}: {k} is {}, our lease says {v}",
                        h.get(k).map_or("missing", |s| s.as_str())
                    )
                })
                .collect()
        }
    };
    Verdict::fail(
        "subnet_env",
        problems,
        "the CNI plugin gives pods addresses and MTU from subnet.env: addresses outside our lease are unreachable from other nodes, a wrong MTU breaks large transfers",
        Some(format!("cat > {path} <<'EOF'\n{want}EOF")),
    )
}

pub fn firewall(f: &Facts, s: &StateSnapshot) -> Verdict {
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    match &f.firewall_missing {
        Err(e) => problems.push(format!("reading the {} rules failed: {e}", s.node.firewall)),
        Ok(m) => {
            for (what, how) in m {
                problems.push(what.clone());
                fix.push(how.clone());
            }
        }
    }
    if !s.node.forward_rules {
        for (tool, policy) in &f.forward_policy {
            if policy != "ACCEPT" {
                problems.push(format!(
                    "{tool} FORWARD policy is {policy} and flanneld adds no accept rules (--iptables-forward-rules=false)"
                ));
                fix.push(format!("{tool} -P FORWARD ACCEPT"));
            }
        }
    }
    Verdict::judged(
        "firewall",
        problems,
        "without the accept rules a FORWARD policy of DROP (Docker sets one) drops pod traffic between nodes; without the masquerade rules pods cannot reach anything outside the cluster",
        fix,
    )
}

/// The UDP port the backend receives on.
pub fn backend_port(s: &StateSnapshot) -> Option<u16> {
    let cfg = s.config.get("Backend");
    let port = |k: &str| {
        cfg.and_then(|b| b.as_object())
            .and_then(|o| o.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)))
            .and_then(|(_, v)| v.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
    };
    match s.node.backend.as_str() {
        "vxlan" => Some(port("Port").unwrap_or(8472)),
        "udp" => Some(port("Port").unwrap_or(8285)),
        "wireguard" => Some(port("ListenPort").unwrap_or(51820)),
        _ => None,
    }
}

pub fn input_port(f: &Facts, s: &StateSnapshot) -> Verdict {
    let Some(port) = backend_port(s) else {
        return Verdict::pass("input_port");
    };
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for r in &f.input_rules {
        let l = &r.line;
        let drops = match r.tool {
            "nft" => {
                l.contains(&format!("udp dport {port} "))
                    && (l.contains(" drop") || l.contains(" reject"))
            }
            _ => {
                l.contains("-p udp")
                    && l.contains(&format!("--dport {port}"))
                    && (l.contains("-j DROP") || l.contains("-j REJECT"))
            }
        };
        if !drops {
            continue;
        }
        problems.push(format!("{}: {} drops UDP port {port}", r.tool, l.trim()));
        match (&r.nft_handle, l.strip_prefix("-A ")) {
            (Some(h), _) => fix.push(format!("nft delete rule {h}")),
            (None, Some(rest)) => {
                let words: Vec<String> = flannel_net::iptables::shell_words(rest)
                    .iter()
                    .map(|w| flannel_net::firewall::shell_quote(w))
                    .collect();
                fix.push(format!("{} -D {}", r.tool, words.join(" ")));
            }
            _ => {}
        }
    }
    Verdict::judged(
        "input_port",
        problems,
        "the backend's encapsulated packets arrive on this UDP port: dropped there, no pod on another node reaches this node's pods (ping from here still works one way)",
        fix,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flannel_core::state::{LeaseView, NodeInfo};

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x51]);

    use flannel_testkit::{ip, net};

    /// A vxlan node 10.0.0.50 (10.244.1.0/24) with one peer 10.0.0.51 (10.244.2.0/24).
    pub(crate) fn state() -> StateSnapshot {
        let lease = |sub: &str, pip: &str, mac: &str| LeaseView {
            key: format!("/coreos.com/network/subnets/{}", sub.replace('/', "-")),
            subnet: Some(net(sub)),
            public_ip: Some(ip(pip)),
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac})),
            ..Default::default()
        };
        let own = lease("10.244.1.0/24", "10.0.0.50", "02:00:00:00:00:50");
        StateSnapshot {
            config: serde_json::json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}),
            node: NodeInfo {
                backend: "vxlan".into(),
                iface: "eth0".into(),
                iface_mtu: 1500,
                mtu: 1450,
                devices: vec!["flannel.1".into()],
                subnet_file: "/run/flannel/subnet.env".into(),
                firewall: "iptables".into(),
                ip_masq: true,
                forward_rules: true,
                ..Default::default()
            },
            leases: vec![
                own.clone(),
                lease("10.244.2.0/24", "10.0.0.51", "02:00:00:00:00:51"),
            ],
            own,
            expected: peer_entries(),
            ..Default::default()
        }
    }

    fn peer_entries() -> Vec<KernelEntry> {
        let dev = "flannel.1".to_string();
        vec![
            KernelEntry::Neighbour {
                ip: ip("10.244.2.0"),
                mac: MAC,
                dev: dev.clone(),
            },
            KernelEntry::Fdb {
                mac: MAC,
                dst: ip("10.0.0.51"),
                dev: dev.clone(),
            },
            KernelEntry::Route {
                dst: net("10.244.2.0/24"),
                gw: Some(ip("10.244.2.0")),
                dev,
            },
        ]
    }

    /// The kernel of a healthy node for [`state`].
    pub(crate) fn healthy() -> Facts {
        let s = state();
        let link = |name: &str, mtu, mac: Option<&str>, master: Option<&str>| LinkFact {
            name: name.into(),
            mtu,
            mac: mac.map(|m| m.parse().unwrap()),
            master: master.map(String::from),
        };
        let e = peer_entries();
        Facts {
            subnet_env: Ok("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n".into()),
            sysctl: [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "2"),
                ("net.ipv4.conf.flannel/1.rp_filter", "1"),
                ("net.bridge.bridge-nf-call-iptables", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            links: vec![
                link("eth0", 1500, None, None),
                link("flannel.1", 1450, Some("02:00:00:00:00:50"), None),
                link("cni0", 1450, None, None),
                link("veth1", 1450, None, Some("cni0")),
            ],
            addrs: [("flannel.1".to_string(), vec![net("10.244.1.0/32")])].into(),
            routes: vec![(e[2].clone(), true)],
            neighbours: vec![e[0].clone()],
            fdb: vec![e[1].clone()],
            state: Some(s),
            ..Facts::default()
        }
    }

    fn verdict(f: &Facts, name: &str) -> Verdict {
        all(f).into_iter().find(|v| v.check == name).unwrap()
    }

    #[test]
    fn a_healthy_node_passes_everything() {
        let v = all(&healthy());
        assert_eq!(v.len(), 12);
        assert!(v.iter().all(|c| c.ok), "{v:#?}");
    }

    #[test]
    fn br_netfilter_counts_in_either_firewall_mode_when_policy_is_on() {
        let mut f = healthy();
        f.sysctl
            .insert("net.bridge.bridge-nf-call-iptables".into(), "0".into());
        let mut s = f.state.clone().unwrap();
        s.node.firewall = "nftables".into();
        f.state = Some(s.clone());
        assert!(
            verdict(&f, "br_netfilter").ok,
            "nftables mode without policy: not needed"
        );
        s.node.network_policy = true;
        f.state = Some(s.clone());
        let v = verdict(&f, "br_netfilter");
        assert!(
            !v.ok
                && v.why
                    .contains("network policy does not apply between pods of this node"),
            "{v:#?}"
        );
        assert_eq!(
            v.fix.as_deref(),
            Some("sysctl -w net.bridge.bridge-nf-call-iptables=1")
        );
        s.node.firewall = "iptables".into();
        f.state = Some(s);
        assert!(!verdict(&f, "br_netfilter").ok, "iptables mode with policy");
    }

    #[test]
    fn rp_filter_counts_the_max_of_all_and_the_device() {
        let mut f = healthy();
        assert!(
            verdict(&f, "rp_filter").ok,
            "all=2 makes flannel.1's 1 loose"
        );
        f.sysctl
            .insert("net.ipv4.conf.all.rp_filter".into(), "0".into());
        let v = verdict(&f, "rp_filter");
        assert!(!v.ok);
        assert_eq!(
            v.fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.flannel/1.rp_filter=2")
        );
    }

    #[test]
    fn mtus_follow_the_backend_and_pods_may_not_exceed_the_overlay() {
        let mut f = healthy();
        f.links[3].mtu = 1500;
        let v = verdict(&f, "mtu");
        assert_eq!(
            v.problems,
            ["veth1 has MTU 1500, above the 1450 the overlay carries"]
        );
        let mut s = state();
        s.node.backend = "udp".into();
        s.node.devices = vec!["flannel0".into()];
        f.state = Some(s);
        f.links.push(LinkFact {
            name: "flannel0".into(),
            mtu: 1450,
            ..Default::default()
        });
        let v = verdict(&f, "mtu");
        assert!(
            v.problems[0].starts_with("flannel0 has MTU 1450, not 1472"),
            "{v:?}"
        );
    }

    #[test]
    fn peers_name_missing_and_stale_entries_with_their_commands() {
        let mut f = healthy();
        f.fdb.clear();
        f.neighbours.push(KernelEntry::Neighbour {
            ip: ip("10.244.9.0"),
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
            dev: "flannel.1".into(),
        });
        let v = verdict(&f, "peers");
        assert_eq!(
            v.fix.as_deref(),
            Some("bridge fdb replace 02:00:00:00:00:51 dev flannel.1 dst 10.0.0.51 self permanent && ip neigh del 10.244.9.0 dev flannel.1")
        );
        // A foreign route in the way is named.
        let mut f = healthy();
        f.routes = vec![(
            KernelEntry::Route {
                dst: net("10.244.2.0/24"),
                gw: Some(ip("192.168.1.1")),
                dev: "eth0".into(),
            },
            false,
        )];
        let v = verdict(&f, "peers");
        assert!(
            v.problems[0].contains("(route 10.244.2.0/24 via 192.168.1.1 dev eth0 instead)"),
            "{v:?}"
        );
    }

    #[test]
    fn overlapping_leases_are_named_with_the_one_there_first() {
        let mut f = healthy();
        if let Some(s) = f.state.as_mut() {
            s.conflicts.push(flannel_core::state::ConflictView {
                key: "node dup".into(),
                subnet: net("10.244.1.0/24"),
                holder: "node node1".into(),
                holder_subnet: net("10.244.1.0/24"),
            });
        }
        let v = verdict(&f, "peers");
        assert!(!v.ok);
        assert_eq!(
            v.problems,
            vec!["lease node dup claims 10.244.1.0/24, which overlaps 10.244.1.0/24 of lease node node1 (there first): left out"]
        );
        assert_eq!(v.fix.as_deref(), Some("kubectl delete node dup"));
    }

    #[test]
    fn two_leases_on_one_public_ip_point_at_the_other_lease() {
        let mut f = healthy();
        let mut s = state();
        let mut twin = s.leases[1].clone();
        twin.key = "/coreos.com/network/subnets/10.244.3.0-24".into();
        twin.subnet = Some(net("10.244.3.0/24"));
        s.leases.push(twin);
        f.state = Some(s);
        let v = verdict(&f, "public_ip");
        assert!(
            v.problems[0].starts_with("2 leases publish the public IP 10.0.0.51"),
            "{v:?}"
        );
        assert_eq!(
            v.fix.as_deref(),
            Some("etcdctl del /coreos.com/network/subnets/10.244.2.0-24 && etcdctl del /coreos.com/network/subnets/10.244.3.0-24")
        );
    }

    #[test]
    fn subnet_env_differences_are_named_by_key() {
        let mut f = healthy();
        f.subnet_env = Ok(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n"
                .into(),
        );
        let v = verdict(&f, "subnet_env");
        assert_eq!(v.problems.len(), 2, "{v:?}");
        assert!(v.problems[0].contains("FLANNEL_IPMASQ is missing"));
        assert!(
            v.problems[1].contains("FLANNEL_SUBNET is 10.244.7.1/24, our lease says 10.244.1.1/24")
        );
    }

    #[test]
    fn input_rules_drop_only_the_backends_port() {
        let mut f = healthy();
        let rule = |tool, line: &str, h: Option<&str>| InputRule {
            tool,
            line: line.into(),
            nft_handle: h.map(String::from),
        };
        f.input_rules = vec![
            rule(
                "iptables",
                "-A INPUT -p udp -m udp --dport 53 -j DROP",
                None,
            ),
            rule(
                "iptables",
                "-A INPUT -p udp -m udp --dport 8472 -m comment --comment \"no vxlan\" -j REJECT",
                None,
            ),
            rule(
                "nft",
                "udp dport 8472 counter drop ",
                Some("inet filter input handle 4"),
            ),
        ];
        let v = verdict(&f, "input_port");
        assert_eq!(v.problems.len(), 2, "{v:?}");
        assert_eq!(
            v.fix.as_deref(),
            Some("iptables -D INPUT -p udp -m udp --dport 8472 -m comment --comment 'no vxlan' -j REJECT && nft delete rule inet filter input handle 4")
        );
    }

    #[test]
    fn without_flanneld_only_its_check_is_judged() {
        let f = Facts {
            flanneld: Err("connection refused".into()),
            ..Facts::default()
        };
        let v = all(&f);
        assert_eq!(v.len(), 2);
        assert!(!v[0].ok && v[1].ok);
        assert!(v[0]
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("start flanneld again"));
    }

    /// With flanneld down the node's own facts are still judged (from subnet.env, the
    /// devices, the firewall); what needs flanneld's view is marked skipped, saying how to
    /// judge it anyway; the fix for flanneld is the one for how it runs here.
    #[test]
    fn with_flanneld_down_the_node_is_judged_and_the_rest_skipped() {
        let mut f = healthy();
        f.flanneld = Err("connecting: No such file or directory".into());
        f.from_node = true;
        f.restart =
            "systemctl restart flanneld   # why it stopped: journalctl -u flanneld -n 50".into();
        f.sysctl.insert("net.ipv4.ip_forward".into(), "0".into());
        let v = all(&f);
        let skipped: Vec<&str> = v.iter().filter(|c| c.skipped).map(|c| c.check).collect();
        assert_eq!(
            skipped,
            ["datastore", "device", "peers", "public_ip", "subnet_env"]
        );
        let failed: Vec<&str> = v.iter().filter(|c| !c.ok).map(|c| c.check).collect();
        assert_eq!(failed, ["flanneld", "ip_forward"]);
        assert_eq!(v[0].fix.as_deref(), Some(f.restart.as_str()));
        let text = super::super::render(&v);
        assert!(text.contains("[skip] peers"), "{text}");
        assert!(text.ends_with("12 checks, 2 failed, 5 skipped\n"), "{text}");
    }

    /// The datastore check names the datastore flanneld really uses, with a fix for that
    /// kind: the API server's URL in kube mode (not net-conf.json, no lease expiry), the
    /// endpoints in etcd mode.
    #[test]
    fn the_datastore_check_names_the_datastore_of_its_mode() {
        let mut f = healthy();
        let s = f.state.as_mut().unwrap();
        s.datastore_problem = Some("the node watch failed: connection refused".into());
        s.node.datastore = "kubernetes https://10.0.0.50:6443".into();
        let v = verdict(&f, "datastore");
        assert!(!v.ok);
        assert_eq!(
            v.problems,
            vec!["flanneld cannot read its datastore (kubernetes https://10.0.0.50:6443): the node watch failed: connection refused"]
        );
        assert!(!v.why.contains("expire"), "{}", v.why);
        assert!(v
            .fix
            .as_deref()
            .unwrap()
            .starts_with("kubectl --server=https://10.0.0.50:6443 get --raw /readyz"));
        let s = f.state.as_mut().unwrap();
        s.node.datastore = "etcd http://127.0.0.1:4001,http://127.0.0.1:2379".into();
        let v = verdict(&f, "datastore");
        assert!(v.why.contains("expires"), "{}", v.why);
        assert!(v.fix.as_deref().unwrap().starts_with(
            "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:4001,http://127.0.0.1:2379 endpoint health"
        ));
        assert!(!v.fix.as_deref().unwrap().contains("kubectl"));
    }

    /// A flanneld that runs but could not answer in time is called busy, not stopped or hung,
    /// and no restart is suggested.
    #[test]
    fn a_busy_flanneld_is_not_told_to_restart() {
        let f = Facts {
            flanneld: Err("flanneld (pid 42) runs but did not answer /state within 5 s".into()),
            busy: true,
            ..Facts::default()
        };
        let v = flanneld(&f);
        assert!(!v.ok);
        assert!(v.problems[0].starts_with("flanneld is busy:"), "{v:?}");
        assert!(!v.fix.as_deref().unwrap_or("").contains("restart"), "{v:?}");
    }
}
