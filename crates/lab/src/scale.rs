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
    /// etcd: leases added (then deleted) one by one for the latency figures, this far apart.
    pub events: usize,
    pub event_gap: Duration,
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
    /// One more peer written to its route in the kernel: p50 and p99 (kube: the median of
    /// five `kubectl create`, acknowledged first, and no p99).
    pub add_latency: Duration,
    pub add_p99: Option<Duration>,
    /// That peer deleted to its route gone.
    pub delete_latency: Duration,
    pub delete_p99: Option<Duration>,
    /// `ip -batch` and `bridge -batch` writing the same entries into a fresh namespace.
    pub floor: Duration,
}

/// How many peers are added and deleted, one at a time, for the latency figures.
const EVENT_ROUNDS: usize = 5;

/// Peer `i` (1-based, up to 32767; 0 is the measured node): its podCIDR in 10.128.0.0/9 (no
/// overlap with the underlay), public IP and VTEP MAC.
fn peer(i: usize) -> (String, String, String) {
    let (a, b) = (128 + (i >> 8), i & 255);
    (
        format!("10.{a}.{b}.0/24"),
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
    r#"{"Network": "10.128.0.0/9", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

fn status_kib(pid: i32, field: &str) -> f64 {
    flannel_testkit::procfs::status_kib(pid, field) as f64
}

use flannel_testkit::procfs::cpu_seconds;

/// Permanent neighbours and FDB entries with a destination on flannel.1.
fn neigh_fdb_counts(ns: &str) -> (usize, usize) {
    let neigh = ip(&[
        "-n",
        ns,
        "neigh",
        "show",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ])
    .map(|o| o.lines().count())
    .unwrap_or(0);
    let fdb = sh::run(&mut sh::cmd(
        "bridge",
        &["-n", ns, "fdb", "show", "dev", "flannel.1"],
    ))
    .map(|o| o.lines().filter(|l| l.contains(" dst ")).count())
    .unwrap_or(0);
    (neigh, fdb)
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
    let (_store, mut args) = match spec.datastore {
        Datastore::Kube => kube_with_peers(spec, dir, ns, flanneld)?,
        Datastore::Etcd => etcd_with_peers(spec, dir, ns, flanneld)?,
    };
    args.extend([
        "--iface=eth0".to_string(),
        format!("--subnet-file={}", dir.join("subnet.env").display()),
        format!("--state-socket={}", dir.join("flanneld.sock").display()),
    ]);
    let (mut fl, start_to_routes, startup_cpu) = start_to_all_routes(spec, dir, ns, &args)?;
    let pid = fl.id() as i32;
    let rss = status_kib(pid, "VmRSS:") / 1024.0;
    let cpu0 = cpu_seconds(pid);
    let t1 = Instant::now();
    std::thread::sleep(spec.idle);
    let idle_cpu_percent = 100.0 * (cpu_seconds(pid) - cpu0) / t1.elapsed().as_secs_f64();
    let own = own_subnet(dir);
    let ((add_latency, add_p99), (delete_latency, delete_p99)) = match spec.datastore {
        Datastore::Etcd => churn_latencies(spec, dir, ns, own.as_deref())?,
        Datastore::Kube => {
            let (a, d) = event_latencies(spec, dir, ns, own.as_deref())?;
            ((a, None), (d, None))
        }
    };
    let peers: Vec<crate::floor::Peer> = (1..=spec.peers).map(peer).collect();
    let floor = crate::floor::measure(&format!("{ns}-floor"), dir, &peers)?;
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
        add_p99,
        delete_latency,
        delete_p99,
        floor,
    };
    let _ = fl.kill();
    let _ = fl.wait();
    Ok(row)
}

/// The API fake in `ns`, seeded with our Node and the peers' (padded as real ones), and the
/// flanneld command that uses it.
fn kube_with_peers(
    spec: &ScaleSpec,
    dir: &std::path::Path,
    ns: &str,
    flanneld: String,
) -> anyhow::Result<(Child, Vec<String>)> {
    let kube = dir.join("kube");
    std::fs::create_dir_all(&kube)?;
    let mut seed = vec![serde_json::json!({"kind": "Node", "object":
            flannel_kube_fake::node("scale0", &["10.128.0.0/24"], "10.0.0.50", 0)})];
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
    let args = vec![
        "env".into(),
        "NODE_NAME=scale0".into(),
        flanneld,
        "--kube-subnet-mgr".into(),
        format!("--kubeconfig-file={}", kube.join("kubeconfig").display()),
        format!("--net-config-path={}", dir.join("net-conf.json").display()),
    ];
    Ok((child, args))
}

/// etcd in `ns` holding the peers' leases as upstream writes them, and the flanneld command
/// that uses it.
fn etcd_with_peers(
    spec: &ScaleSpec,
    dir: &std::path::Path,
    ns: &str,
    flanneld: String,
) -> anyhow::Result<(Child, Vec<String>)> {
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
    // Leases as upstream writes them, over one connection.
    let puts: Vec<crate::churn::Write1> = (1..=spec.peers)
        .map(|i| {
            let (cidr, ip, mac) = peer(i);
            crate::churn::Write1 {
                key: etcd_key(&cidr),
                value: Some(etcd_lease(&ip, &mac)),
            }
        })
        .collect();
    crate::churn::write_paced(ns, puts, Duration::ZERO)?;
    let args = vec![flanneld, "--etcd-endpoints=http://127.0.0.1:2379".into()];
    Ok((child, args))
}

/// Starts flanneld (`args`) and waits until it has a route, a neighbour and an FDB entry for
/// every peer: the process, the time that took, and the CPU it spent.
fn start_to_all_routes(
    spec: &ScaleSpec,
    dir: &std::path::Path,
    ns: &str,
    args: &[String],
) -> anyhow::Result<(Child, Duration, f64)> {
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
    // Routes go in last; the neighbours and FDB entries they rely on must all be there too.
    let (neigh, fdb) = neigh_fdb_counts(ns);
    if neigh < spec.peers || fdb < spec.peers {
        bail!(
            "all {} routes are in, but only {neigh} neighbours and {fdb} FDB entries",
            spec.peers
        );
    }
    if std::env::var_os("FLANNEL_BENCH_LOG").is_some() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    Ok((fl, start_to_routes, startup_cpu))
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
    own: Option<&str>,
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
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in (spec.peers + 1..)
        .filter(|&i| Some(peer(i).0.as_str()) != own)
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

/// With etcd flanneld picked a free subnet of its own, which may be one of the next peers'.
fn own_subnet(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join("subnet.env"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok())
        .map(|n| n.trunc().to_string())
}

type Quantiles = (Duration, Option<Duration>);

/// etcd: `spec.events` new leases put `spec.event_gap` apart, then deleted as far apart; each
/// timed from the write's sending to the kernel's timestamp of the route's change.
fn churn_latencies(
    spec: &ScaleSpec,
    dir: &std::path::Path,
    ns: &str,
    own: Option<&str>,
) -> anyhow::Result<(Quantiles, Quantiles)> {
    use crate::churn::{kernel_time, quantile, write_paced, Write1};
    let ids: Vec<usize> = (spec.peers + 1..)
        .filter(|&i| Some(peer(i).0.as_str()) != own)
        .take(spec.events.max(1))
        .collect();
    let mon_file = dir.join("monitor.log");
    let mut mon = {
        let out = std::fs::File::create(&mon_file)?;
        let mut c = in_ns(ns, "ip", &["-ts", "monitor", "route"]);
        c.env("TZ", "UTC")
            .stdout(out)
            .stderr(std::process::Stdio::null());
        c.spawn().context("starting ip -ts monitor route")?
    };
    std::thread::sleep(Duration::from_millis(200));
    let run = || -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let mut result = (Vec::new(), Vec::new());
        for add in [true, false] {
            let writes = ids
                .iter()
                .map(|&i| {
                    let (cidr, ip, mac) = peer(i);
                    Write1 {
                        key: etcd_key(&cidr),
                        value: add.then(|| etcd_lease(&ip, &mac)),
                    }
                })
                .collect();
            let sent = write_paced(ns, writes, spec.event_gap)?;
            // Every change in, then read the monitor's record of them.
            let deadline = Instant::now() + Duration::from_secs(60);
            let times = loop {
                let text = std::fs::read_to_string(&mon_file).unwrap_or_default();
                let t: Vec<Option<Duration>> = ids
                    .iter()
                    .zip(&sent)
                    .map(|(&i, &at)| {
                        kernel_time(&text, &peer(i).0, !add, at)
                            .and_then(|k| k.duration_since(at).ok())
                    })
                    .collect();
                if t.iter().all(Option::is_some) {
                    break t.into_iter().flatten().collect::<Vec<_>>();
                }
                if Instant::now() > deadline {
                    let missing = t.iter().filter(|x| x.is_none()).count();
                    bail!(
                        "{missing} of {} routes did not {} within 60 s",
                        ids.len(),
                        if add { "come" } else { "go" }
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if add {
                result.0 = times;
            } else {
                result.1 = times;
            }
        }
        Ok(result)
    };
    let r = run();
    let _ = mon.kill();
    let _ = mon.wait();
    let (adds, dels) = r?;
    Ok((
        (quantile(&adds, 0.5), Some(quantile(&adds, 0.99))),
        (quantile(&dels, 0.5), Some(quantile(&dels, 0.99))),
    ))
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
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let p99 = |d: Option<Duration>| d.map(ms).unwrap_or_else(|| "-".into());
    let mut s = String::from("| datastore | peers | start to all entries s | ip -batch floor s | × floor | flanneld CPU s to then | RSS MiB | peak RSS MiB | idle CPU % | idle RSS MiB | add p50 ms | add p99 ms | delete p50 ms | delete p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
            r.datastore,
            r.peers,
            r.start_to_routes.as_secs_f64(),
            r.floor.as_secs_f64(),
            r.start_to_routes.as_secs_f64() / r.floor.as_secs_f64().max(1e-6),
            r.startup_cpu_seconds,
            r.rss_mib,
            r.peak_rss_mib,
            r.idle_cpu_percent,
            r.idle_rss_mib,
            ms(r.add_latency),
            p99(r.add_p99),
            ms(r.delete_latency),
            p99(r.delete_p99),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_are_distinct() {
        assert_eq!(super::peer(1).0, "10.128.1.0/24");
        assert_eq!(super::peer(5000).0, "10.147.136.0/24");
        assert_eq!(super::peer(32767).0, "10.255.255.0/24");
        assert_eq!(super::peer(5000).1, "172.16.19.136");
        assert_eq!(super::peer(5000).2, "02:00:00:00:13:88");
    }
}
