//! `flannelctl trace <src> <dst>`: the path of a packet from `src` to `dst` as this node's
//! kernel would send it now, step by step as the tutorial walks it: the route chosen, the
//! device, the neighbour entry, the FDB entry and the underlay address it points to, the
//! underlay route, the encapsulation, masquerade. A broken step is flagged with its cause.

use crate::doctor::checks::Facts;
use flannel_core::state::{KernelEntry, LeaseView, StateSnapshot};
#[cfg(test)]
use flannel_core::MacAddr;
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// One step of the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Where the packet is (`pod eth0 → cni0`, `route`, `flannel.1`, `neighbour`, ...).
    pub hop: String,
    pub detail: String,
    pub ok: bool,
    /// Why this step breaks the packet's way, when it does.
    pub cause: Option<String>,
}

fn step(hop: &str, detail: String) -> Step {
    Step {
        hop: hop.into(),
        detail,
        ok: true,
        cause: None,
    }
}

fn broken(hop: &str, detail: String, cause: String) -> Step {
    Step {
        hop: hop.into(),
        detail,
        ok: false,
        cause: Some(cause),
    }
}

/// What the kernel answered for one lookup (`ip route get`): device and gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteAnswer {
    pub dev: Option<String>,
    pub gw: Option<IpAddr>,
    pub src: Option<IpAddr>,
}

/// Everything the walk reads: flanneld's state, the kernel entries (as the doctor reads
/// them), and the kernel's route answers for the destination and for the peer's underlay
/// address.
pub struct TraceFacts<'a> {
    pub state: &'a StateSnapshot,
    pub kernel: &'a Facts,
    pub to_dst: RouteAnswer,
    pub to_underlay: Option<RouteAnswer>,
    /// The external interface's MTU.
    pub ext_mtu: u32,
}

/// The lease whose subnet holds `ip`.
pub fn lease_of(s: &StateSnapshot, ip: IpAddr) -> Option<&LeaseView> {
    s.leases.iter().find(|l| {
        [l.subnet, l.subnet6]
            .into_iter()
            .flatten()
            .any(|n| n.contains(&ip))
    })
}

fn own_subnet_holds(s: &StateSnapshot, ip: IpAddr) -> bool {
    [s.own.subnet, s.own.subnet6]
        .into_iter()
        .flatten()
        .any(|n| n.contains(&ip))
}

fn cluster_holds(s: &StateSnapshot, ip: IpAddr) -> bool {
    ["Network", "IPv6Network"].iter().any(|k| {
        s.config
            .get(*k)
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<IpNet>().ok())
            .is_some_and(|n| n.contains(&ip))
    })
}

/// The longest-prefix route in the facts for `dst` on `dev`.
fn route_entry<'a>(f: &'a Facts, dst: IpAddr, dev: &str) -> Option<&'a KernelEntry> {
    f.routes
        .iter()
        .map(|(e, _)| e)
        .filter(|e| matches!(e, KernelEntry::Route { dst: d, dev: v, .. } if d.contains(&dst) && v == dev))
        .max_by_key(|e| match e {
            KernelEntry::Route { dst, .. } => dst.prefix_len(),
            _ => 0,
        })
}

