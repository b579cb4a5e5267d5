//! `flannel-lab trace <pod> <pod>`: the tutorial's packet walk, proven. The walk comes from
//! `flannelctl trace` on the source node (live kernel state); then tcpdump listens at every
//! hop (pod eth0, cni0, the flannel device and eth0 on both nodes) while the source pod pings
//! the destination with a marker payload, and each hop shows what it captured: inner headers
//! on the pod side, outer ones on the underlay, as the tutorial's captures show them.

use crate::state::{LabState, NodeState, PodState};
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Echo requests sent through the path.
pub const PINGS: usize = 3;
/// The payload pattern (`ping -p`): "flannel" in hex, to spot in a capture.
pub const MARKER: &str = "666c616e6e656c";

/// One place a capture listens.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// "master1-pod1 eth0", "master1 cni0", ...
    pub at: String,
    #[serde(skip)]
    pub netns: String,
    pub iface: String,
    pub filter: String,
    /// Echo requests captured there.
    pub packets: usize,
    /// The first one as tcpdump printed it (outer and inner headers where encapsulated).
    pub sample: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub backend: String,
    /// `flannelctl trace -o json` on the source node.
    pub walk: serde_json::Value,
    pub hops: Vec<Hop>,
    /// The outer destination seen on the source node's eth0 (encapsulating backends).
    pub outer_dst: Option<String>,
    /// The destination node's public IP (its lease's PublicIP).
    pub peer_public_ip: String,
    pub ok: bool,
}

fn find<'a>(s: &'a LabState, what: &str) -> anyhow::Result<(&'a NodeState, &'a PodState)> {
    s.find_pod(what)
}

/// The flannel device of the backend in a family (none for host-gw).
fn device(backend: &str, v6: bool) -> Option<&'static str> {
    match (backend, v6) {
        ("vxlan", false) => Some("flannel.1"),
        ("vxlan", true) => Some("flannel-v6.1"),
        ("udp", _) => Some("flannel0"),
        ("wireguard", false) => Some("flannel-wg"),
        ("wireguard", true) => Some("flannel-wg-v6"),
        _ => None,
    }
}

/// Where to listen, in the order a packet passes, with tcpdump filters for our requests only.
fn hops(
    s: &LabState,
    from: (&NodeState, &PodState),
    to: (&NodeState, &PodState),
    v6: bool,
) -> Vec<Hop> {
    let (sn, sp) = from;
    let (dn, dp) = to;
    let dst = if v6 { &dp.ip6 } else { &dp.ip };
    let icmp = if v6 { "icmp6" } else { "icmp" };
    let inner = format!("{icmp} and dst host {dst}");
    let peer = if v6 { &dn.ip6 } else { &dn.ip };
    let outer = match s.backend.as_str() {
        "vxlan" => format!("udp port 8472 and dst host {peer}"),
        "udp" => format!("udp port 8285 and dst host {peer}"),
        // Sealed: only the outer header tells our packets apart (every data message to the
        // peer's port, keepalives included).
        "wireguard" => format!(
            "udp port {} and dst host {peer}",
            if v6 { 51821 } else { 51820 }
        ),
        _ => inner.clone(),
    };
    let hop = |at: String, netns: &str, iface: &str, filter: &str| Hop {
        at,
        netns: netns.to_string(),
        iface: iface.to_string(),
        filter: filter.to_string(),
        packets: 0,
        sample: String::new(),
    };
    let mut v = vec![
        hop(
            format!("{} eth0", crate::ping::display(sp)),
            &sp.netns,
            "eth0",
            &inner,
        ),
        hop(format!("{} cni0", sn.name), &sn.netns, "cni0", &inner),
    ];
    if sn.name != dn.name {
        let dev = device(&s.backend, v6);
        if let Some(d) = dev {
            v.push(hop(format!("{} {d}", sn.name), &sn.netns, d, &inner));
        }
        v.push(hop(format!("{} eth0", sn.name), &sn.netns, "eth0", &outer));
        v.push(hop(format!("{} eth0", dn.name), &dn.netns, "eth0", &outer));
        if let Some(d) = dev {
            v.push(hop(format!("{} {d}", dn.name), &dn.netns, d, &inner));
        }
        v.push(hop(format!("{} cni0", dn.name), &dn.netns, "cni0", &inner));
    }
    v.push(hop(
        format!("{} eth0", crate::ping::display(dp)),
        &dp.netns,
        "eth0",
        &inner,
    ));
    v
}

