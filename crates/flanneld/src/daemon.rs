//! The flanneld startup sequence and main loop: config, interface, backend, lease, rules,
//! subnet.env, then watch + reconcile + renew until a signal.

use crate::health;
use crate::iface;
use crate::options::Options;
use anyhow::{bail, Context};
use flannel_backend::AnyBackend;
use flannel_backend::Backend;
use flannel_core::iface::Families;
use flannel_core::lease::VxlanData;
use flannel_core::subnet_env::{PreviousSubnets, SubnetEnv};
use flannel_core::{MacAddr, NetworkConfig};
use flannel_net::firewall::{self, FamilyNets, FirewallConfig, IptablesManager, TrafficManager};
use flannel_net::Netlink;
use flannel_subnet::etcd::EtcdSubnetManager;
use flannel_subnet::{LeaseEvent, LeaseSet, OwnLease, SubnetError, SubnetManager};
use ipnet::IpNet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

/// Retry pause while etcd is unreachable or the config is missing (upstream: 1 s).
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// Retry pause after a failed renewal (upstream: 1 minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);

async fn wait_for_config(sm: &EtcdSubnetManager) -> anyhow::Result<NetworkConfig> {
    let key = sm.config_key();
    let mut last_problem = String::new();
    loop {
        let problem = match sm.get_network_config().await {
            Ok(Some(text)) => match NetworkConfig::parse_and_check(&text) {
                Ok(c) => return Ok(c),
                Err(e) => format!("invalid network config at {key}: {e}"),
            },
            Ok(None) => format!(
                "waiting for the network config: {key} does not exist in etcd (create it with `etcdctl put {key} '{{\"Network\": \"10.244.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'`)"
            ),
            Err(e) => format!("waiting for etcd: {e}"),
        };
        // Say it once per distinct problem, not once a second.
        if problem != last_problem {
            warn!("{problem}");
            last_problem = problem;
        }
        tokio::time::sleep(CONFIG_RETRY).await;
    }
}

/// The VtepMAC our public IP published before, so a recreated device keeps the MAC peers know.
async fn previous_vtep_mac(sm: &EtcdSubnetManager, public_ip: Ipv4Addr) -> Option<MacAddr> {
    let l = sm.list().await.ok()?;
    l.entries
        .iter()
        .find(|e| e.lease.attrs.public_ip == public_ip && e.lease.attrs.backend_type == "vxlan")
        .and_then(|e| e.lease.attrs.backend_data.as_ref())
        .and_then(|d| VxlanData::from_raw(d).ok())
        .map(|d| d.vtep_mac)
}

fn renew_deadline(own: &OwnLease, margin: Duration) -> Instant {
    // A reservation never expires: check again in a day, harmlessly.
    let ttl = own.ttl.min(Duration::from_secs(86400 * 365));
    Instant::now() + ttl.saturating_sub(margin).max(Duration::from_secs(1))
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
    let mut v = Vec::new();
    if let (true, Some(n)) = (cfg.enable_ipv4, cfg.network) {
        v.push(FamilyNets {
            cluster: IpNet::V4(n),
            pod: IpNet::V4(own.lease.subnet),
        });
    }
    if let (true, Some(n), Some(s)) = (cfg.enable_ipv6, cfg.ipv6_network, own.lease.ipv6_subnet) {
        v.push(FamilyNets {
            cluster: IpNet::V6(n),
            pod: IpNet::V6(s),
        });
    }
    v
}