/// The walk from `src` to `dst`.
pub fn walk(t: &TraceFacts, src: IpAddr, dst: IpAddr) -> Vec<Step> {
    let s = t.state;
    let mut steps = Vec::new();
    if own_subnet_holds(s, src) {
        steps.push(step(
            "pod eth0 → cni0",
            format!("{src} is a pod of this node: it sends to its default gateway on cni0 through its veth"),
        ));
    } else {
        steps.push(step(
            "source",
            format!(
                "{src} is not a pod of this node: the walk starts at this node's routing table"
            ),
        ));
    }
    let Some(dev) = t.to_dst.dev.clone() else {
        steps.push(broken(
            "route",
            format!("no route to {dst}"),
            "the kernel has no route for it: the packet is dropped with 'network unreachable'"
                .into(),
        ));
        return steps;
    };
    let via = t.to_dst.gw.map(|g| format!(" via {g}")).unwrap_or_default();
    let shown = route_entry(t.kernel, dst, &dev)
        .map(|e| match e {
            KernelEntry::Route { dst, .. } => format!("{dst}{via} dev {dev}"),
            _ => String::new(),
        })
        .unwrap_or_else(|| format!("{dst}{via} dev {dev}"));
    if dev == "cni0" {
        steps.push(step("route", format!("{shown}: a pod on this node")));
        steps.push(step(
            "cni0 → pod eth0",
            format!("the bridge delivers to {dst}'s veth; no encapsulation"),
        ));
        return steps;
    }
    let peer = lease_of(s, dst);
    let flannel_dev = s.node.devices.contains(&dev);
    if cluster_holds(s, dst) && peer.is_none() {
        steps.push(broken(
            "route",
            format!("{shown} (no lease holds {dst})"),
            "the destination is in the cluster network but no node holds its subnet: nobody answers there".into(),
        ));
        return steps;
    }
    steps.push(step("route", shown));
    let masq = own_subnet_holds(s, src) && !cluster_holds(s, dst) && s.node.ip_masq;
    if let Some(p) = peer {
        let v6 = dst.is_ipv6();
        let public = if v6 { p.public_ipv6 } else { p.public_ip };
        match (s.node.backend.as_str(), flannel_dev) {
            ("vxlan", true) => vxlan_steps(t, &dev, p, public, v6, &mut steps),
            ("udp", true) => {
                let port = crate::doctor::checks::backend_port(s).unwrap_or(8285);
                steps.push(step(
                    &dev,
                    format!("the TUN device: flanneld's udp workers read the packet and look up {dst}'s node: {}", show(public)),
                ));
                steps.push(step(
                    "encapsulation",
                    format!(
                        "UDP to {}:{port}, inner MTU {} (outer {} − 28)",
                        show(public),
                        s.node.mtu,
                        t.ext_mtu
                    ),
                ));
            }
            ("wireguard", true) => {
                let data = if v6 {
                    p.backend_v6_data.as_ref()
                } else {
                    p.backend_data.as_ref()
                }
                .or(p.backend_data.as_ref());
                let field = |k: &str| {
                    data.and_then(|d| d.as_object())
                        .and_then(|o| o.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)))
                        .map(|(_, v)| v.to_string().trim_matches('"').to_string())
                };
                let key =
                    field("PublicKey").unwrap_or_else(|| "(no PublicKey in its lease)".into());
                let port = field("Port").unwrap_or_else(|| "51820".into());
                steps.push(step(
                    &dev,
                    format!("the WireGuard device: flanneld's workers find the peer whose allowed IPs hold {dst}: public key {key}"),
                ));
                steps.push(step(
                    "encapsulation",
                    format!(
                        "sealed (ChaCha20-Poly1305, WireGuard data message) in UDP to {}:{port}, inner MTU {} (outer {} − 80); nothing of the pod packet is readable on the wire",
                        show(public),
                        s.node.mtu,
                        t.ext_mtu
                    ),
                ));
            }
            ("host-gw", _) if dev == s.node.iface => {
                if t.to_dst.gw != public {
                    steps.push(broken(
                        "gateway",
                        format!(
                            "via {} but the lease says {}",
                            show(t.to_dst.gw),
                            show(public)
                        ),
                        "packets go to a host that does not hold the subnet".into(),
                    ));
                } else {
                    steps.push(step(
                        &dev,
                        format!(
                            "sent unencapsulated to the peer {} on the same L2 segment",
                            show(public)
                        ),
                    ));
                }
            }
            _ if dev == s.node.iface && t.to_dst.gw == public => {
                steps.push(step(
                    &dev,
                    format!(
                        "DirectRouting: sent unencapsulated to the peer {} on the same L2 segment",
                        show(public)
                    ),
                ));
            }
            _ => steps.push(broken(
                "device",
                format!("{dst} leaves through {dev}, not through flannel's device"),
                format!(
                    "another route takes the packet: it does not reach the node holding {}",
                    p.subnet
                        .or(p.subnet6)
                        .map_or("the subnet".into(), |n| n.to_string())
                ),
            )),
        }
        // Past a broken step the packet goes no further.
        if steps.iter().any(|s| !s.ok) {
            return steps;
        }
        if let Some(u) = &t.to_underlay {
            match &u.dev {
                Some(d) => steps.push(step(
                    "underlay route",
                    format!(
                        "{} {}dev {d}{}",
                        show(public),
                        u.gw.map(|g| format!("via {g} ")).unwrap_or_default(),
                        u.src.map(|s| format!(" src {s}")).unwrap_or_default()
                    ),
                )),
                None => steps.push(broken(
                    "underlay route",
                    format!("no route to {}", show(public)),
                    "the encapsulated packet cannot leave this node".into(),
                )),
            }
        }
        steps.push(step(
            "peer",
            format!(
                "{} takes it in on its {}, {} and hands it to cni0 → the pod",
                show(public),
                s.node.iface,
                match s.node.backend.as_str() {
                    "vxlan" => "the kernel decapsulates it on its flannel device",
                    "udp" => "its flanneld decapsulates it into flannel0",
                    "wireguard" => "its WireGuard (kernel or flanneld) opens it, checks the source against our allowed IPs, into its flannel-wg device",
                    _ => "routes it",
                }
            ),
        ));
    }
    steps.push(step(
        "masquerade",
        if masq {
            format!(
                "yes: {dst} is outside the cluster network; the source becomes this node's address"
            )
        } else {
            "no: traffic inside the cluster network keeps the pod's source address".into()
        },
    ));
    steps
}