/// A tcpdump on one hop, its output collected by a thread.
struct Capture {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn start_capture(h: &Hop) -> anyhow::Result<Capture> {
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", &h.netns, "tcpdump", "-l", "-n", "-i", &h.iface,
        ])
        .arg(&h.filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running tcpdump (apt-get install tcpdump)")?;
    let (tx, rx) = mpsc::channel();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let (ready_tx, ready_rx) = mpsc::channel();
    if let Some(err) = err {
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("listening on") {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    if let Some(out) = out {
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("tcpdump on {} did not start", h.at))?;
    Ok(Capture { child, lines: rx })
}

/// Stops the capture; the packets (a line with a timestamp, then any decoded inner lines).
fn finish(mut c: Capture) -> Vec<String> {
    // SIGINT: tcpdump flushes what it has and exits.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut packets: Vec<String> = Vec::new();
    while let Ok(l) = c
        .lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if l.chars().next().is_some_and(|ch| ch.is_ascii_digit()) {
            packets.push(l);
        } else if let Some(last) = packets.last_mut() {
            last.push_str("\n    ");
            last.push_str(l.trim());
        }
    }
    let _ = c.child.kill();
    let _ = c.child.wait();
    packets
}

/// The walk and the captures for a ping from `from` to `to` (pod names or addresses).
pub fn run(s: &LabState, from: &str, to: &str) -> anyhow::Result<Report> {
    let (sn, sp) = find(s, from)?;
    let (dn, dp) = find(s, to)?;
    if sp.key() == dp.key() {
        bail!(
            "{from} and {to} are the same pod ({}): a trace follows a packet from one pod to another",
            crate::ping::display(sp)
        );
    }
    let v6 = from.contains(':') || to.contains(':');
    let (src, dst) = if v6 {
        (&sp.ip6, &dp.ip6)
    } else {
        (&sp.ip, &dp.ip)
    };
    if src.is_empty() || dst.is_empty() {
        bail!(
            "{} or {} has no address of that family",
            crate::ping::display(sp),
            crate::ping::display(dp)
        );
    }
    let out = crate::cluster::flannelctl(sn, &["trace", "-o", "json", src, dst])?;
    let walk = String::from_utf8_lossy(&out.stdout);
    if walk.trim().is_empty() {
        // flannelctl said why on stderr (flanneld not answering, and how to start it again).
        bail!(
            "flannelctl trace on {}: {}",
            sn.name,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("flannelctl: ")
        );
    }
    let walk: serde_json::Value = serde_json::from_str(&walk)
        .with_context(|| format!("flannelctl trace on {} said: {walk}", sn.name))?;
    // A first packet settles the path (neighbour discovery, a fresh IPv6 address still in
    // duplicate address detection), so that the captured ones show it as it runs.
    for _ in 0..5 {
        let warm = Command::new("ip")
            .args([
                "netns", "exec", &sp.netns, "ping", "-c", "1", "-W", "1", dst,
            ])
            .output()
            .context("ping")?;
        if warm.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut hops = hops(s, (sn, sp), (dn, dp), v6);
    let mut caps = Vec::new();
    for h in &hops {
        caps.push(start_capture(h)?);
    }
    let ping = Command::new("ip")
        .args(["netns", "exec", &sp.netns, "ping", "-c"])
        .arg(PINGS.to_string())
        .args(["-i", "0.2", "-W", "1", "-p", MARKER, dst])
        .output()
        .context("ping")?;
    std::thread::sleep(Duration::from_millis(300));
    for (h, c) in hops.iter_mut().zip(caps) {
        let p = finish(c);
        h.packets = p.len();
        h.sample = p.into_iter().next().unwrap_or_default();
    }
    let peer = if v6 { &dn.ip6 } else { &dn.ip };
    let outer_dst = if s.backend == "host-gw" || sn.name == dn.name {
        None
    } else {
        hops.iter()
            .find(|h| h.at == format!("{} eth0", sn.name))
            .and_then(|h| outer_destination(&h.sample))
    };
    let walk_ok = walk
        .as_array()
        .is_some_and(|a| a.iter().all(|st| st["ok"] == true));
    let ok = ping.status.success()
        && walk_ok
        && hops.iter().all(|h| h.packets >= PINGS)
        && outer_dst.as_ref().is_none_or(|d| d == peer);
    Ok(Report {
        from: crate::ping::display(sp),
        to: crate::ping::display(dp),
        backend: s.backend.clone(),
        walk,
        hops,
        outer_dst,
        peer_public_ip: peer.clone(),
        ok,
    })
}

/// The destination address of tcpdump's first line: `IP a.b.c.d.port > e.f.g.h.port: ...`.
pub fn outer_destination(sample: &str) -> Option<String> {
    let first = sample.lines().next()?;
    let after = first.split(" > ").nth(1)?;
    // Up to ": " (an IPv6 address has colons of its own).
    let addr_port = after.split(": ").next()?;
    // IPv4 `10.0.0.51.8472`, IPv6 `fd00::51.8472`: the port is after the last dot.
    Some(
        addr_port
            .rsplit_once('.')
            .map_or(addr_port, |(a, _)| a)
            .to_string(),
    )
}

/// The report as the tutorial tells it: the walk, a small diagram, then every hop's capture.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "trace {} → {} ({})\n\nthe walk (flannelctl trace on the source node):\n",
        r.from, r.to, r.backend
    );
    if let Some(steps) = r.walk.as_array() {
        for (i, st) in steps.iter().enumerate() {
            let mark = if st["ok"] == true { " " } else { "✗" };
            out.push_str(&format!(
                "{:>3}. {mark} {:<16} {}\n",
                i + 1,
                st["hop"].as_str().unwrap_or(""),
                st["detail"].as_str().unwrap_or("")
            ));
            if let Some(c) = st["cause"].as_str() {
                out.push_str(&format!("         broken: {c}\n"));
            }
        }
    }
    let names: Vec<&str> = r.hops.iter().map(|h| h.at.as_str()).collect();
    out.push_str(&format!("\npath:\n  {}\n", diagram(&names, r)));
    out.push_str(&format!(
        "\ncaptures ({PINGS} echo requests with payload {MARKER}):\n"
    ));
    for h in &r.hops {
        out.push_str(&format!(
            "  {} {:<22} {} packet(s)   tcpdump -i {} '{}'\n",
            if h.packets >= PINGS { "✓" } else { "✗" },
            h.at,
            h.packets,
            h.iface,
            h.filter
        ));
        if !h.sample.is_empty() {
            out.push_str(&format!(
                "      {}\n",
                h.sample.replace("\n    ", "\n      ")
            ));
        }
    }
    if let Some(d) = &r.outer_dst {
        out.push_str(&format!(
            "\nouter destination {d}: {} the peer's PublicIP {}\n",
            if *d == r.peer_public_ip {
                "is"
            } else {
                "is NOT"
            },
            r.peer_public_ip
        ));
    }
    out.push_str(if r.ok {
        "\nevery hop saw the packets\n"
    } else {
        "\nthe walk is broken (see ✗)\n"
    });
    out
}

