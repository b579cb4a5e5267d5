//! The startup sequence, the same for every datastore (upstream `main.go`): network config,
//! interface, backend, lease, traffic rules, a first reconcile, subnet.env, ready; then the
//! daemon runs. Waits (etcd away, no config yet, no podCIDR yet) are said once per distinct
//! problem and end on SIGTERM/SIGINT like the daemon.

use crate::daemon::{renew_deadline, Daemon, Trigger};
use crate::drift::{ClaimWatch, ConfigDrift};
use crate::health;
use crate::iface;
use crate::metrics::Metrics;
use crate::signals::Shutdown;
use crate::skiplog::{ConflictLog, SkipLog};
use anyhow::{bail, Context};
use flannel_backend::{AnyBackend, Backend, BackendConfig};
use flannel_cli::Options;
use flannel_core::iface::Families;
use flannel_core::state::{DatastoreAccess, RunsAs};
use flannel_core::subnet_env::{PreviousSubnets, SubnetEnv};
use flannel_core::NetworkConfig;
use flannel_net::firewall::{self, FamilyNets, FirewallConfig, IptablesManager, TrafficManager};
use flannel_net::Netlink;
use flannel_subnet::etcd::EtcdSubnetManager;
use flannel_subnet::kube::KubeSubnetManager;
use flannel_subnet::{LeaseEvent, LeaseSet, OwnLease, SubnetError, SubnetManager};
use ipnet::IpNet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Retry pause while the datastore is unreachable or the config is missing (upstream: 1 s).
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// Retry pause while the lease cannot be had yet (no podCIDR).
const LEASE_RETRY: Duration = Duration::from_secs(2);
/// A wait that goes on is said again this often.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Runs `fut` until it ends or a signal arrives (`None`).
async fn or_signal<T>(stop: &mut Shutdown, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        name = stop.recv() => {
            info!("{name} while starting: exiting");
            None
        }
    }
}

/// Says a waiting problem once, again when it changes, and every [`REMIND_EVERY`].
#[derive(Default)]
struct WaitLog {
    last: String,
    said_at: Option<tokio::time::Instant>,
}

impl WaitLog {
    fn say(&mut self, problem: String) {
        let due = self.said_at.is_none_or(|t| t.elapsed() >= REMIND_EVERY);
        if problem != self.last || due {
            warn!("{problem}");
            self.last = problem;
            self.said_at = Some(tokio::time::Instant::now());
        }
    }
}

async fn wait_for_config(sm: &impl SubnetManager) -> NetworkConfig {
    let at = sm.config_location();
    let mut log = WaitLog::default();
    loop {
        let problem = match sm.get_network_config().await {
            Ok(Some(text)) => match sm.parse_config(&text) {
                Ok(c) => return c,
                Err(e) => format!("invalid network config at {at}: {e}"),
            },
            Ok(None) => format!(
                "waiting for the network config: {}",
                sm.config_missing_hint()
            ),
            Err(e) => format!("waiting for {}: {e}", datastore_name(&at)),
        };
        log.say(problem);
        tokio::time::sleep(CONFIG_RETRY).await;
    }
}

fn datastore_name(config_location: &str) -> &'static str {
    if config_location.starts_with('/') && !config_location.contains("/config") {
        "the network config file"
    } else {
        "etcd"
    }
}

/// Runs `op` until it gives something other than [`SubnetError::NotYet`], saying why it
/// waits (once, and every minute).
async fn until_ready<T, F: Future<Output = Result<T, SubnetError>>>(
    op: impl Fn() -> F,
) -> Result<T, SubnetError> {
    let mut log = WaitLog::default();
    loop {
        match op().await {
            Err(SubnetError::NotYet(why)) => log.say(why),
            other => return other,
        }
        tokio::time::sleep(LEASE_RETRY).await;
    }
}