fn show(ip: Option<IpAddr>) -> String {
    ip.map_or("(none)".into(), |i| i.to_string())
}

fn vxlan_steps(
    t: &TraceFacts,
    dev: &str,
    p: &LeaseView,
    public: Option<IpAddr>,
    v6: bool,
    steps: &mut Vec<Step>,
) {
    let f = t.kernel;
    let Some(gw) = t.to_dst.gw else {
        steps.push(broken(dev, "a route without gateway on the vxlan device".into(), "the kernel has no neighbour to look up: flannel routes every peer via its subnet's first address".into()));
        return;
    };
    let mac = f.neighbours.iter().find_map(|e| match e {
        KernelEntry::Neighbour { ip, mac, dev: d } if *ip == gw && d == dev => Some(*mac),
        _ => None,
    });
    let Some(mac) = mac else {
        steps.push(broken(
            "neighbour",
            format!("no entry for {gw} on {dev}"),
            "the device does no ARP (flannel fills the table): the packet is dropped".into(),
        ));
        return;
    };
    let lease_mac = p.vtep_mac(v6);
    if lease_mac.is_some_and(|m| m != mac) {
        steps.push(broken(
            "neighbour",
            format!("{gw} lladdr {mac} dev {dev}"),
            format!(
                "the peer's lease publishes VtepMAC {}: frames go to a MAC nobody has",
                lease_mac.map_or(String::new(), |m| m.to_string())
            ),
        ));
        return;
    }
    steps.push(step(
        "neighbour",
        format!("{gw} lladdr {mac} dev {dev}: the peer's VTEP MAC"),
    ));
    let fdb = f.fdb.iter().find_map(|e| match e {
        KernelEntry::Fdb {
            mac: m,
            dst,
            dev: d,
        } if *m == mac && d == dev => Some(*dst),
        _ => None,
    });
    match fdb {
        None => {
            steps.push(broken(
                "fdb",
                format!("no entry for {mac} on {dev}"),
                "the device does not know which host has that MAC: the packet is dropped".into(),
            ));
            return;
        }
        Some(d) if Some(d) != public => {
            steps.push(broken(
                "fdb",
                format!("{mac} dst {d} dev {dev}"),
                format!(
                    "the lease says the peer is at {}: the packet goes to the wrong host",
                    show(public)
                ),
            ));
            return;
        }
        Some(d) => steps.push(step(
            "fdb",
            format!("{mac} dst {d} dev {dev}: the peer's public address"),
        )),
    }
    let vni = p
        .backend_data
        .as_ref()
        .and_then(|d| d.get("VNI"))
        .and_then(|v| v.as_u64())
        .unwrap_or(1);
    let port = crate::doctor::checks::backend_port(t.state).unwrap_or(8472);
    let overhead = if public.is_some_and(|p| p.is_ipv6()) {
        70
    } else {
        50
    };
    steps.push(step(
        "encapsulation",
        format!(
            "VXLAN VNI {vni}, UDP port {port}, outer {} → {}, outer MTU {} (inner {} + {overhead})",
            show(t.to_underlay.as_ref().and_then(|u| u.src)),
            show(public),
            t.ext_mtu,
            t.ext_mtu.saturating_sub(overhead)
        ),
    ));
}

