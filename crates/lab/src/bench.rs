//! `flannel-lab bench`: the data planes side by side. For each case a 2-node lab, pod to pod
//! across nodes (or node to node for the references): TCP 1 and 4 streams, UDP at line rate with
//! loss, and ping latency (p50/p99); plus the CPU seconds flanneld spends during the udp run.

use crate::cluster::{down, up, LabSpec};
use crate::sh::{self, in_ns, ip};
use crate::state::LabState;
use anyhow::{anyhow, Context};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

/// One row of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub case: String,
    pub tcp1: f64,
    pub tcp4: f64,
    pub tcp1_retrans: u64,
    pub udp: f64,
    pub udp_loss: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU seconds used by flanneld on both nodes during the TCP single-stream run.
    pub flanneld_cpu: Option<f64>,
}

pub struct BenchSpec {
    pub seconds: u32,
    pub repeat: u32,
    pub state_root: PathBuf,
    pub bin_dir: PathBuf,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_server(ns: &str, port: u16, bind: Option<&str>) -> anyhow::Result<Server> {
    let p = port.to_string();
    let mut args = vec!["-s", "-p", &p];
    if let Some(b) = bind {
        args.extend(["-B", b]);
    }
    let c = in_ns(ns, "iperf3", &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Server(c))
}

fn iperf(ns: &str, dst: &str, port: u16, extra: &[&str], secs: u32) -> anyhow::Result<Value> {
    let t = secs.to_string();
    let p = port.to_string();
    let mut args = vec!["-c", dst, "-p", &p, "-t", &t, "-J"];
    args.extend_from_slice(extra);
    // iperf3 exits non-zero on errors but still prints its JSON, with the reason in "error".
    let out = in_ns(ns, "iperf3", &args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running iperf3 in {ns}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 {args:?} from {ns} printed no JSON"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(anyhow!("iperf3 {args:?} from {ns}: {e}"));
    }
    Ok(v)
}

fn gbps(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(0.0) / 1e9
}

/// Per-packet RTTs of `ping -i 0.01`, then p50 and p99 in ms.
fn latency(ns: &str, dst: &str, count: u32) -> anyhow::Result<(f64, f64)> {
    let c = count.to_string();
    let out = sh::run(&mut in_ns(
        ns,
        "ping",
        &["-i", "0.01", "-c", &c, "-W", "1", dst],
    ))?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse().ok())
        .collect();
    if rtts.is_empty() {
        return Err(anyhow!("no ping answers from {dst}"));
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    Ok((pick(0.5), pick(0.99)))
}

/// utime + stime of every flanneld in the lab, in seconds.
fn flanneld_cpu(state: &LabState) -> f64 {
    state
        .nodes
        .iter()
        .flat_map(crate::cluster::flanneld_pids)
        .map(flannel_testkit::procfs::cpu_seconds)
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Each figure is the median over the runs of one case.
fn median_row(case: &str, runs: &[Row]) -> Row {
    let m = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
    Row {
        case: case.to_string(),
        tcp1: m(|r| r.tcp1),
        tcp4: m(|r| r.tcp4),
        tcp1_retrans: m(|r| r.tcp1_retrans as f64) as u64,
        udp: m(|r| r.udp),
        udp_loss: m(|r| r.udp_loss),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        flanneld_cpu: runs
            .first()
            .and_then(|r| r.flanneld_cpu)
            .map(|_| m(|r| r.flanneld_cpu.unwrap_or(0.0))),
    }
}

fn measure_once(
    case: &str,
    state: &LabState,
    src_ns: &str,
    dst: &str,
    port: u16,
    secs: u32,
) -> anyhow::Result<Row> {
    let cpu0 = flanneld_cpu(state);
    let t1 = iperf(src_ns, dst, port, &[], secs)?;
    let cpu = flanneld_cpu(state) - cpu0;
    let t4 = iperf(src_ns, dst, port, &["-P", "4"], secs)?;
    // UDP as fast as the sender goes; 1350-byte datagrams fit every backend's MTU.
    let u = iperf(src_ns, dst, port, &["-u", "-b", "0", "-l", "1350"], secs)?;
    let (p50, p99) = latency(src_ns, dst, 300)?;
    Ok(Row {
        case: case.to_string(),
        tcp1: gbps(&t1, &["end", "sum_received", "bits_per_second"]),
        tcp1_retrans: t1["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        tcp4: gbps(&t4, &["end", "sum_received", "bits_per_second"]),
        udp: gbps(&u, &["end", "sum", "bits_per_second"])
            * (1.0 - u["end"]["sum"]["lost_percent"].as_f64().unwrap_or(0.0) / 100.0),
        udp_loss: u["end"]["sum"]["lost_percent"].as_f64().unwrap_or(0.0),
        p50_ms: p50,
        p99_ms: p99,
        flanneld_cpu: Some(cpu),
    })
}

struct LabGuard {
    name: String,
    root: PathBuf,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = down(&self.name, &self.root);
    }
}

fn lab(
    spec: &BenchSpec,
    name: &str,
    backend: &str,
    ip_family: crate::names::IpFamily,
) -> anyhow::Result<(LabState, LabGuard)> {
    let _ = down(name, &spec.state_root);
    let guard = LabGuard {
        name: name.into(),
        root: spec.state_root.clone(),
    };
    let s = LabSpec {
        lab: name.into(),
        nodes: 2,
        pods_per_node: 1,
        backend: backend.into(),
        state_root: spec.state_root.clone(),
        bin_dir: spec.bin_dir.clone(),
        ip_family,
        ..LabSpec::default()
    };
    Ok((up(&s)?, guard))
}

/// One measured path.
struct Case<'a> {
    name: &'static str,
    state: &'a LabState,
    src: String,
    dst_ns: String,
    dst: String,
    /// The iperf3 server's port; one bound to `dst` when it is not 5201 (see below).
    port: u16,
    /// Whether flanneld's CPU time means anything for this case.
    flannel: bool,
}

/// Runs every case. All labs are up at once and the cases take turns, run after run, so that
/// drift on a shared machine hits every case alike; each figure is the median of the runs.
pub fn run(spec: &BenchSpec, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<Row>> {
    use crate::names::IpFamily::{Dual, V4};
    let (vx, _g1) = lab(spec, "bvx", "vxlan", V4)?;
    let (hg, _g2) = lab(spec, "bhg", "host-gw", V4)?;
    let (ud, _g3) = lab(spec, "bud", "udp", V4)?;
    // Dual-stack labs of their own for the IPv6 rows (their FLANNEL_MTU is the IPv6 device's).
    let (vx6, _g4) = lab(spec, "bv6", "vxlan", Dual)?;
    let (hg6, _g5) = lab(spec, "bh6", "host-gw", Dual)?;
    // WireGuard (userspace) in both families from one dual-stack lab.
    let (wg, _g6) = lab(spec, "bwg", "wireguard", Dual)?;
    let (n1, n2) = (&vx.nodes[0], &vx.nodes[1]);
    // A hand-built kernel VXLAN between the same namespaces, same MTU as ours.
    for (n, local, remote, addr) in [
        (n1, &n1.ip, &n2.ip, "192.168.250.1/24"),
        (n2, &n2.ip, &n1.ip, "192.168.250.2/24"),
    ] {
        ip(&[
            "-n", &n.netns, "link", "add", "vxref", "type", "vxlan", "id", "4242", "local", local,
            "remote", remote, "dstport", "4789", "dev", "eth0",
        ])?;
        ip(&["-n", &n.netns, "link", "set", "vxref", "mtu", "1450", "up"])?;
        ip(&["-n", &n.netns, "addr", "add", addr, "dev", "vxref"])?;
    }
    // And over the IPv6 underlay (MTU 1430: a 70-byte overhead).
    let (m1, m2) = (&vx6.nodes[0], &vx6.nodes[1]);
    for (n, local, remote, addr) in [
        (m1, &m1.ip6, &m2.ip6, "fd99::1/64"),
        (m2, &m2.ip6, &m1.ip6, "fd99::2/64"),
    ] {
        ip(&[
            "-n", &n.netns, "link", "add", "vxref6", "type", "vxlan", "id", "4243", "local", local,
            "remote", remote, "dstport", "4790", "dev", "eth0",
        ])?;
        ip(&["-n", &n.netns, "link", "set", "vxref6", "mtu", "1430", "up"])?;
        ip(&[
            "-n", &n.netns, "addr", "add", addr, "dev", "vxref6", "nodad",
        ])?;
    }
    let pods6 = |s: &LabState| {
        (
            s.nodes[0].pods[0].netns.clone(),
            s.nodes[1].pods[0].netns.clone(),
            s.nodes[1].pods[0].ip6.clone(),
        )
    };
    let pods = |s: &LabState| {
        (
            s.nodes[0].pods[0].netns.clone(),
            s.nodes[1].pods[0].netns.clone(),
            s.nodes[1].pods[0].ip.clone(),
        )
    };
    let case = |name, state, (src, dst_ns, dst): (String, String, String), flannel| Case {
        name,
        state,
        src,
        dst_ns,
        dst,
        port: 5201,
        flannel,
    };
    let node = (n1.netns.clone(), n2.netns.clone(), n2.ip.clone());
    let cases = [
        case("underlay", &vx, node.clone(), false),
        case(
            "kernel vxlan, by hand (node to node)",
            &vx,
            (node.0.clone(), node.1.clone(), "192.168.250.2".into()),
            false,
        ),
        // node2's flannel.1 address: replies leave from it, so UDP answers match the request.
        case(
            "vxlan (node to node)",
            &vx,
            (
                node.0.clone(),
                node.1.clone(),
                n2.subnet.trim_end_matches("/24").into(),
            ),
            true,
        ),
        case("vxlan", &vx, pods(&vx), true),
        case("host-gw", &hg, pods(&hg), true),
        // The same path as the underlay row plus host-gw's route: node1 to node2's cni0 address.
        // The server binds that address (port 5202) so its UDP answers come from it.
        Case {
            port: 5202,
            ..case(
                "host-gw (node to node)",
                &hg,
                (
                    hg.nodes[0].netns.clone(),
                    hg.nodes[1].netns.clone(),
                    hg.nodes[1].subnet.replace(".0/24", ".1"),
                ),
                true,
            )
        },
        case("udp", &ud, pods(&ud), true),
        case("wireguard", &wg, pods(&wg), true),
        case(
            "underlay (IPv6)",
            &vx6,
            (m1.netns.clone(), m2.netns.clone(), m2.ip6.clone()),
            false,
        ),
        case(
            "kernel vxlan over IPv6, by hand (node to node)",
            &vx6,
            (m1.netns.clone(), m2.netns.clone(), "fd99::2".into()),
            false,
        ),
        case("vxlan (IPv6)", &vx6, pods6(&vx6), true),
        case("host-gw (IPv6)", &hg6, pods6(&hg6), true),
        case("wireguard (IPv6)", &wg, pods6(&wg), true),
    ];
    let mut servers = Vec::new();
    let mut started: Vec<(&str, u16)> = Vec::new();
    for c in &cases {
        if !started.contains(&(c.dst_ns.as_str(), c.port)) {
            let bind = (c.port != 5201).then_some(c.dst.as_str());
            servers.push(iperf_server(&c.dst_ns, c.port, bind)?);
            started.push((&c.dst_ns, c.port));
        }
    }
    let mut runs: Vec<Vec<Row>> = cases.iter().map(|_| Vec::new()).collect();
    for r in 0..spec.repeat.max(1) {
        for (i, c) in cases.iter().enumerate() {
            progress(&format!("run {}/{}: {}", r + 1, spec.repeat.max(1), c.name));
            let mut row = measure_once(c.name, c.state, &c.src, &c.dst, c.port, spec.seconds)?;
            if !c.flannel {
                row.flanneld_cpu = None;
            }
            runs[i].push(row);
        }
    }
    drop(servers);
    Ok(cases
        .iter()
        .zip(&runs)
        .map(|(c, r)| median_row(c.name, r))
        .collect())
}

/// The table, each figure with its ratio to vxlan (pod to pod).
pub fn render(rows: &[Row]) -> String {
    let base = rows
        .iter()
        .find(|r| r.case == "vxlan")
        .cloned()
        .unwrap_or_default();
    let ratio = |x: f64, b: f64| {
        if b > 0.0 {
            format!("{x:.2} ({:.2})", x / b)
        } else {
            format!("{x:.2}")
        }
    };
    let mut s = String::from(
        "| case | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP Gbit/s | UDP loss % | ping p50 ms | ping p99 ms | TCP 1 retransmits | flanneld CPU s |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |\n",
            r.case,
            ratio(r.tcp1, base.tcp1),
            ratio(r.tcp4, base.tcp4),
            ratio(r.udp, base.udp),
            r.udp_loss,
            ratio(r.p50_ms, base.p50_ms),
            ratio(r.p99_ms, base.p99_ms),
            r.tcp1_retrans,
            r.flanneld_cpu
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratios_to_vxlan() {
        let rows = vec![
            Row {
                case: "vxlan".into(),
                tcp1: 8.0,
                tcp4: 9.0,
                udp: 2.0,
                p50_ms: 0.1,
                p99_ms: 0.2,
                ..Row::default()
            },
            Row {
                case: "udp".into(),
                tcp1: 6.0,
                tcp4: 4.5,
                udp: 1.0,
                p50_ms: 0.2,
                p99_ms: 0.4,
                flanneld_cpu: Some(3.5),
                ..Row::default()
            },
        ];
        let t = render(&rows);
        assert!(t.contains("| udp | 6.00 (0.75) | 4.50 (0.50) | 1.00 (0.50) | 0.00 | 0.20 (2.00) | 0.40 (2.00) | 0 | 3.50 |"), "{t}");
    }
}