/// Upstream refuses to start in iptables mode without br_netfilter: bridged pod traffic would
/// bypass the FORWARD rules.
fn check_br_netfilter(cfg: &NetworkConfig) -> anyhow::Result<()> {
    if cfg.enable_nftables {
        return Ok(());
    }
    let need = [
        (cfg.enable_ipv4, "bridge-nf-call-iptables"),
        (cfg.enable_ipv6, "bridge-nf-call-ip6tables"),
    ];
    for (on, knob) in need {
        let p = format!("/proc/sys/net/bridge/{knob}");
        if on && !std::path::Path::new(&p).exists() {
            bail!("{p} does not exist: load the br_netfilter module (modprobe br_netfilter), or set \"EnableNFTables\": true");
        }
    }
    Ok(())
}

/// The families the firewall works on, from the config and our lease.
fn family_nets(cfg: &NetworkConfig, own: &OwnLease) -> Vec<FamilyNets> {
    FamilyNets::of(
        cfg.network
            .filter(|_| cfg.enable_ipv4)
            .map(|n| (n, own.lease.subnet)),
        cfg.ipv6_network
            .filter(|_| cfg.enable_ipv6)
            .zip(own.lease.ipv6_subnet),
    )
}

/// Installs the masquerade and forward rules (after recycling the previous network's).
async fn setup_firewall(
    cfg: FirewallConfig,
    nftables: bool,
    previous: &PreviousSubnets,
) -> anyhow::Result<Arc<dyn TrafficManager>> {
    // The same from the previous run's subnet.env, for recycling old rules.
    let old = FamilyNets::of(
        previous.network.zip(previous.subnet),
        previous.ipv6_network.zip(previous.ipv6_subnet),
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<dyn TrafficManager>> {
        if !nftables {
            IptablesManager::new(&cfg).recycle(&old, &cfg.families);
        }
        let m: Arc<dyn TrafficManager> = Arc::from(firewall::manager(&cfg, nftables));
        m.setup()
            .with_context(|| format!("installing {} rules", m.name()))?;
        Ok(m)
    })
    .await?
}

/// flanneld with the datastore the options choose.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let mut stop = Shutdown::listen().context("listening for SIGTERM and SIGINT")?;
    let previous = PreviousSubnets::read(&o.subnet_file);
    match o.kube.clone() {
        Some(k) => {
            let Some(sm) = or_signal(&mut stop, KubeSubnetManager::connect(k)).await else {
                return Ok(());
            };
            let sm = sm?;
            info!(server = %sm.server(), "using the Kubernetes API as datastore");
            run_with(o, Arc::new(sm), previous, stop).await
        }
        None => {
            let connect = EtcdSubnetManager::connect(&o.etcd, previous.clone());
            let Some(sm) = or_signal(&mut stop, connect).await else {
                return Ok(());
            };
            run_with(o, Arc::new(sm?), previous, stop).await
        }
    }
}

