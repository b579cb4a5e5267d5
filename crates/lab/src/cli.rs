//! The `flannel-lab` command line.

use crate::cluster::{down, up, LabSpec};
use crate::names::{state_dir, DEFAULT_LAB, DEFAULT_STATE_ROOT};
use crate::state::LabState;
use crate::{ping, status};
use anyhow::{anyhow, bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  flannel-lab up [--nodes N] [--pods-per-node K] [--backend vxlan|host-gw|udp|wireguard]
                 [--segments 1|2] [--direct-routing] [--datastore etcd|kube] [--manifest FILE]
                 [--ip-family ipv4|dual|ipv6] [--nftables] [--network-policy]
                                                                      (ipv6, --network-policy: Kubernetes mode)
                                                                      build the cluster (default 3 nodes, 2 pods each;
                                                                      kube: nodes run deploy/kube-flannel.yml or FILE)
  flannel-lab ping-all [POD]                                          every pod (or POD) pings every other pod (each family)
  flannel-lab pod add NAMESPACE/NAME --node NODE [--labels k=v,k=v] [--port NAME=PORT/PROTO]...
                                                                      a pod: its namespace, CNI ADD, TCP and UDP servers on
                                                                      80 and 81, and (kube) its Pod object
  flannel-lab pod del NAMESPACE/NAME                                  CNI DEL, the namespace and the Pod object removed
  flannel-lab probe FROM TO [--proto tcp|udp] [--port N] [--ip-family ipv4|ipv6]
                                                                      one connection, 1 s timeout; exit 1 when blocked
  flannel-lab matrix [--ports 80,81] [--protos tcp,udp] [--json]     every ordered pod pair probed in parallel (network
                                                                      policy's reachability matrix: . reachable, X not)
  flannel-lab status [--json]                                         nodes, pods, routes, FDB, metrics, where the logs are
  flannel-lab restart NODE                                            stop NODE's flanneld and start it again as it was
  flannel-lab ctl NODE ARGS...                                        flannelctl on NODE, as an operator runs it there
                                                                      (e.g. ctl node1 doctor, ctl node1 trace SRC DST)
  flannel-lab trace POD POD [--json]                                  the packet walk (flannelctl trace) proven by a
                                                                      capture at every hop (NAMESPACE/NAME, names or addresses)
  flannel-lab down                                                    remove everything the lab made
  flannel-lab kubeconfig                                              kube mode: the admin kubeconfig's path
  flannel-lab kubectl ARGS...                                         kube mode: kubectl with it, in master1's namespace
  flannel-lab bench [--seconds S] [--repeat R]                        2-node labs per backend: iperf3 and ping, table
  flannel-lab bench-scale [--peers N] [--datastore kube|etcd] [--heartbeats R] [--seconds S]
                          [--events E] [--event-gap-ms G]
                                                                      one flanneld facing N peers: start to all entries against
                                                                      the ip -batch floor, memory, idle CPU, event latency p50/p99
common options: --name LAB (default flab; namespaces are LAB-*), --state-dir DIR (default /run/flannel-lab)";

struct Args {
    cmd: String,
    name: String,
    state_root: PathBuf,
    nodes: usize,
    pods: usize,
    backend: String,
    datastore: String,
    segments: usize,
    direct_routing: bool,
    ip_family: String,
    datastore_set: bool,
    nftables: bool,
    json: bool,
    seconds: u32,
    repeat: u32,
    peers: usize,
    heartbeats: u64,
    manifest: Option<PathBuf>,
    backend_set: bool,
    events: usize,
    event_gap_ms: u64,
    network_policy: bool,
    node: Option<String>,
    labels: Option<String>,
    ports: Vec<String>,
    proto: Option<String>,
    port: Option<u16>,
    matrix_ports: Option<String>,
    protos: Option<String>,
    /// After `kubectl`: its arguments, untouched.
    rest: Vec<String>,
}

fn parse(argv: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        cmd: String::new(),
        name: DEFAULT_LAB.into(),
        state_root: PathBuf::from(DEFAULT_STATE_ROOT),
        nodes: 3,
        pods: 2,
        backend: "vxlan".into(),
        datastore: "etcd".into(),
        segments: 1,
        direct_routing: false,
        ip_family: "ipv4".into(),
        datastore_set: false,
        nftables: false,
        json: false,
        seconds: 5,
        repeat: 3,
        peers: 1000,
        heartbeats: 100,
        manifest: None,
        backend_set: false,
        events: 200,
        event_gap_ms: 20,
        network_policy: false,
        node: None,
        labels: None,
        ports: Vec::new(),
        proto: None,
        port: None,
        matrix_ports: None,
        protos: None,
        rest: Vec::new(),
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        if a.cmd == "kubectl" || a.cmd == "ctl" {
            a.rest.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |f: &str| -> anyhow::Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{f} needs a value"))
        };
        let num = |f: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| anyhow!("{f} {v:?}: not a number"))
        };
        match flag {
            "--nodes" => a.nodes = num(flag, value(flag)?)?,
            "--pods-per-node" => a.pods = num(flag, value(flag)?)?,
            "--backend" => {
                a.backend = value(flag)?;
                a.backend_set = true;
            }
            "--manifest" => a.manifest = Some(PathBuf::from(value(flag)?)),
            "--datastore" => {
                a.datastore = value(flag)?;
                a.datastore_set = true;
            }
            "--name" => a.name = value(flag)?,
            "--state-dir" => a.state_root = PathBuf::from(value(flag)?),
            "--json" => a.json = true,
            "--segments" => a.segments = num(flag, value(flag)?)?,
            "--direct-routing" => a.direct_routing = true,
            "--ip-family" => a.ip_family = value(flag)?,
            "--nftables" => a.nftables = true,
            "--repeat" => a.repeat = num(flag, value(flag)?)? as u32,
            "--peers" => a.peers = num(flag, value(flag)?)?,
            "--heartbeats" => a.heartbeats = num(flag, value(flag)?)? as u64,
            "--events" => a.events = num(flag, value(flag)?)?,
            "--event-gap-ms" => a.event_gap_ms = num(flag, value(flag)?)? as u64,
            "--seconds" => a.seconds = num(flag, value(flag)?)? as u32,
            "--network-policy" => a.network_policy = true,
            "--node" => a.node = Some(value(flag)?),
            "--labels" => a.labels = Some(value(flag)?),
            "--port" if a.cmd == "probe" => {
                let v = value(flag)?;
                a.port = Some(
                    v.parse()
                        .map_err(|_| anyhow!("--port {v:?}: a port number"))?,
                )
            }
            "--port" => a.ports.push(value(flag)?),
            "--proto" => a.proto = Some(value(flag)?),
            "--ports" => a.matrix_ports = Some(value(flag)?),
            "--protos" => a.protos = Some(value(flag)?),
            "-h" | "--help" => a.cmd = "help".into(),
            f if f.starts_with('-') => bail!("unknown option {f}"),
            c if a.cmd.is_empty() => a.cmd = c.to_string(),
            word if ["trace", "restart", "pod", "probe", "ping-all"].contains(&a.cmd.as_str()) => {
                a.rest.push(word.to_string())
            }
            extra => bail!("unexpected argument {extra:?}"),
        }
    }
    Ok(a)
}

