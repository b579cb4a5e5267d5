//! The flanneld startup sequence and main loop: config, interface, backend, lease, rules,
//! subnet.env, then watch + reconcile + renew until a signal.

use crate::firewall::Firewall;
use crate::iface;
use crate::options::Options;
use anyhow::{bail, Context};
use flannel_backend::vxlan::VxlanBackend;
use flannel_backend::Backend;
use flannel_core::lease::VxlanData;
use flannel_core::subnet_env::{PreviousSubnets, SubnetEnv};
use flannel_core::vxlan::VxlanConfig;
use flannel_core::{MacAddr, NetworkConfig};
use flannel_net::Netlink;
use flannel_subnet::etcd::EtcdSubnetManager;
use flannel_subnet::{LeaseEvent, LeaseSet, OwnLease, SubnetError, SubnetManager};
use std::net::Ipv4Addr;
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
        .and_then(|d| VxlanData::from_value(d).ok())
        .map(|d| d.vtep_mac)
}

fn renew_deadline(own: &OwnLease, margin: Duration) -> Instant {
    // A reservation never expires: check again in a day, harmlessly.
    let ttl = own.ttl.min(Duration::from_secs(86400 * 365));
    Instant::now() + ttl.saturating_sub(margin).max(Duration::from_secs(1))
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let previous = PreviousSubnets::read(&o.subnet_file);
    let sm = Arc::new(EtcdSubnetManager::connect(&o.etcd, previous.clone()).await?);
    let nl = Netlink::new().context("opening a netlink socket")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let config = tokio::select! {
        c = wait_for_config(&sm) => c?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    let network = config
        .network
        .context("IPv4 Network missing from the config")?;
    if config.enable_ipv6 {
        warn!("EnableIPv6 is set but this flannel-rs build handles IPv4 only; ignoring IPv6");
    }
    if config.backend_type != "vxlan" {
        bail!(
            "backend type {:?} at {} is not supported by this flannel-rs build (supported: vxlan)",
            config.backend_type,
            sm.config_key()
        );
    }
    let vxcfg = VxlanConfig::from_backend(&config.backend).with_context(|| {
        format!(
            "invalid Backend in the network config at {}",
            sm.config_key()
        )
    })?;

    let ext = iface::select(&nl, &o).await?;
    info!(iface = %ext.name, iface_addr = %ext.iface_addr, public_ip = %ext.ext_addr, mtu = ext.mtu, "using interface");

    let stored_mac = previous_vtep_mac(&sm, ext.ext_addr).await;
    let mut backend = VxlanBackend::register(nl, vxcfg, ext, network, stored_mac).await?;
    let mut own = sm
        .acquire_lease(&config, &backend.lease_attrs())
        .await
        .context("acquiring a subnet lease")?;
    let subnet = own.lease.subnet;
    info!(subnet = %subnet, "lease acquired");

    let fw = {
        let prev = previous.clone();
        let (masq, rnd, fwd) = (o.ip_masq, o.ip_masq_fully_random_disable, o.forward_rules);
        tokio::task::spawn_blocking(move || {
            let fw = Firewall::new(masq, rnd, fwd, network, subnet);
            fw.recycle(&prev, network, subnet);
            fw.apply().map(|_| fw)
        })
        .await?
        .context("installing iptables rules")?
    };
    let fw = Arc::new(fw);

    // Program the peers we already know before telling the CNI plugin we are ready.
    let mut leases = LeaseSet::default();
    match sm.list().await {
        Ok(l) => leases.apply(LeaseEvent::Snapshot(
            l.entries.into_iter().map(|e| e.lease).collect(),
        )),
        Err(e) => warn!(error = %e, "listing leases failed; peers come with the watch"),
    }
    reconcile(&mut backend, &own, &leases).await;

    let env = SubnetEnv {
        v4: Some((network, subnet)),
        v6: None,
        mtu: backend.mtu(),
        ipmasq: o.ip_masq,
    };
    env.write_atomic(&o.subnet_file)
        .with_context(|| format!("writing {}", o.subnet_file.display()))?;
    info!(file = %o.subnet_file.display(), "wrote subnet file; flannel is ready");

    let (tx, mut rx) = mpsc::channel::<LeaseEvent>(4096);
    let watcher = {
        let sm = sm.clone();
        tokio::spawn(async move { sm.watch_leases(tx).await })
    };
    let mut resync = tokio::time::interval(o.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew_at = renew_deadline(&own, o.renew_margin);
    let own_key = own.lease.key();

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
                if own_gone || (!leases.is_empty() && !leases.leases().iter().any(|l| l.key() == own_key)) {
                    warn!(subnet = %subnet, "our lease disappeared from etcd; taking it back");
                    match sm.reclaim(&own).await {
                        Ok(l) => { own = l; renew_at = renew_deadline(&own, o.renew_margin); }
                        Err(SubnetError::LeaseLost { key }) => break Err(anyhow::anyhow!("lease {key} was taken by another node; restart to get a new subnet")),
                        Err(e) => warn!(error = %e, "re-creating our lease failed; retrying on the next event or resync"),
                    }
                }
                reconcile(&mut backend, &own, &leases).await;
            }
            _ = resync.tick() => {
                reconcile(&mut backend, &own, &leases).await;
                let fw = fw.clone();
                match tokio::task::spawn_blocking(move || fw.resync()).await {
                    Ok(Err(e)) => warn!(error = %e, "checking iptables rules failed"),
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
            _ = sigterm.recv() => { info!("SIGTERM: exiting cleanly, kernel state and lease kept"); break Ok(()) }
            _ = sigint.recv() => { info!("SIGINT: exiting cleanly, kernel state and lease kept"); break Ok(()) }
        }
    };
    watcher.abort();
    result
}

async fn reconcile(backend: &mut VxlanBackend, own: &OwnLease, leases: &LeaseSet) {
    match backend.reconcile(&own.lease, &leases.leases()).await {
        Ok(r) if r.added + r.removed + r.failed > 0 || r.device_recreated => {
            info!(
                added = r.added,
                removed = r.removed,
                failed = r.failed,
                device_recreated = r.device_recreated,
                "reconciled kernel state"
            );
        }
        Ok(_) => {}
        Err(e) => error!(error = %e, "reconcile failed; retrying on the next event or resync"),
    }
}