/// The walk as text, with a small diagram of the path.
pub fn render(src: IpAddr, dst: IpAddr, steps: &[Step]) -> String {
    let mut out = format!("trace {src} → {dst}\n");
    for (i, s) in steps.iter().enumerate() {
        out.push_str(&format!(
            "{:>2}. {} {:<16} {}\n",
            i + 1,
            if s.ok { " " } else { "✗" },
            s.hop,
            s.detail
        ));
        if let Some(c) = &s.cause {
            out.push_str(&format!("        broken: {c}\n"));
        }
    }
    let path: Vec<&str> = steps
        .iter()
        .filter(|s| !matches!(s.hop.as_str(), "masquerade" | "source"))
        .map(|s| s.hop.as_str())
        .collect();
    out.push_str(&format!("path: {}\n", path.join(" ─▶ ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::tests::{healthy, state};

    fn to(dev: &str, gw: Option<&str>) -> RouteAnswer {
        RouteAnswer {
            dev: Some(dev.into()),
            gw: gw.map(|g| g.parse().unwrap()),
            src: None,
        }
    }

    fn walk_with(f: &Facts, dst_route: RouteAnswer, dst: &str) -> Vec<Step> {
        let s = state();
        let t = TraceFacts {
            state: &s,
            kernel: f,
            to_dst: dst_route,
            to_underlay: Some(to("eth0", None)),
            ext_mtu: 1500,
        };
        walk(&t, "10.244.1.2".parse().unwrap(), dst.parse().unwrap())
    }

    #[test]
    fn a_vxlan_peer_walks_through_neighbour_fdb_and_encapsulation() {
        let s = walk_with(
            &healthy(),
            to("flannel.1", Some("10.244.2.0")),
            "10.244.2.5",
        );
        assert!(s.iter().all(|x| x.ok), "{s:#?}");
        let hops: Vec<&str> = s.iter().map(|x| x.hop.as_str()).collect();
        assert_eq!(
            hops,
            [
                "pod eth0 → cni0",
                "route",
                "neighbour",
                "fdb",
                "encapsulation",
                "underlay route",
                "peer",
                "masquerade"
            ]
        );
    }

    #[test]
    fn a_stale_fdb_entry_is_the_broken_step_and_the_walk_stops_there() {
        let mut f = healthy();
        f.fdb = vec![KernelEntry::Fdb {
            mac: MacAddr([2, 0, 0, 0, 0, 0x51]),
            dst: "10.0.0.99".parse().unwrap(),
            dev: "flannel.1".into(),
        }];
        let s = walk_with(&f, to("flannel.1", Some("10.244.2.0")), "10.244.2.5");
        let last = s.last().unwrap();
        assert_eq!(last.hop, "fdb");
        assert!(!last.ok);
        assert!(last
            .cause
            .as_deref()
            .unwrap_or("")
            .contains("the lease says the peer is at 10.0.0.51"));
    }

    #[test]
    fn local_pods_outside_traffic_and_unleased_subnets() {
        let s = walk_with(&healthy(), to("cni0", None), "10.244.1.9");
        assert_eq!(s.last().unwrap().hop, "cni0 → pod eth0");
        let s = walk_with(&healthy(), to("eth0", Some("10.0.0.1")), "1.1.1.1");
        assert!(s.last().unwrap().detail.starts_with("yes"), "{s:#?}");
        let s = walk_with(&healthy(), to("eth0", Some("10.0.0.1")), "10.244.77.1");
        assert!(!s.last().unwrap().ok, "{s:#?}");
        let s = walk_with(&healthy(), RouteAnswer::default(), "10.244.2.5");
        assert_eq!(
            s.last().unwrap().cause.as_deref(),
            Some(
                "the kernel has no route for it: the packet is dropped with 'network unreachable'"
            )
        );
    }
}
