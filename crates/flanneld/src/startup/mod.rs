//! The startup sequence, the same for every datastore (upstream `main.go`): network config,
//! interface, backend, lease, traffic rules, a first reconcile, subnet.env, ready; then the
//! daemon runs. Waits (etcd away, no config yet, no podCIDR yet) are said once per distinct
//! problem and end on SIGTERM/SIGINT like the daemon.

use crate::daemon::{renew_deadline, Daemon, Trigger};
use crate::drift::{ClaimWatch, ConfigDrift};
use crate::health;
use crate::iface;
mod describe;
use crate::metrics::Metrics;
use crate::policy::table::NftPolicyTable;
use crate::signals::Shutdown;
use crate::skiplog::{ConflictLog, SkipLog};
use anyhow::{bail, Context};
pub use describe::runs_as;
use flannel_backend::{AnyBackend, Backend, BackendConfig, ExternalInterface};
use flannel_cli::Options;
use flannel_core::iface::Families;
use flannel_core::state::NodeInfo;
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
struct WaitLog(flannel_core::say_once::SayOnce);

impl Default for WaitLog {
    fn default() -> Self {
        Self(flannel_core::say_once::SayOnce::reminding(REMIND_EVERY))
    }
}

impl WaitLog {
    fn say(&mut self, problem: String) {
        if self.0.problem(&problem, std::time::Instant::now()) {
            warn!("{problem}");
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
    let table = Arc::new(NftPolicyTable);
    if !o.network_policy {
        crate::policy::remove_leftover(table.clone()).await;
    }
    match o.kube.clone() {
        Some(k) => {
            let Some(sm) = or_signal(&mut stop, KubeSubnetManager::connect(k)).await else {
                return Ok(());
            };
            let sm = Arc::new(sm?);
            info!(server = %sm.server(), "using the Kubernetes API as datastore");
            // Policy runs beside the daemon from the start (pods may exist before our
            // lease), once the metrics it counts repairs in exist.
            let policy = o.network_policy.then_some((sm.clone(), table, o.resync));
            let with_policy = move |metrics: &Arc<Metrics>| {
                policy.map(|(sm, table, resync)| {
                    crate::policy::spawn(sm, table, resync, metrics.clone())
                })
            };
            run_with(o, sm, previous, stop, with_policy).await
        }
        None => {
            let connect = EtcdSubnetManager::connect(&o.etcd, previous.clone());
            let Some(sm) = or_signal(&mut stop, connect).await else {
                return Ok(());
            };
            run_with(o, Arc::new(sm?), previous, stop, |_| None).await
        }
    }
}

/// The startup sequence over any datastore, then the daemon until a signal. Each phase is a
/// function below, in order; a signal while one waits ends startup cleanly (`Ok`).
pub async fn run_with<SM: SubnetManager>(
    o: Options,
    sm: Arc<SM>,
    previous: PreviousSubnets,
    mut stop: Shutdown,
    beside: impl FnOnce(&Arc<Metrics>) -> Option<crate::policy::Running>,
) -> anyhow::Result<()> {
    let nl = Netlink::new().context("opening a netlink socket")?;
    let serving = serve_status(&o).await?;
    // What runs beside the daemon for its whole life (network policy), stopped with it.
    let _beside = beside(&serving.metrics);
    serving.metrics.watch_datastore(sm.stats());
    let Some(plan) = or_signal(&mut stop, wait_for_config(sm.as_ref())).await else {
        return Ok(());
    };
    let plan = NetworkPlan::check(plan, &sm.config_location())?;
    serving.metrics.set_backend(plan.backend.type_name());
    let Some(o) = datastore_overrides(o, sm.as_ref(), &mut stop).await? else {
        return Ok(());
    };
    let ext = iface::select(&nl, &o, plan.families()).await?;
    info!(iface = %ext.name, iface_addr = %ext.iface_addr, public_ip = %ext.ext_addr, public_ipv6 = ?ext.ext_v6_addr, mtu = ext.mtu, "using interface");
    let node = describe::node_info(
        &o,
        sm.as_ref(),
        &plan.config,
        plan.backend.type_name(),
        &ext,
    );
    let backend = register_backend(&plan, sm.as_ref(), nl.clone(), ext).await?;
    let attrs = backend.lease_attrs();
    let acquire = until_ready(|| sm.acquire_lease(&plan.config, &attrs));
    let Some(own) = or_signal(&mut stop, acquire).await else {
        return Ok(());
    };
    let own = own.context("acquiring a subnet lease")?;
    info!(subnet = %own.lease.subnet, ipv6_subnet = ?own.lease.ipv6_subnet, lease = %sm.describe(&own.owner), "lease acquired");
    let fw_cfg = FirewallConfig {
        families: family_nets(&plan.config, &own),
        ip_masq: o.ip_masq,
        forward: o.forward_rules,
        fully_random_disable: o.ip_masq_fully_random_disable,
    };
    let fw = setup_firewall(fw_cfg, plan.config.enable_nftables, &previous).await?;
    let leases = known_leases(&plan, sm.as_ref(), &own).await;
    let mut d = Daemon {
        renew_at: renew_deadline(&own, o.renew_margin),
        node: NodeInfo {
            mtu: backend.mtu(),
            devices: backend.devices(),
            ..node
        },
        nl,
        backend,
        fw,
        own,
        leases,
        last_report: Default::default(),
        metrics: serving.metrics.clone(),
        state_requests: serving.state_requests,
        config_json: describe::config_json(&plan.config),
        skips: SkipLog::default(),
        conflicts: ConflictLog::default(),
        drift: ConfigDrift::new(plan.config.clone()),
        claims: ClaimWatch::default(),
        families: plan.kernel_families(),
        sm,
        opts: o,
    };
    first_pass(&mut d).await;
    announce_ready(&d, &plan, &serving.ready).await?;
    d.run(stop).await
}

/// What startup serves before the daemon runs: health and metrics, the state socket (503
/// until ready). The guards keep them up for the daemon's life.
struct Serving {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    state_requests: Option<tokio::sync::mpsc::Receiver<crate::state_socket::StateRequest>>,
    _health: Option<tokio::task::JoinHandle<()>>,
    _socket: Option<crate::state_socket::SocketFile>,
}

async fn serve_status(o: &Options) -> anyhow::Result<Serving> {
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new();
    let health = match o.healthz {
        Some(addr) => Some(
            health::start(addr, ready.clone(), metrics.clone())
                .await
                .with_context(|| format!("starting the health server on {addr}"))?,
        ),
        None => None,
    };
    let (state_tx, state_rx) = tokio::sync::mpsc::channel(16);
    let socket = match &o.state_socket {
        Some(path) => Some(crate::state_socket::start(
            path,
            ready.clone(),
            metrics.clone(),
            state_tx,
        )?),
        None => None,
    };
    Ok(Serving {
        state_requests: socket.is_some().then_some(state_rx),
        ready,
        metrics,
        _health: health,
        _socket: socket,
    })
}

/// The network config, checked for what this node needs, and its backend's typed config.
struct NetworkPlan {
    config: NetworkConfig,
    /// `None` in an IPv6-only network (`EnableIPv4: false`).
    network: Option<ipnet::Ipv4Net>,
    /// `None` unless IPv6 is enabled.
    ipv6_network: Option<ipnet::Ipv6Net>,
    backend: BackendConfig,
    /// Where the config lives, for errors.
    at: String,
}

impl NetworkPlan {
    fn check(config: NetworkConfig, at: &str) -> anyhow::Result<Self> {
        let network = match (config.enable_ipv4, config.network) {
            (false, _) => None,
            (true, Some(n)) => Some(n),
            (true, None) => bail!("the network config at {at} has no IPv4 Network (set \"EnableIPv4\": false for an IPv6-only network)"),
        };
        check_br_netfilter(&config)?;
        let backend = BackendConfig::from_network(&config)
            .with_context(|| format!("reading the Backend of the network config at {at}"))?;
        Ok(Self {
            network,
            ipv6_network: config.ipv6_network.filter(|_| config.enable_ipv6),
            backend,
            at: at.to_string(),
            config,
        })
    }

    fn families(&self) -> Families {
        Families {
            v4: self.config.enable_ipv4,
            v6: self.config.enable_ipv6,
        }
    }

    /// The address families whose kernel notifications concern us.
    fn kernel_families(&self) -> Vec<flannel_core::Family> {
        [
            (self.config.enable_ipv4, flannel_core::Family::V4),
            (self.config.enable_ipv6, flannel_core::Family::V6),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect()
    }
}

/// The public addresses the datastore prescribes (Kubernetes annotations) replace the flags';
/// `None` when a signal came while waiting for the datastore.
async fn datastore_overrides(
    mut o: Options,
    sm: &impl SubnetManager,
    stop: &mut Shutdown,
) -> anyhow::Result<Option<Options>> {
    let Some(overrides) = or_signal(stop, until_ready(|| sm.public_ip_override())).await else {
        return Ok(None);
    };
    let overrides = overrides.context("reading this node's public IP settings")?;
    if let Some(ip) = overrides.v4 {
        info!(public_ip = %ip, "the datastore sets this node's public IP");
        o.public_ip = Some(ip);
    }
    if let Some(ip) = overrides.v6 {
        info!(public_ipv6 = %ip, "the datastore sets this node's public IPv6");
        o.public_ipv6 = Some(ip);
    }
    Ok(Some(o))
}

/// Sets up the backend on `ext`, keeping the VTEP MACs our previous lease published.
async fn register_backend(
    plan: &NetworkPlan,
    sm: &impl SubnetManager,
    nl: Netlink,
    ext: ExternalInterface,
) -> anyhow::Result<AnyBackend> {
    let stored = sm.stored_vtep_macs(ext.ext_addr).await;
    let nets = flannel_backend::vxlan::VxlanNetworks {
        v4: plan.network.map(|n| (n, stored.v4)),
        v6: plan.ipv6_network.map(|n| (n, stored.v6)),
    };
    let backend_type = plan.backend.type_name();
    AnyBackend::register(plan.backend.clone(), nl, ext, nets)
        .await
        .with_context(|| {
            format!(
                "setting up the {backend_type} backend (config at {})",
                plan.at
            )
        })
}

/// The leases the datastore holds now, so that the peers we already know are programmed
/// before the CNI plugin is told we are ready.
async fn known_leases(plan: &NetworkPlan, sm: &impl SubnetManager, own: &OwnLease) -> LeaseSet {
    let networks = [
        plan.network.map(IpNet::V4),
        plan.ipv6_network.map(IpNet::V6),
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
    leases
}

/// Counters from the start, then the first full pass over the kernel.
async fn first_pass<SM: SubnetManager>(d: &mut Daemon<SM>) {
    if let Some(c) = d.backend.datapath_counters() {
        d.metrics.watch_datapath(c);
    }
    d.metrics.lease_renewed_for(d.own.ttl);
    d.count_leases();
    d.report_conflicts();
    d.reconcile(Trigger::Start).await;
    release_startup_memory();
}

/// subnet.env written, ready said (health, state socket), the lease completed (Kubernetes:
/// the node's network marked available).
async fn announce_ready<SM: SubnetManager>(
    d: &Daemon<SM>,
    plan: &NetworkPlan,
    ready: &AtomicBool,
) -> anyhow::Result<()> {
    let env = SubnetEnv {
        v4: plan.network.map(|n| (n, d.own.lease.subnet)),
        v6: plan.ipv6_network.zip(d.own.lease.ipv6_subnet),
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
    Ok(())
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
