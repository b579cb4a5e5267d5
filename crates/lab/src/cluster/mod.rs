//! Bringing a lab up and tearing it down.

use crate::cni_exec;
use crate::kube_node::{KubeSetup, NodePod};
use crate::manifest::Manifest;
use crate::names::*;
use crate::nodefs;
use crate::preflight;
use crate::sh::{self, in_ns, ip};
use crate::state::{LabState, NodeState, PodState};
use anyhow::{bail, Context};
use flannel_core::subnet_env::PreviousSubnets;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod build;
use build::build;

/// Where leases live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    /// etcd on master1.
    Etcd,
    /// The Kubernetes API fake on master1 (https://10.0.0.50:6443), flanneld with
    /// `--kube-subnet-mgr`.
    Kube,
}

impl Datastore {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "etcd" => Ok(Self::Etcd),
            "kube" => Ok(Self::Kube),
            other => bail!("--datastore {other}: etcd or kube"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Kube => "kube",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub lab: String,
    pub datastore: Datastore,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub backend: String,
    /// Underlay segments: 1 (all nodes on one bridge) or 2 (odd nodes on 10.0.1.0/24, behind a
    /// router in the switch namespace), to show vxlan `DirectRouting`.
    pub segments: usize,
    pub direct_routing: bool,
    pub state_root: PathBuf,
    pub bin_dir: PathBuf,
    /// Extra flags for every flanneld (e.g. a shorter resync period in tests).
    pub flanneld_args: Vec<String>,
    /// Kube mode: the manifest the nodes run (default: the built-in deploy/kube-flannel.yml).
    pub manifest: Option<PathBuf>,
    /// Kube mode: whether `backend` was asked for (it then replaces the ConfigMap's backend).
    pub backend_set: bool,
    /// IPv4 only, or dual stack (an IPv6 underlay too, `IPv6Network` in the config).
    pub ip_family: IpFamily,
    /// `"EnableNFTables": true` in the network config (etcd mode).
    pub nftables: bool,
    /// Kube mode: `--network-policy` added to the DaemonSet's flanneld arguments.
    pub network_policy: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            lab: DEFAULT_LAB.into(),
            datastore: Datastore::Etcd,
            nodes: 3,
            pods_per_node: 2,
            backend: "vxlan".into(),
            segments: 1,
            direct_routing: false,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            bin_dir: preflight::default_bin_dir(),
            flanneld_args: Vec::new(),
            manifest: None,
            backend_set: false,
            ip_family: IpFamily::V4,
            nftables: false,
            network_policy: false,
        }
    }
}

/// Starts `program args` inside `ns`, detached from us (own process group, output to `log`).
/// The lab's processes are found again by namespace, so no PID bookkeeping is needed.
pub(crate) fn spawn_in_ns(
    ns: &str,
    program: &str,
    args: &[String],
    log: &Path,
) -> anyhow::Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = in_ns(ns, program, &args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {program} in {ns}"))?;
    Ok(child)
}

pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    match flannel_testkit::wait_for(what, timeout, ok) {
        Ok(_) => Ok(()),
        Err(flannel_testkit::wait::WaitError::Failed(e)) => Err(e),
        Err(timed_out) => Err(anyhow::anyhow!("{timed_out}")),
    }
}

/// How many times the node's flanneld has said it is ready (its log is appended to).
pub fn ready_count(n: &NodeState) -> usize {
    std::fs::read_to_string(&n.log)
        .unwrap_or_default()
        .matches("flannel is ready")
        .count()
}

/// Waits (30 s at most) until the node's flanneld says it is ready once more than `before`.
pub fn wait_ready(n: &NodeState, before: usize) -> anyhow::Result<()> {
    wait_until(
        &format!("flanneld on {} to be ready", n.name),
        Duration::from_secs(30),
        || Ok(ready_count(n) > before),
    )
    .with_context(|| log_tail(&n.log))
}

fn log_tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn lab_namespaces(lab: &str) -> anyhow::Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    let prefix = ns_prefix(lab);
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect())
}

fn etcdctl(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut c = in_ns(
        ns,
        "etcdctl",
        &[&["--endpoints", "http://127.0.0.1:2379"][..], args].concat(),
    );
    c.env("ETCDCTL_API", "3");
    sh::run(&mut c)
}