/// The startup sequence over any datastore, then the daemon until a signal.
pub async fn run_with<SM: SubnetManager>(
    o: Options,
    sm: Arc<SM>,
    previous: PreviousSubnets,
    mut stop: Shutdown,
) -> anyhow::Result<()> {
    let nl = Netlink::new().context("opening a netlink socket")?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new();
    let _health = match o.healthz {
        Some(addr) => Some(
            health::start(addr, ready.clone(), metrics.clone())
                .await
                .with_context(|| format!("starting the health server on {addr}"))?,
        ),
        None => None,
    };
    // The state socket answers from the start (503 for /state until the daemon runs).
    let (state_tx, state_rx) = tokio::sync::mpsc::channel(16);
    let _socket = match &o.state_socket {
        Some(path) => Some(crate::state_socket::start(
            path,
            ready.clone(),
            metrics.clone(),
            state_tx,
        )?),
        None => None,
    };

    let Some(config) = or_signal(&mut stop, wait_for_config(sm.as_ref())).await else {
        return Ok(());
    };
    let at = sm.config_location();
    // None in an IPv6-only network (`EnableIPv4: false`).
    let network = match (config.enable_ipv4, config.network) {
        (false, _) => None,
        (true, Some(n)) => Some(n),
        (true, None) => bail!("the network config at {at} has no IPv4 Network (set \"EnableIPv4\": false for an IPv6-only network)"),
    };
    check_br_netfilter(&config)?;
    let backend_cfg = BackendConfig::from_network(&config)
        .with_context(|| format!("reading the Backend of the network config at {at}"))?;
    metrics.set_backend(backend_cfg.type_name());
    let families = Families {
        v4: config.enable_ipv4,
        v6: config.enable_ipv6,
    };
    let Some(overrides) = or_signal(&mut stop, until_ready(|| sm.public_ip_override())).await
    else {
        return Ok(());
    };
    let overrides = overrides.context("reading this node's public IP settings")?;
    let mut o = o;
    if let Some(ip) = overrides.v4 {
        info!(public_ip = %ip, "the datastore sets this node's public IP");
        o.public_ip = Some(ip);
    }
    if let Some(ip) = overrides.v6 {
        info!(public_ipv6 = %ip, "the datastore sets this node's public IPv6");
        o.public_ipv6 = Some(ip);
    }
    let ext = iface::select(&nl, &o, families).await?;
    info!(iface = %ext.name, iface_addr = %ext.iface_addr, public_ip = %ext.ext_addr, public_ipv6 = ?ext.ext_v6_addr, mtu = ext.mtu, "using interface");

    let stored = sm.stored_vtep_macs(ext.ext_addr).await;
    let nets = flannel_backend::vxlan::VxlanNetworks {
        v4: network.map(|n| (n, stored.v4)),
        v6: config
            .ipv6_network
            .filter(|_| config.enable_ipv6)
            .map(|n| (n, stored.v6)),
    };
    let mut node = flannel_core::state::NodeInfo {
        backend: backend_cfg.type_name().into(),
        iface: ext.name.clone(),
        iface_mtu: ext.mtu,
        public_ip: Some(ext.ext_addr.into()).filter(|_| config.enable_ipv4),
        public_ipv6: ext.ext_v6_addr.map(Into::into),
        subnet_file: o.subnet_file.display().to_string(),
        datastore: sm.datastore(),
        firewall: if config.enable_nftables {
            "nftables"
        } else {
            "iptables"
        }
        .into(),
        ip_masq: o.ip_masq,
        forward_rules: o.forward_rules,
        fully_random_disable: o.ip_masq_fully_random_disable,
        access: Some(datastore_access(&o, &sm.datastore())),
        runs_as: runs_as(&o, &|k| std::env::var(k).ok()),
        ..Default::default()
    };
    let backend_type = backend_cfg.type_name();
    let backend = AnyBackend::register(backend_cfg, nl.clone(), ext, nets)
        .await
        .with_context(|| format!("setting up the {backend_type} backend (config at {at})"))?;
    let attrs = backend.lease_attrs();
    let Some(own) = or_signal(&mut stop, until_ready(|| sm.acquire_lease(&config, &attrs))).await
    else {
        return Ok(());
    };
    let own = own.context("acquiring a subnet lease")?;
    info!(subnet = %own.lease.subnet, ipv6_subnet = ?own.lease.ipv6_subnet, lease = %sm.describe(&own.owner), "lease acquired");

    let fw_cfg = FirewallConfig {
        families: family_nets(&config, &own),
        ip_masq: o.ip_masq,
        forward: o.forward_rules,
        fully_random_disable: o.ip_masq_fully_random_disable,
    };
    let fw = setup_firewall(fw_cfg, config.enable_nftables, &previous).await?;

    // Program the peers we already know before telling the CNI plugin we are ready.
    let networks = [
        network.map(IpNet::V4),
        config
            .ipv6_network
            .filter(|_| config.enable_ipv6)
            .map(IpNet::V6),
    ];
    let mut leases = LeaseSet::with_own(
        own.owner.clone(),
        own.lease.key(),
        networks.into_iter().flatten().collect(),
    );
    match sm.list_leases().await {
        Ok(l) => leases.apply(LeaseEvent::Snapshot(l)),
        Err(e) => warn!(error = %e, "listing leases failed; peers come with the watch"),
    }
    let renew_at = renew_deadline(&own, o.renew_margin);
    let (backend_mtu, backend_devices) = (backend.mtu(), backend.devices());
    let mut d = Daemon {
        nl,
        backend,
        fw,
        own,
        leases,
        renew_at,
        last_report: Default::default(),
        metrics,
        state_requests: o.state_socket.is_some().then_some(state_rx),
        node: {
            node.mtu = backend_mtu;
            node.devices = backend_devices;
            node
        },
        config_json: config_json(&config),
        skips: SkipLog::default(),
        conflicts: ConflictLog::default(),
        drift: ConfigDrift::new(config.clone()),
        claims: ClaimWatch::default(),
        families: [
            (config.enable_ipv4, flannel_core::Family::V4),
            (config.enable_ipv6, flannel_core::Family::V6),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect(),
        sm,
        opts: o,
    };
    if let Some(c) = d.backend.datapath_counters() {
        d.metrics.watch_datapath(c);
    }
    d.metrics.lease_renewed_for(d.own.ttl);
    d.count_leases();
    d.report_conflicts();
    d.reconcile(Trigger::Start).await;
    release_startup_memory();

    let env = SubnetEnv {
        v4: network.map(|n| (n, d.own.lease.subnet)),
        v6: config
            .ipv6_network
            .zip(d.own.lease.ipv6_subnet)
            .filter(|_| config.enable_ipv6),
        mtu: d.backend.mtu(),
        ipmasq: d.opts.ip_masq,
    };
    let file = &d.opts.subnet_file;
    env.write_atomic(file)
        .with_context(|| format!("writing {}", file.display()))?;
    ready.store(true, Ordering::SeqCst);
    info!(file = %file.display(), "wrote subnet file; flannel is ready");
    if let Err(e) = d.sm.complete_lease(&d.own).await {
        warn!(error = %e, "completing the lease failed");
    }
    d.run(stop).await
}

/// How flannelctl reaches our datastore: our flags, without the password.
fn datastore_access(o: &Options, datastore: &str) -> DatastoreAccess {
    match &o.kube {
        Some(k) => DatastoreAccess::Kubernetes {
            kubeconfig: k.source.kubeconfig.clone(),
            api_url: k.source.api_url.clone(),
            server: datastore
                .strip_prefix("kubernetes ")
                .unwrap_or(datastore)
                .to_string(),
            annotation_prefix: k.annotation_prefix.clone(),
        },
        None => DatastoreAccess::Etcd {
            endpoints: o.etcd.endpoints.clone(),
            prefix: o.etcd.prefix.clone(),
            keyfile: o.etcd.keyfile.clone(),
            certfile: o.etcd.certfile.clone(),
            cafile: o.etcd.cafile.clone(),
            username: o.etcd.username.clone(),
        },
    }
}

/// How this flanneld is run, from its environment: the lab says so (`FLANNEL_LAB_STATE_DIR`),
/// the DaemonSet's pod has its name (`POD_NAME`) or in-cluster settings in kube mode, systemd
/// sets `INVOCATION_ID` for its units.
pub fn runs_as(o: &Options, env: &dyn Fn(&str) -> Option<String>) -> RunsAs {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    if set("FLANNEL_LAB_STATE_DIR") {
        RunsAs::Lab
    } else if o.kube.is_some() && (set("POD_NAME") || set("KUBERNETES_SERVICE_HOST")) {
        RunsAs::DaemonSet
    } else if set("INVOCATION_ID") {
        RunsAs::Systemd
    } else {
        RunsAs::Process
    }
}

/// The network config as the state snapshot shows it (upstream's key names).
fn config_json(c: &NetworkConfig) -> serde_json::Value {
    serde_json::json!({
        "Network": c.network.map(|n| n.to_string()),
        "IPv6Network": c.ipv6_network.map(|n| n.to_string()),
        "EnableIPv4": c.enable_ipv4,
        "EnableIPv6": c.enable_ipv6,
        "EnableNFTables": c.enable_nftables,
        "SubnetLen": c.subnet_len,
        "IPv6SubnetLen": c.ipv6_subnet_len,
        "Backend": c.backend,
    })
}

/// Gives the memory of the first listing back to the system. Reading thousands of peers (in
/// kube mode ~10 KB of JSON each) leaves freed pages inside the heap that the allocator keeps;
/// flanneld then runs for months at that size.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live data.
    unsafe {
        libc::malloc_trim(0);
    }
}