/// The same from the previous run's subnet.env, for recycling old rules.
fn previous_nets(p: &PreviousSubnets) -> Vec<FamilyNets> {
    let mut v = Vec::new();
    if let (Some(n), Some(s)) = (p.network, p.subnet) {
        v.push(FamilyNets {
            cluster: IpNet::V4(n),
            pod: IpNet::V4(s),
        });
    }
    if let (Some(n), Some(s)) = (p.ipv6_network, p.ipv6_subnet) {
        v.push(FamilyNets {
            cluster: IpNet::V6(n),
            pod: IpNet::V6(s),
        });
    }
    v
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let previous = PreviousSubnets::read(&o.subnet_file);
    let sm = Arc::new(EtcdSubnetManager::connect(&o.etcd, previous.clone()).await?);
    let nl = Netlink::new().context("opening a netlink socket")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let ready = Arc::new(AtomicBool::new(false));
    let _health = match o.healthz {
        Some(addr) => Some(
            health::start(addr, ready.clone())
                .await
                .with_context(|| format!("starting the health server on {addr}"))?,
        ),
        None => None,
    };

    let config = tokio::select! {
        c = wait_for_config(&sm) => c?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    let network = config
        .network
        .context("the etcd subnet manager needs an IPv4 Network")?;
    check_br_netfilter(&config)?;
    if !flannel_backend::SUPPORTED.contains(&config.backend_type.as_str()) {
        bail!(
            "backend type {:?} at {} is not supported by this flannel-rs build (supported: {})",
            config.backend_type,
            sm.config_key(),
            flannel_backend::SUPPORTED.join(", ")
        );
    }

    let families = Families {
        v4: config.enable_ipv4,
        v6: config.enable_ipv6,
    };
    let ext = iface::select(&nl, &o, families).await?;
    info!(iface = %ext.name, iface_addr = %ext.iface_addr, public_ip = %ext.ext_addr, public_ipv6 = ?ext.ext_v6_addr, mtu = ext.mtu, "using interface");

    let stored_mac = previous_vtep_mac(&sm, ext.ext_addr).await;
    let mut backend = AnyBackend::register(
        &config.backend_type,
        &config.backend,
        nl.clone(),
        ext,
        network,
        stored_mac,
    )
    .await
    .with_context(|| {
        format!(
            "setting up the {} backend (config at {})",
            config.backend_type,
            sm.config_key()
        )
    })?;
    let mut own = sm
        .acquire_lease(&config, &backend.lease_attrs())
        .await
        .context("acquiring a subnet lease")?;
    let subnet = own.lease.subnet;
    info!(subnet = %subnet, ipv6_subnet = ?own.lease.ipv6_subnet, "lease acquired");

    let fw_cfg = FirewallConfig {
        families: family_nets(&config, &own),
        ip_masq: o.ip_masq,
        forward: o.forward_rules,
        fully_random_disable: o.ip_masq_fully_random_disable,
    };
    let fw: Arc<dyn TrafficManager> = {
        let (cfg, nft, old) = (
            fw_cfg.clone(),
            config.enable_nftables,
            previous_nets(&previous),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<dyn TrafficManager>> {
            if !nft {
                IptablesManager::new(&cfg).recycle(&old, &cfg.families);
            }
            let m: Arc<dyn TrafficManager> = Arc::from(firewall::manager(&cfg, nft));
            m.setup()
                .with_context(|| format!("installing {} rules", m.name()))?;
            Ok(m)
        })
        .await??
    };

    // Program the peers we already know before telling the CNI plugin we are ready.
    let mut skips = crate::skiplog::SkipLog::default();
    let mut leases = LeaseSet::default();
    match sm.list().await {
        Ok(l) => leases.apply(LeaseEvent::Snapshot(
            l.entries.into_iter().map(|e| e.lease).collect(),
        )),
        Err(e) => warn!(error = %e, "listing leases failed; peers come with the watch"),
    }
    reconcile(&mut backend, &own, &leases, &mut skips, &sm).await;

    let env = SubnetEnv {
        v4: config.enable_ipv4.then_some((network, subnet)),
        v6: config
            .ipv6_network
            .zip(own.lease.ipv6_subnet)
            .filter(|_| config.enable_ipv6),
        mtu: backend.mtu(),
        ipmasq: o.ip_masq,
    };
    env.write_atomic(&o.subnet_file)
        .with_context(|| format!("writing {}", o.subnet_file.display()))?;
    ready.store(true, Ordering::SeqCst);
    info!(file = %o.subnet_file.display(), "wrote subnet file; flannel is ready");

    let (tx, mut rx) = mpsc::channel::<LeaseEvent>(4096);
    let watcher = {
        let sm = sm.clone();
        tokio::spawn(async move { sm.watch_leases(tx).await })
    };
    // Kernel notifications (a deleted route, neighbour, FDB entry, address or link) wake the
    // reconciler at once; the capacity of 1 coalesces bursts.
    let (kick_tx, mut kicks) = mpsc::channel::<()>(1);
    let monitor = tokio::spawn(flannel_net::monitor::watch(kick_tx));
    // Like upstream, the first resync comes one period after start.
    let mut resync = tokio::time::interval_at(Instant::now() + o.resync, o.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew_at = renew_deadline(&own, o.renew_margin);
    let own_key = own.lease.key();
    let own_key_text = sm.key_for(&own_key);
    let mut drift = crate::drift::ConfigDrift::new(config.clone());
    let mut claims = crate::drift::ClaimWatch::default();

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break Err(anyhow::anyhow!("the lease watch stopped")) };
                let mut own_gone = matches!(&ev, LeaseEvent::Removed(k) if *k == own_key);
                leases.apply(ev);
                // Drain what is queued so a burst of events costs one reconcile.
                while let Ok(ev) = rx.try_recv() {
                    own_gone |= matches!(&ev, LeaseEvent::Removed(k) if *k == own_key);
                    leases.apply(ev);
                }
                claims.check(&own, &leases, &own_key_text);
                if own_gone || (!leases.is_empty() && leases.get(&own_key).is_none()) {
                    warn!(subnet = %subnet, "our lease disappeared from etcd; taking it back");
                    match sm.reclaim(&own).await {
                        Ok(l) => { own = l; renew_at = renew_deadline(&own, o.renew_margin); }
                        Err(SubnetError::LeaseLost { key }) => break Err(anyhow::anyhow!("lease {key} was taken by another node; restart to get a new subnet")),
                        Err(e) => warn!(error = %e, "re-creating our lease failed; retrying on the next event or resync"),
                    }
                }
                reconcile(&mut backend, &own, &leases, &mut skips, &sm).await;
            }
            Some(()) = kicks.recv() => {
                // Let a burst (and our own writes) settle before looking.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while kicks.try_recv().is_ok() {}
                reconcile(&mut backend, &own, &leases, &mut skips, &sm).await;
            }
            _ = resync.tick() => {
                reconcile(&mut backend, &own, &leases, &mut skips, &sm).await;
                drift.check(&sm).await;
                let fw = fw.clone();
                if o.blackhole_route {
                    ensure_blackhole(&nl, subnet).await;
                }
                match tokio::task::spawn_blocking(move || fw.resync()).await {
                    Ok(Err(e)) => warn!(error = %e, "checking firewall rules failed"),
                    Err(e) => warn!(error = %e, "iptables check task failed"),
                    Ok(Ok(_)) => {}
                }
                if backend.lease_attrs() != own.lease.attrs {
                    info!("backend data changed (new VtepMAC?); republishing our lease");
                    match sm.republish(&own, &backend.lease_attrs()).await {
                        Ok(l) => own = l,
                        Err(e) => warn!(error = %e, "republishing our lease failed"),
                    }
                }
            }
            _ = sleep_until(renew_at) => {
                match sm.renew_lease(&own).await {
                    Ok(l) => {
                        own = l;
                        renew_at = renew_deadline(&own, o.renew_margin);
                        info!(subnet = %subnet, ttl_secs = own.ttl.as_secs(), "lease renewed");
                    }
                    Err(SubnetError::LeaseLost { key }) => {
                        warn!(key, "lease vanished before renewal; taking it back");
                        match sm.reclaim(&own).await {
                            Ok(l) => { own = l; renew_at = renew_deadline(&own, o.renew_margin); }
                            Err(e) => { error!(error = %e, "could not take our lease back"); renew_at = Instant::now() + RENEW_RETRY; }
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "renewing the lease failed; retrying in {RENEW_RETRY:?}");
                        renew_at = Instant::now() + RENEW_RETRY;
                    }
                }
            }
            _ = sigterm.recv() => { info!("SIGTERM: exiting cleanly; kernel state, rules and lease kept"); break Ok(()) }
            _ = sigint.recv() => { info!("SIGINT: exiting cleanly; kernel state, rules and lease kept"); break Ok(()) }
        }
    };
    watcher.abort();
    monitor.abort();
    result
}