/// The etcd key of the lease for `subnet` (`10.244.1.0/24` → `.../subnets/10.244.1.0-24`).
pub fn lease_key(subnet: &str) -> String {
    format!("{ETCD_PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// Puts a key into the lab's etcd (from master1's namespace).
pub fn etcd_put(state: &LabState, key: &str, value: &str) -> anyhow::Result<()> {
    etcdctl(&state.nodes[0].netns, &["put", key, value]).map(|_| ())
}

pub fn etcd_get(state: &LabState, key: &str) -> anyhow::Result<String> {
    etcdctl(&state.nodes[0].netns, &["get", "--print-value-only", key])
}

pub fn etcd_del(state: &LabState, key: &str) -> anyhow::Result<()> {
    etcdctl(&state.nodes[0].netns, &["del", key]).map(|_| ())
}

/// PIDs of processes in `ns` whose program name is `name`.
fn pids_named(ns: &str, name: &str) -> Vec<i32> {
    flannel_testkit::netns::pids_in(ns)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0)
                        .next()
                        .is_some_and(|a| a.ends_with(name.as_bytes()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Stops the lab's etcd (SIGTERM, then SIGKILL after 10 s): a datastore outage.
pub fn stop_etcd(state: &LabState) -> anyhow::Result<()> {
    let ns = &state.nodes[0].netns;
    for p in pids_named(ns, "etcd") {
        // SAFETY: kill(2) on a PID found in the lab's namespace.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    if wait_until("etcd to exit", Duration::from_secs(10), || {
        Ok(pids_named(ns, "etcd").is_empty())
    })
    .is_err()
    {
        for p in pids_named(ns, "etcd") {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Starts the lab's etcd again on its data and waits until it is healthy.
pub fn start_etcd(state: &LabState) -> anyhow::Result<Child> {
    let ns = &state.nodes[0].netns;
    let child = spawn_in_ns(ns, "etcd", &state.etcd_args, &state.etcd_log)?;
    wait_until("etcd to come back", Duration::from_secs(30), || {
        Ok(etcdctl(ns, &["endpoint", "health"]).is_ok())
    })?;
    Ok(child)
}

/// `kubectl` with the lab's admin kubeconfig, run in master1's namespace (kube mode).
pub fn kubectl(state: &LabState, args: &[&str]) -> anyhow::Result<String> {
    let kc = state.kubeconfig().display().to_string();
    sh::run(&mut in_ns(
        &state.nodes[0].netns,
        "kubectl",
        &[&["--kubeconfig", kc.as_str()][..], args].concat(),
    ))
}

/// Whether the API fake has said it serves since byte `from` of its log (a restarted fake
/// appends to the log of the one before, which said so too).
fn api_serving(state: &LabState, from: usize) -> bool {
    std::fs::read(&state.api_log)
        .map(|l| {
            String::from_utf8_lossy(l.get(from..).unwrap_or_default())
                .lines()
                .any(|x| x.contains("serving https://"))
        })
        .unwrap_or(false)
}

/// Starts the API fake (it loads the objects it saved when stopped) and waits until it serves.
pub fn start_api(state: &LabState) -> anyhow::Result<Child> {
    let (prog, args) = state
        .api_args
        .split_first()
        .context("no API server command line recorded (not a kube-mode lab?)")?;
    let from = std::fs::metadata(&state.api_log).map_or(0, |m| m.len() as usize);
    let mut child = spawn_in_ns(&state.nodes[0].netns, prog, args, &state.api_log)?;
    wait_until("the API fake to serve", Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the API fake exited ({status})");
        }
        Ok(api_serving(state, from))
    })
    .with_context(|| format!("API fake log:\n{}", log_tail(&state.api_log)))?;
    Ok(child)
}

/// Stops the API fake (SIGTERM: it saves its objects; the history is lost, as an API server's
/// watch cache is on a restart).
pub fn stop_api(state: &LabState) -> anyhow::Result<()> {
    signal_named(state, "flannel-kube-fake", libc::SIGTERM);
    wait_until("the API fake to exit", Duration::from_secs(10), || {
        Ok(pids_named(&state.nodes[0].netns, "flannel-kube-fake").is_empty())
    })
}

fn signal_named(state: &LabState, name: &str, sig: i32) {
    for p in pids_named(&state.nodes[0].netns, name) {
        // SAFETY: kill(2) on a PID found in the lab's namespace.
        unsafe { libc::kill(p, sig) };
    }
}

/// Starts the node's flanneld (appending to its log), with its environment and mounts.
/// Dropping the handle leaves it running.
pub fn start_flanneld(n: &NodeState) -> anyhow::Result<Child> {
    let (prog, args) = n
        .flanneld
        .split_first()
        .context("no flanneld command line recorded")?;
    let out = File::options()
        .create(true)
        .append(true)
        .open(&n.log)
        .with_context(|| format!("opening {}", n.log.display()))?;
    let err = out.try_clone()?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = in_ns(&n.netns, prog, &args);
    cmd.envs(n.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    crate::nodefs::apply(&mut cmd, &n.binds)?;
    cmd.spawn()
        .with_context(|| format!("starting {prog} in {}", n.netns))
}

/// The API fake's bearer token: the admin kubeconfig's and every node's service account's.
const LAB_TOKEN: &str = "flannel-lab-token";

/// Where the node's flanneld serves its state, as this machine sees the path: its
/// `--state-socket`, or the default under the node's own `/run/flannel` (kube mode).
pub fn state_socket(n: &NodeState) -> PathBuf {
    let p = n
        .flanneld
        .iter()
        .find_map(|a| a.strip_prefix("--state-socket="))
        .unwrap_or("/run/flannel/flanneld.sock");
    crate::nodefs::host_path(&n.binds, Path::new(p))
}

/// `flannelctl ARGS` beside the node's flanneld, run on the node as an operator runs it there:
/// in its network namespace, against its state socket (kube mode: in the flannel pod's view
/// of the files, as `kubectl exec` gives).
pub fn flannelctl(n: &NodeState, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let flanneld = n.flanneld.first().context("the node runs no flanneld")?;
    let bin = Path::new(flanneld).with_file_name("flannelctl");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &n.netns]).arg(&bin);
    // As `kubectl exec` into the flannel pod: the container's environment too.
    cmd.envs(n.env.iter().map(|(k, v)| (k, v)));
    if n.binds.is_empty() {
        cmd.arg(format!("--state-socket={}", state_socket(n).display()));
        cmd.arg(format!("--subnet-file={}", n.subnet_file.display()));
    } else {
        nodefs::apply(&mut cmd, &n.binds)?;
    }
    cmd.args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

/// flanneld's `--subnet-file`, or its default.
fn subnet_file_of(argv: &[String]) -> String {
    argv.iter()
        .find_map(|a| a.strip_prefix("--subnet-file="))
        .unwrap_or("/run/flannel/subnet.env")
        .to_string()
}

/// Where the lab records the mount points it made on the machine (see `nodefs`).
fn mount_points_file(dir: &Path) -> PathBuf {
    dir.join("mount-points.json")
}

fn record_mount_points(dir: &Path, made: &[PathBuf]) -> anyhow::Result<()> {
    std::fs::write(mount_points_file(dir), serde_json::to_string(made)?)?;
    nodefs::register(dir, made);
    Ok(())
}

/// The PIDs of the node's flanneld processes.
pub fn flanneld_pids(n: &NodeState) -> Vec<i32> {
    pids_named(&n.netns, "flanneld")
}

/// Stops the node's flanneld with SIGTERM and waits for it to exit (SIGKILL after 10 s).
pub fn stop_flanneld(n: &NodeState) -> anyhow::Result<()> {
    let pids = flanneld_pids(n);
    for p in &pids {
        // SAFETY: kill(2) on a PID we just found in the lab's namespace.
        unsafe { libc::kill(*p, libc::SIGTERM) };
    }
    let gone = wait_until("flanneld to exit", Duration::from_secs(10), || {
        Ok(flanneld_pids(n).is_empty())
    });
    if gone.is_err() {
        for p in flanneld_pids(n) {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Builds the whole lab and returns its state (also saved in the state directory). A bad
/// argument, or a lab of that name already there, is an error before anything is made; a
/// failure while building says how to clean up what was made.
pub fn up(spec: &LabSpec) -> anyhow::Result<LabState> {
    check_spec(spec)?;
    let dir = state_dir(&spec.state_root, &spec.lab);
    let existing = lab_namespaces(&spec.lab)?;
    if !existing.is_empty() || dir.exists() {
        bail!(
            "lab {:?} is already up (or left over from a failed run): `flannel-lab status --name {}` shows it, `flannel-lab down --name {}` removes it",
            spec.lab,
            spec.lab,
            spec.lab
        );
    }
    build(spec, &dir).with_context(|| {
        format!(
            "`flannel-lab up` failed; run `flannel-lab down --name {}` to clean up",
            spec.lab
        )
    })
}

/// The arguments of `up`, checked before anything is made.
pub fn check_spec(spec: &LabSpec) -> anyhow::Result<()> {
    if !valid_lab_name(&spec.lab) {
        bail!(
            "lab name {:?}: use up to 20 letters, digits or _, starting with a letter",
            spec.lab
        );
    }
    if spec.nodes == 0 || spec.nodes > 200 {
        bail!("--nodes {}: must be between 1 and 200", spec.nodes);
    }
    if !BACKENDS.contains(&spec.backend.as_str()) {
        bail!(
            "--backend {}: the lab runs {}",
            spec.backend,
            BACKENDS.join(", ")
        );
    }
    if !(1..=2).contains(&spec.segments) {
        bail!("--segments {}: 1 or 2", spec.segments);
    }
    // `dual` here: the lab has an IPv6 underlay and IPv6 pods (dual stack or IPv6 only).
    let dual = spec.ip_family.has_v6();
    let v4 = spec.ip_family.has_v4();
    if dual && (spec.segments > 1 || spec.backend == "udp") {
        bail!("--ip-family {:?}: this lab builds IPv6 on one segment, with the vxlan, host-gw or wireguard backend", spec.ip_family);
    }
    if spec.network_policy && spec.datastore == Datastore::Etcd {
        bail!("--network-policy runs with --datastore kube: flanneld reads NetworkPolicies, Pods and Namespaces from the Kubernetes API");
    }
    if !v4 && spec.datastore == Datastore::Etcd {
        bail!("--ip-family ipv6 runs with --datastore kube: flannel's etcd leases always carry an IPv4 subnet");
    }
    preflight::check(&spec.bin_dir, spec.datastore, &[])
}

/// Removes everything lab `lab` made: processes in its namespaces, the namespaces (and with them
/// every veth and bridge), its state directory. Works after a failed or interrupted `up`.
pub fn down(lab: &str, state_root: &Path) -> anyhow::Result<Vec<String>> {
    if !valid_lab_name(lab) {
        bail!("lab name {lab:?} is not valid");
    }
    let namespaces = lab_namespaces(lab)?;
    let pids_of = |ns: &str| -> Vec<i32> {
        ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let signal_all = |sig: i32| {
        let mut any = false;
        for ns in &namespaces {
            for pid in pids_of(ns) {
                // SAFETY: kill(2) with a PID read from `ip netns pids`; no memory is involved.
                unsafe { libc::kill(pid, sig) };
                any = true;
            }
        }
        any
    };
    if signal_all(libc::SIGTERM) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && namespaces.iter().any(|ns| !pids_of(ns).is_empty()) {
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_all(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut errors = Vec::new();
    for ns in &namespaces {
        if let Err(e) = ip(&["netns", "del", ns]) {
            errors.push(e.to_string());
        }
    }
    let dir = state_dir(state_root, lab);
    if let Ok(text) = std::fs::read_to_string(mount_points_file(&dir)) {
        let made: Vec<PathBuf> = serde_json::from_str(&text).unwrap_or_default();
        nodefs::remove_mount_points(&dir, &made);
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    // The state root too, when no other lab lives there (remove_dir only removes empty ones).
    let _ = std::fs::remove_dir(state_root);
    if !errors.is_empty() {
        bail!("down left something behind: {}", errors.join("; "));
    }
    Ok(namespaces)
}