fn load(a: &Args) -> anyhow::Result<LabState> {
    LabState::load(&state_dir(&a.state_root, &a.name))
}

fn kube_lab(a: &Args) -> anyhow::Result<LabState> {
    let s = load(a)?;
    if s.datastore != "kube" {
        bail!(
            "lab {} keeps its leases in {}: there is no API server (use `up --datastore kube`)",
            s.lab,
            s.datastore
        );
    }
    Ok(s)
}

fn run(a: Args) -> anyhow::Result<bool> {
    match a.cmd.as_str() {
        "up" => cmd_up(a),
        "ping-all" => cmd_ping_all(a),
        "status" => cmd_status(a),
        "ctl" => cmd_ctl(a),
        "restart" => cmd_restart(a),
        "trace" => cmd_trace(a),
        "down" => cmd_down(a),
        "bench-scale" => cmd_bench_scale(a),
        "bench" => cmd_bench(a),
        "kubeconfig" => cmd_kubeconfig(a),
        "kubectl" => cmd_kubectl(a),
        "pod" => cmd_pod(a),
        "probe" => cmd_probe(a),
        "matrix" => cmd_matrix(a),
        "serve" => crate::probe::serve(&crate::pods::SERVED).map(|()| true),
        "help" => cmd_help(),
        "" => bail!("no command given\n{USAGE}"),
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// `up`: builds the lab and prints its nodes, subnets and pods.
fn cmd_up(a: Args) -> anyhow::Result<bool> {
    let ip_family = crate::names::IpFamily::parse(&a.ip_family)?;
    // IPv6 only runs in Kubernetes mode (etcd leases always carry an IPv4 subnet).
    let datastore = if ip_family == crate::names::IpFamily::V6 && !a.datastore_set {
        "kube".to_string()
    } else {
        a.datastore.clone()
    };
    let spec = LabSpec {
        lab: a.name.clone(),
        nodes: a.nodes,
        pods_per_node: a.pods,
        backend: a.backend,
        datastore: crate::cluster::Datastore::parse(&datastore)?,
        segments: a.segments,
        direct_routing: a.direct_routing,
        state_root: a.state_root.clone(),
        manifest: a.manifest.clone(),
        backend_set: a.backend_set,
        ip_family,
        nftables: a.nftables,
        network_policy: a.network_policy,
        ..LabSpec::default()
    };
    let state = up(&spec)?;
    println!(
        "lab {} is up: {} nodes, {} pods",
        state.lab,
        state.nodes.len(),
        state.pods().count()
    );
    for n in &state.nodes {
        let pods: Vec<String> = n
            .pods
            .iter()
            .map(|p| {
                [p.name.as_str(), p.ip.as_str(), p.ip6.as_str()]
                    .iter()
                    .filter(|x| !x.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let subnet = [n.subnet.as_str(), n.subnet6.as_str()]
            .iter()
            .filter(|x| !x.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "  {:8} {:10} subnet {:15} pods: {}",
            n.name,
            n.ip,
            subnet,
            pods.join(", ")
        );
    }
    Ok(true)
}

/// `pod add|del`.
fn cmd_pod(a: Args) -> anyhow::Result<bool> {
    let mut s = load(&a)?;
    match a.rest.as_slice() {
        [verb, key] if verb == "add" => {
            let (namespace, name) = crate::pods::parse_key(key)?;
            let node = a.node.clone().ok_or_else(|| anyhow!("pod add {key}: --node NODE is required"))?;
            let labels = match &a.labels {
                Some(l) => crate::pods::parse_labels(l)?,
                None => Default::default(),
            };
            let ports = a
                .ports
                .iter()
                .map(|p| crate::pods::parse_port(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let p = crate::pods::add(&mut s, crate::pods::NewPod { namespace, name, node, labels, ports })?;
            println!("pod {} on {}: {} {}", p.key(), a.node.unwrap_or_default(), p.ip, p.ip6);
        }
        [verb, key] if verb == "del" => {
            let p = crate::pods::del(&mut s, key)?;
            println!("pod {} removed", p.key());
        }
        _ => bail!("usage: flannel-lab pod add NAMESPACE/NAME --node NODE [--labels k=v,...] [--port NAME=PORT/PROTO]... | pod del NAMESPACE/NAME"),
    }
    Ok(true)
}

/// `probe FROM TO`: one connection; false (exit 1) when it does not go through.
fn cmd_probe(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    let [from, to] = a.rest.as_slice() else {
        bail!(
            "usage: flannel-lab probe FROM TO [--proto tcp|udp] [--port N] [--ip-family ipv4|ipv6]"
        );
    };
    let proto = crate::probe::Proto::parse(a.proto.as_deref().unwrap_or("tcp"))?;
    let port = a.port.unwrap_or(80);
    let v6 = a.ip_family == "ipv6";
    let ok = crate::probe::one(&s, from, to, proto, port, v6)?;
    println!(
        "{from} -> {to} {}/{port}: {}",
        proto.name(),
        if ok { "reachable" } else { "blocked" }
    );
    Ok(ok)
}

/// `matrix`: every ordered pair, every port and protocol asked, in parallel.
fn cmd_matrix(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    let ports = a
        .matrix_ports
        .as_deref()
        .unwrap_or("80,81")
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| anyhow!("--ports {p:?}: port numbers"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let protos = a
        .protos
        .as_deref()
        .unwrap_or("tcp,udp")
        .split(',')
        .map(|p| crate::probe::Proto::parse(p.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let results = crate::probe::matrix(&s, &ports, &protos);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", crate::probe::render(&results));
    }
    Ok(true)
}

/// `ping-all`: every pod pings every other pod, in each family.
fn cmd_ping_all(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    if let Some(from) = a.rest.first() {
        let (_, src) = s.find_pod(from)?;
        let mut ok = true;
        for dst in s.pods().filter(|d| d.key() != src.key()) {
            for addr in [&dst.ip, &dst.ip6].into_iter().filter(|x| !x.is_empty()) {
                let answered = ping::ping(&src.netns, addr);
                ok &= answered;
                println!(
                    "{} -> {} ({addr}): {}",
                    ping::display(src),
                    ping::display(dst),
                    if answered { "ok" } else { "no answer" }
                );
            }
        }
        return Ok(ok);
    }
    let mut ok = true;
    if s.pods().any(|p| !p.ip.is_empty()) {
        let m = ping::ping_all(&s);
        print!("{}", m.render());
        ok &= m.all_ok();
    }
    if ping::has_ipv6(&s) {
        let m6 = ping::ping_all_in(&s, true);
        print!("\nIPv6:\n{}", m6.render());
        ok &= m6.all_ok();
    }
    Ok(ok)
}

/// `status`: nodes, pods, routes, FDB, metrics (or `--json`).
fn cmd_status(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status::to_json(&s))?);
    } else {
        print!("{}", status::render(&s));
    }
    Ok(true)
}

/// `ctl NODE ARGS...`: flannelctl on a node, as an operator runs it there.
fn cmd_ctl(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    let Some((node, args)) = a.rest.split_first() else {
        bail!("ctl needs a node and flannelctl's arguments: flannel-lab ctl node1 doctor");
    };
    let n = s.nodes.iter().find(|n| n.name == *node).ok_or_else(|| {
        anyhow!(
            "no node {node:?} in lab {} (see `flannel-lab status`)",
            s.lab
        )
    })?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = crate::cluster::flannelctl(n, &args)?;
    use std::io::Write;
    std::io::stdout().write_all(&o.stdout)?;
    std::io::stderr().write_all(&o.stderr)?;
    Ok(o.status.success())
}

/// `restart NODE`: flanneld on a node stopped, started, waited for.
fn cmd_restart(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    let [node] = a.rest.as_slice() else {
        bail!("restart needs a node: flannel-lab restart node1");
    };
    let n = s.nodes.iter().find(|n| n.name == *node).ok_or_else(|| {
        anyhow!(
            "no node {node:?} in lab {} (see `flannel-lab status`)",
            s.lab
        )
    })?;
    let before = crate::cluster::ready_count(n);
    crate::cluster::stop_flanneld(n)?;
    drop(crate::cluster::start_flanneld(n)?);
    crate::cluster::wait_ready(n, before)?;
    println!(
        "flanneld on {node} restarted and ready (log: {})",
        n.log.display()
    );
    Ok(true)
}

/// `trace POD POD`: the packet walk, proven by captures.
fn cmd_trace(a: Args) -> anyhow::Result<bool> {
    let s = load(&a)?;
    let [from, to] = a.rest.as_slice() else {
        bail!(
            "trace needs two pods (names or addresses): flannel-lab trace master1-pod1 node1-pod1"
        );
    };
    let r = crate::trace::run(&s, from, to)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", crate::trace::render(&r));
    }
    Ok(r.ok)
}

/// `down`: removes everything the lab made.
fn cmd_down(a: Args) -> anyhow::Result<bool> {
    let removed = down(&a.name, &a.state_root)?;
    println!(
        "lab {}: removed {} namespaces and {}",
        a.name,
        removed.len(),
        state_dir(&a.state_root, &a.name).display()
    );
    Ok(true)
}

/// `bench-scale`: one flanneld facing many peers.
fn cmd_bench_scale(a: Args) -> anyhow::Result<bool> {
    let datastore = crate::cluster::Datastore::parse(&a.datastore)?;
    // Peers are added and deleted with kubectl in kube mode, as an operator would.
    let extra: &[(&str, &str)] = match datastore {
        crate::cluster::Datastore::Kube => &[("kubectl", "kubernetes-client")],
        crate::cluster::Datastore::Etcd => &[],
    };
    crate::preflight::check(&crate::preflight::default_bin_dir(), datastore, extra)?;
    let spec = crate::scale::ScaleSpec {
        lab: a.name.clone(),
        peers: a.peers.max(1),
        datastore,
        heartbeats: a.heartbeats,
        idle: std::time::Duration::from_secs(u64::from(a.seconds.max(1))),
        state_root: a.state_root.clone(),
        bin_dir: crate::preflight::default_bin_dir(),
        events: a.events,
        event_gap: std::time::Duration::from_millis(a.event_gap_ms),
    };
    let row = crate::scale::run(&spec)?;
    print!("{}", crate::scale::render(&[row]));
    Ok(true)
}

/// `bench`: 2-node labs per backend, iperf3 and ping.
fn cmd_bench(a: Args) -> anyhow::Result<bool> {
    crate::preflight::check(
        &crate::preflight::default_bin_dir(),
        crate::cluster::Datastore::Etcd,
        &[("iperf3", "iperf3")],
    )?;
    let spec = crate::bench::BenchSpec {
        seconds: a.seconds.max(1),
        repeat: a.repeat.max(1),
        state_root: a.state_root.clone(),
        bin_dir: crate::preflight::default_bin_dir(),
    };
    let rows = crate::bench::run(&spec, &mut |c| eprintln!("measuring {c} ..."))?;
    print!("{}", crate::bench::render(&rows));
    Ok(true)
}

/// `kubeconfig`: the admin kubeconfig's path (kube mode).
fn cmd_kubeconfig(a: Args) -> anyhow::Result<bool> {
    let s = kube_lab(&a)?;
    println!("{}", s.kubeconfig().display());
    Ok(true)
}

/// `kubectl ARGS...`: kubectl with the lab's kubeconfig, in master1's namespace.
fn cmd_kubectl(a: Args) -> anyhow::Result<bool> {
    let s = kube_lab(&a)?;
    let kc = s.kubeconfig().display().to_string();
    let mut args: Vec<&str> = vec!["--kubeconfig", &kc];
    args.extend(a.rest.iter().map(String::as_str));
    let status = crate::sh::in_ns(&s.nodes[0].netns, "kubectl", &args)
        .status()
        .context("running kubectl (install it: apt-get install kubernetes-client)")?;
    Ok(status.success())
}

/// `help`.
fn cmd_help() -> anyhow::Result<bool> {
    println!("{USAGE}");
    Ok(true)
}

pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match parse(&argv).and_then(run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!(
                "flannel-lab: {}",
                flannel_core::errtext::chain(e.chain().map(|c| c.to_string()))
            );
            ExitCode::from(1)
        }
    }
}
