//! `flannel-lab bench-scale`: one flanneld facing many peers in its datastore, as a large
//! cluster looks to one node. Kubernetes: the API fake with realistic Node objects (~10 KB of
//! status each) and kubelet-style status heartbeats arriving throughout (MODIFIED events with
//! the whole object); etcd: the same peers as leases. Measured: start to every peer's route in
//! the kernel, flanneld's memory (resident now and at its peak), and its CPU and memory while
//! idling with the heartbeats going on.

use crate::cluster::{spawn_in_ns, wait_until, Datastore};
use crate::sh::{self, in_ns, ip};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ScaleSpec {
    pub lab: String,
    pub peers: usize,
    pub datastore: Datastore,
    /// Node status heartbeats per second (kube).
    pub heartbeats: u64,
    /// How long to watch flanneld idle after it has every route.
    pub idle: Duration,
    pub state_root: PathBuf,
    pub bin_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScaleRow {
    pub datastore: &'static str,
    pub peers: usize,
    pub start_to_routes: Duration,
    /// flanneld's own CPU time until then (the datastore's is not in it).
    pub startup_cpu_seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub idle_cpu_percent: f64,
    pub idle_rss_mib: f64,
    /// One more peer written (the write acknowledged) to its route in the kernel; median.
    pub add_latency: Duration,
    /// That peer deleted to its route gone; median.
    pub delete_latency: Duration,
}

/// How many peers are added and deleted, one at a time, for the latency figures.
const EVENT_ROUNDS: usize = 5;

/// Peer `i` (1-based; 0 is the measured node): its podCIDR, public IP and VTEP MAC.
fn peer(i: usize) -> (String, String, String) {
    let (a, b) = (64 + (i >> 8), i & 255);
    (
        format!("100.{a}.{b}.0/24"),
        format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255),
        format!(
            "02:00:00:{:02x}:{:02x}:{:02x}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ),
    )
}

const NET_CONF: &str =
    r#"{"Network": "100.64.0.0/10", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

fn status_kib(pid: i32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (field(11) + field(12)) / hz
}

fn route_count(ns: &str) -> usize {
    ip(&[
        "-n",
        ns,
        "route",
        "show",
        "proto",
        "252",
        "dev",
        "flannel.1",
    ])
    .map(|o| o.lines().count())
    .unwrap_or(0)
}

/// Runs the measurement in a namespace of its own and removes it afterwards.
pub fn run(spec: &ScaleSpec) -> anyhow::Result<ScaleRow> {
    let dir = crate::names::state_dir(&spec.state_root, &spec.lab);
    if dir.exists() {
        bail!(
            "{} exists: run `flannel-lab down --name {}` first",
            dir.display(),
            spec.lab
        );
    }
    std::fs::create_dir_all(&dir)?;
    let ns = crate::names::node_ns(&spec.lab, "scale");
    let result = measure(spec, &dir, &ns);
    let _ = crate::cluster::down(&spec.lab, &spec.state_root);
    result
}

fn measure(spec: &ScaleSpec, dir: &std::path::Path, ns: &str) -> anyhow::Result<ScaleRow> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    ip(&["-n", ns, "addr", "add", "10.0.0.50/24", "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "link", "set", "eth1", "up"])?;
    let flanneld = spec.bin_dir.join("flanneld").display().to_string();
    let subnet_file = format!("--subnet-file={}", dir.join("subnet.env").display());
    let mut args: Vec<String>;
    let _store: Child = match spec.datastore {
        Datastore::Kube => {
            let kube = dir.join("kube");
            std::fs::create_dir_all(&kube)?;
            let mut seed = vec![serde_json::json!({"kind": "Node", "object":
                flannel_kube_fake::node("scale0", &["100.64.0.0/24"], "10.0.0.50", 0)})];
            for i in 1..=spec.peers {
                let (cidr, ip, mac) = peer(i);
                let mut n = flannel_kube_fake::node(&format!("peer{i:05}"), &[&cidr], &ip, 10_000);
                n["metadata"]["annotations"] = peer_annotations(&ip, &mac);
                seed.push(serde_json::json!({"kind": "Node", "object": n}));
            }
            std::fs::write(kube.join("seed.json"), serde_json::to_string(&seed)?)?;
            std::fs::write(dir.join("net-conf.json"), NET_CONF)?;
            let log = dir.join("kube-api.log");
            let fake: Vec<String> = vec![
                "--listen".into(),
                "127.0.0.1:6443".into(),
                "--dir".into(),
                kube.display().to_string(),
                "--seed".into(),
                kube.join("seed.json").display().to_string(),
                "--heartbeats".into(),
                spec.heartbeats.to_string(),
            ];
            let child = spawn_in_ns(
                ns,
                &spec.bin_dir.join("flannel-kube-fake").display().to_string(),
                &fake,
                &log,
            )?;
            wait_until("the API fake to serve", Duration::from_secs(120), || {
                Ok(std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("serving https://"))
            })?;
            args = vec![
                "env".into(),
                "NODE_NAME=scale0".into(),
                flanneld,
                "--kube-subnet-mgr".into(),
                format!("--kubeconfig-file={}", kube.join("kubeconfig").display()),
                format!("--net-config-path={}", dir.join("net-conf.json").display()),
            ];
            child
        }
        Datastore::Etcd => {
            let log = dir.join("etcd.log");
            let etcd: Vec<String> = [
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let child = spawn_in_ns(ns, "etcd", &etcd, &log)?;
            let etcdctl = |a: &[&str]| {
                let mut c = in_ns(ns, "etcdctl", a);
                c.env("ETCDCTL_API", "3");
                c
            };
            wait_until("etcd", Duration::from_secs(30), || {
                Ok(sh::run(&mut etcdctl(&["endpoint", "health"])).is_ok())
            })?;
            sh::run(&mut etcdctl(&[
                "put",
                "/coreos.com/network/config",
                NET_CONF,
            ]))?;
            // Leases as upstream writes them, put by 32 etcdctl at a time.
            let puts: Vec<(String, String)> = (1..=spec.peers)
                .map(|i| {
                    let (cidr, ip, mac) = peer(i);
                    (etcd_key(&cidr), etcd_lease(&ip, &mac))
                })
                .collect();
            for chunk in puts.chunks(32) {
                let children: Vec<Child> = chunk
                    .iter()
                    .map(|(k, v)| {
                        etcdctl(&["put", k, v])
                            .stdout(std::process::Stdio::null())
                            .spawn()
                    })
                    .collect::<Result<_, _>>()?;
                for mut c in children {
                    if !c.wait()?.success() {
                        bail!("etcdctl put failed");
                    }
                }
            }
            args = vec![flanneld, "--etcd-endpoints=http://127.0.0.1:2379".into()];
            child
        }
    };
    args.extend(["--iface=eth0".to_string(), subnet_file]);
    let log = dir.join("flanneld.log");
    let t0 = Instant::now();
    let (prog, rest) = args.split_first().context("no command")?;
    let mut fl = spawn_in_ns(ns, prog, rest, &log)?;
    let pid = fl.id() as i32;
    loop {
        if route_count(ns) >= spec.peers {
            break;
        }
        if let Some(st) = fl.try_wait()? {
            bail!(
                "flanneld exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("not all {} routes after 10 minutes", spec.peers);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let start_to_routes = t0.elapsed();
    let startup_cpu = cpu_seconds(pid);
    if std::env::var_os("FLANNEL_BENCH_LOG").is_some() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let rss = status_kib(pid, "VmRSS:") / 1024.0;
    let cpu0 = cpu_seconds(pid);
    let t1 = Instant::now();
    std::thread::sleep(spec.idle);
    let idle_cpu_percent = 100.0 * (cpu_seconds(pid) - cpu0) / t1.elapsed().as_secs_f64();
    let (add_latency, delete_latency) = event_latencies(spec, dir, ns)?;
    let row = ScaleRow {
        datastore: spec.datastore.name(),
        peers: spec.peers,
        start_to_routes,
        startup_cpu_seconds: startup_cpu,
        rss_mib: rss,
        peak_rss_mib: status_kib(pid, "VmHWM:") / 1024.0,
        idle_cpu_percent,
        idle_rss_mib: status_kib(pid, "VmRSS:") / 1024.0,
        add_latency,
        delete_latency,
    };
    let _ = fl.kill();
    let _ = fl.wait();
    Ok(row)
}

/// Writes peer `i` into the datastore (as upstream's flanneld would) or deletes it.
fn write_peer(
    spec: &ScaleSpec,
    dir: &std::path::Path,
    ns: &str,
    i: usize,
    add: bool,
) -> anyhow::Result<()> {
    let (cidr, ip, mac) = peer(i);
    match spec.datastore {
        Datastore::Kube => {
            let kc = dir.join("kube").join("kubeconfig").display().to_string();
            let name = format!("peer{i:05}");
            if add {
                let mut n = flannel_kube_fake::node(&name, &[&cidr], &ip, 10_000);
                n["metadata"]["annotations"] = peer_annotations(&ip, &mac);
                let file = dir.join("node.json");
                std::fs::write(&file, n.to_string())?;
                let f = file.display().to_string();
                sh::run(&mut in_ns(
                    ns,
                    "kubectl",
                    &["--kubeconfig", &kc, "create", "-f", &f],
                ))?;
            } else {
                sh::run(&mut in_ns(
                    ns,
                    "kubectl",
                    &["--kubeconfig", &kc, "delete", "node", &name, "--wait=false"],
                ))?;
            }
        }
        Datastore::Etcd => {
            let key = etcd_key(&cidr);
            let mut c = if add {
                in_ns(ns, "etcdctl", &["put", &key, &etcd_lease(&ip, &mac)])
            } else {
                in_ns(ns, "etcdctl", &["del", &key])
            };
            c.env("ETCDCTL_API", "3");
            sh::run(&mut c)?;
        }
    }
    Ok(())
}

/// Medians of [`EVENT_ROUNDS`] peers added, then deleted, one at a time, each timed from the
/// datastore's acknowledgement to the route's change in the kernel (polled every 2 ms).
fn event_latencies(
    spec: &ScaleSpec,
    dir: &std::path::Path,
    ns: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let has_route = |cidr: &str| {
        ip(&["-n", ns, "route", "show", cidr, "proto", "252"])
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false)
    };
    let wait = |cidr: &str, want: bool| -> anyhow::Result<Duration> {
        let t = Instant::now();
        while has_route(cidr) != want {
            if t.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(dir.join("flanneld.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                bail!(
                    "the route to {cidr} did not {} within 60 s; flanneld's last lines:\n{}",
                    if want { "come" } else { "go" },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t.elapsed())
    };
    // With etcd flanneld picked a free subnet of its own, which may be one of the next peers'.
    let own = std::fs::read_to_string(dir.join("subnet.env")).unwrap_or_default();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok())
        .map(|n| n.trunc().to_string());
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in (spec.peers + 1..)
        .filter(|&i| Some(peer(i).0) != own)
        .take(EVENT_ROUNDS)
    {
        let (cidr, _, _) = peer(i);
        write_peer(spec, dir, ns, i, true)?;
        adds.push(wait(&cidr, true)?);
        write_peer(spec, dir, ns, i, false)?;
        dels.push(wait(&cidr, false)?);
    }
    Ok((median(adds), median(dels)))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn peer_annotations(ip: &str, mac: &str) -> serde_json::Value {
    serde_json::json!({
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data": format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        "flannel.alpha.coreos.com/public-ip": ip,
    })
}

fn etcd_key(cidr: &str) -> String {
    format!("/coreos.com/network/subnets/{}", cidr.replace('/', "-"))
}

/// A lease as upstream writes it.
fn etcd_lease(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

pub fn render(rows: &[ScaleRow]) -> String {
    let mut s = String::from("| datastore | peers | start to all routes s | flanneld CPU s to then | RSS MiB | peak RSS MiB | idle CPU % | idle RSS MiB | add to route ms | delete to gone ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} | {:.0} | {:.0} |\n",
            r.datastore,
            r.peers,
            r.start_to_routes.as_secs_f64(),
            r.startup_cpu_seconds,
            r.rss_mib,
            r.peak_rss_mib,
            r.idle_cpu_percent,
            r.idle_rss_mib,
            r.add_latency.as_secs_f64() * 1000.0,
            r.delete_latency.as_secs_f64() * 1000.0,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_are_distinct() {
        assert_eq!(super::peer(1).0, "100.64.1.0/24");
        assert_eq!(super::peer(5000).0, "100.83.136.0/24");
        assert_eq!(super::peer(5000).1, "172.16.19.136");
        assert_eq!(super::peer(5000).2, "02:00:00:00:13:88");
    }
}
