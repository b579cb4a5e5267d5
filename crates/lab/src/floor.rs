//! The floor for a cold start: how long `ip -batch` and `bridge -batch` take to write the same
//! neighbours, FDB entries and routes flanneld writes for N vxlan peers, into a fresh namespace
//! with the same device. Nothing flanneld does can be much faster than the kernel taking them.

use crate::sh::{self, in_ns, ip};
use anyhow::Context;
use std::time::{Duration, Instant};

/// Peer `i`'s subnet, public IP and MAC, as the benchmark's datastore holds them.
pub type Peer = (String, String, String);

/// Writes the entries of `peers` (vxlan, VNI 1) in namespace `ns` (made and removed here);
/// returns the time the three batches took.
pub fn measure(ns: &str, dir: &std::path::Path, peers: &[Peer]) -> anyhow::Result<Duration> {
    ip(&["netns", "add", ns])?;
    let r = batches(ns, dir, peers);
    let _ = ip(&["netns", "del", ns]);
    r
}

fn batches(ns: &str, dir: &std::path::Path, peers: &[Peer]) -> anyhow::Result<Duration> {
    for args in [
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ][..],
        &["addr", "add", "10.0.0.50/24", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["link", "set", "eth1", "up"],
        &[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "10.0.0.50",
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ],
        &["addr", "add", "10.128.0.0/32", "dev", "flannel.1"],
        &["link", "set", "flannel.1", "up"],
    ] {
        ip(&[&["-n", ns][..], args].concat())?;
    }
    let mut neigh = String::new();
    let mut fdb = String::new();
    let mut routes = String::new();
    for (cidr, public, mac) in peers {
        let gw = cidr.split('/').next().unwrap_or_default();
        neigh += &format!("neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent\n");
        fdb += &format!("fdb append {mac} dev flannel.1 dst {public} self permanent\n");
        routes += &format!("route replace {cidr} via {gw} dev flannel.1 onlink proto 252\n");
    }
    let files = [
        ("neigh", "ip", neigh),
        ("fdb", "bridge", fdb),
        ("routes", "ip", routes),
    ];
    let mut paths = Vec::new();
    for (name, tool, text) in files {
        let p = dir.join(format!("floor-{name}.batch"));
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        paths.push((tool, p));
    }
    let t = Instant::now();
    for (tool, p) in &paths {
        sh::run(&mut in_ns(ns, tool, &["-batch", &p.display().to_string()]))?;
    }
    Ok(t.elapsed())
}