/// `--ip-blackhole-route`: packets for unused addresses of our subnet are dropped here instead
/// of following the default route out of the node.
async fn ensure_blackhole(nl: &Netlink, subnet: ipnet::Ipv4Net) {
    match nl.has_blackhole(subnet).await {
        Ok(true) => {}
        Ok(false) => match nl.add_blackhole(subnet).await {
            Ok(()) => info!(subnet = %subnet, "added blackhole route"),
            Err(e) => warn!(error = %e, "adding the blackhole route failed"),
        },
        Err(e) => warn!(error = %e, "checking the blackhole route failed"),
    }
}

async fn reconcile(
    backend: &mut AnyBackend,
    own: &OwnLease,
    leases: &LeaseSet,
    skips: &mut crate::skiplog::SkipLog,
    sm: &EtcdSubnetManager,
) {
    match backend.reconcile(&own.lease, &leases.leases()).await {
        Ok(r) => {
            skips.report(&r.skipped, &|k| sm.key_for(k));
            if r.changed() {
                info!(
                    added = r.added,
                    removed = r.removed,
                    failed = r.failed,
                    device_recreated = r.device_recreated,
                    "reconciled kernel state"
                );
            }
        }
        Err(e) => error!(error = %e, "reconcile failed; retrying on the next event or resync"),
    }
}