fn diagram(names: &[&str], r: &Report) -> String {
    let enc = match r.backend.as_str() {
        "vxlan" => " ══ VXLAN ══▶ ",
        "udp" => " ══ UDP 8285 ══▶ ",
        "wireguard" => " ══ WireGuard ══▶ ",
        _ => " ──▶ ",
    };
    let mut s = String::new();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            let underlay = names[i - 1].ends_with(" eth0")
                && n.ends_with(" eth0")
                && i > 1
                && i + 1 < names.len();
            s.push_str(if underlay { enc } else { " ─▶ " });
        }
        s.push_str(n);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_destination_is_read_from_tcpdump_lines() {
        let v4 = "14:56:27.300799 IP 10.0.0.50.55762 > 10.0.0.51.8472: OTV, flags [I] (0x08), overlay 0, instance 1\n    IP 10.244.39.2 > 10.244.75.2: ICMP echo request";
        assert_eq!(outer_destination(v4).as_deref(), Some("10.0.0.51"));
        let v6 = "15:00:00.000001 IP6 fd00::50.41000 > fd00::51.8472: OTV, flags [I]";
        assert_eq!(outer_destination(v6).as_deref(), Some("fd00::51"));
        assert_eq!(outer_destination(""), None);
    }

    /// The same pod twice (by name or address) is said to be the same pod, not "the walk is
    /// broken".
    #[test]
    fn the_same_pod_twice_is_named_as_such() {
        let pod = PodState {
            name: "master1-pod1".into(),
            netns: "lab-master1-pod1".into(),
            ip: "10.244.39.2".into(),
            ip6: String::new(),
            namespace: "default".into(),
            labels: Default::default(),
            ports: Vec::new(),
        };
        let node = NodeState {
            name: "master1".into(),
            netns: "lab-master1".into(),
            ip: "10.0.0.50".into(),
            subnet: "10.244.39.0/24".into(),
            ip6: String::new(),
            subnet6: String::new(),
            pods: vec![pod],
            log: "/dev/null".into(),
            flanneld: vec![],
            env: vec![],
            binds: vec![],
            cni_binds: vec![],
            subnet_file: "/dev/null".into(),
        };
        let s = LabState {
            lab: "lab".into(),
            state_dir: "/nonexistent".into(),
            backend: "vxlan".into(),
            datastore: "etcd".into(),
            api_args: vec![],
            api_log: "/dev/null".into(),
            etcd_log: "/dev/null".into(),
            etcd_args: vec![],
            nodes: vec![node],
            bin_dir: "/nonexistent".into(),
        };
        for (a, b) in [
            ("master1-pod1", "master1-pod1"),
            ("master1-pod1", "10.244.39.2"),
        ] {
            let e = run(&s, a, b).unwrap_err().to_string();
            assert!(e.contains("are the same pod (master1-pod1)"), "{e}");
        }
    }
}
