//! `--network-policy`: Kubernetes NetworkPolicies enforced on this node's pods, compiled
//! into flanneld's own nftables table (`inet flannel-policy`).
//!
//! Pods, Namespaces and NetworkPolicies are listed and watched on the list-watch driver
//! ([`watch`]); once each kind has listed once, every change compiles the whole cluster
//! again (pure, fast) and the difference to the kernel's table is applied as one
//! transaction ([`table`]). A timer does the same, so a table changed by hand heals.

pub mod monitor;
pub mod table;
pub mod watch;

use crate::metrics::Metrics;
use flannel_policy::compile::{compile, problems};
use flannel_subnet::kube::KubeSubnetManager;
use flannel_subnet::listwatch::AllListed;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use table::PolicyTable;
use tracing::{debug, info, warn};
use watch::{Feed, Namespaces, Pods, Policies, Raw, Shared};

/// The collections flanneld reads for policy, with their resource and kind names.
pub const WATCHED: [(&str, &str, &str); 3] = [
    ("/api/v1/pods", "pods", "pod"),
    ("/api/v1/namespaces", "namespaces", "namespace"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networkpolicies",
        "networkpolicy",
    ),
];

/// The policy task; dropping it stops it.
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`run`] on a task of its own.
pub fn spawn<T: PolicyTable>(
    sm: Arc<KubeSubnetManager>,
    table: Arc<T>,
    resync: Duration,
    metrics: Arc<Metrics>,
) -> Running {
    Running(tokio::spawn(run(sm, table, resync, metrics)))
}

/// Lists and watches the three kinds and enforces, until dropped.
pub async fn run<T: PolicyTable>(
    sm: Arc<KubeSubnetManager>,
    table: Arc<T>,
    resync: Duration,
    metrics: Arc<Metrics>,
) {
    // The node's name as the subnet manager learns it (NODE_NAME, or this pod's node).
    let mut pause =
        flannel_core::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let node = loop {
        match sm.node_name().await {
            Ok(n) => break n,
            Err(e) => {
                debug!("network policy: waiting for this node's name: {e}");
                tokio::time::sleep(pause.next()).await;
            }
        }
    };
    for p in flannel_net::br_netfilter::problems(Path::new("/proc/sys")) {
        warn!("network policy: {p}");
    }
    let shared = Arc::new(Shared::default());
    let listed = AllListed::new(WATCHED.len());
    let [(pp, pr, pk), (np, nr, nk), (qp, qr, qk)] = WATCHED;
    let pods = sm.watch_kind::<Raw, _>(
        pp,
        pr,
        pk,
        Feed::<Pods>::new(shared.clone()),
        Some(listed.clone()),
    );
    let nss = sm.watch_kind::<Raw, _>(
        np,
        nr,
        nk,
        Feed::<Namespaces>::new(shared.clone()),
        Some(listed.clone()),
    );
    let pols = sm.watch_kind::<Raw, _>(
        qp,
        qr,
        qk,
        Feed::<Policies>::new(shared.clone()),
        Some(listed.clone()),
    );
    let kernel = monitor::watch_table(shared.clone());
    let enforce = enforce(shared, listed, node, table, resync, metrics);
    tokio::join!(pods, nss, pols, kernel, enforce);
}

/// Waits for the first complete view, then keeps the kernel's table what it compiles to.
pub async fn enforce<T: PolicyTable>(
    shared: Arc<Shared>,
    listed: Arc<AllListed>,
    node: String,
    table: Arc<T>,
    resync: Duration,
    metrics: Arc<Metrics>,
) {
    listed.wait().await;
    info!(node = %node, "network policy: pods, namespaces and networkpolicies listed; enforcing");
    let mut said: BTreeSet<String> = BTreeSet::new();
    let mut first = true;
    // Why this pass runs: a pass the watches did not cause that has to write is a repair.
    let mut repairing = false;
    loop {
        let started = std::time::Instant::now();
        let (want, now_problems, policies) = {
            let c = shared.cluster();
            (compile(&c, &node), problems(&c), c.policies.len())
        };
        let compiled = started.elapsed();
        let isolated = |prefix: &str| want.chains.keys().filter(|c| c.starts_with(prefix)).count();
        let mut pass = crate::metrics::PolicyPass {
            policies,
            isolated: (isolated("pod-in."), isolated("pod-eg.")),
            compile: compiled,
            ..Default::default()
        };
        for p in now_problems.difference(&said) {
            warn!("{p}");
        }
        said = now_problems;
        let (rules, elems) = want.size();
        (pass.rules, pass.elements) = (rules, elems);
        let t = table.clone();
        let applying = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || t.converge(&want)).await;
        pass.apply = applying.elapsed();
        if matches!(result, Ok(Ok(_))) {
            metrics.policy_pass(&pass);
        }
        match result {
            Ok(Ok(Some(script))) => {
                let lines = script.lines().count();
                if repairing && !first {
                    metrics.policy_repaired();
                    info!(
                        commands = lines,
                        "network policy: the table was changed outside flanneld; put back"
                    );
                }
                if first {
                    info!(
                        rules,
                        elements = elems,
                        "network policy: table inet flannel-policy written"
                    );
                } else {
                    debug!(
                        rules,
                        elements = elems,
                        commands = lines,
                        "network policy: applied"
                    );
                }
                first = false;
            }
            Ok(Ok(None)) => first = false,
            Ok(Err(e)) => warn!("network policy: could not write the table: {e}"),
            Err(e) => warn!("network policy: the writer stopped: {e}"),
        }
        repairing = tokio::select! {
            // A pending watch change wins: its write is not a repair.
            biased;
            _ = shared.changed.notified() => false,
            _ = shared.kernel_changed.notified() => true,
            _ = tokio::time::sleep(resync) => true,
        };
    }
}

/// With `--network-policy` off: a policy table left by an earlier run goes.
pub async fn remove_leftover<T: PolicyTable>(table: Arc<T>) {
    let removed = tokio::task::spawn_blocking(move || table.remove())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match removed {
        Ok(true) => {
            info!("removed the network policy table an earlier run left (--network-policy is off)")
        }
        Ok(false) => {}
        // nft missing or failing: nothing of ours can be there to remove.
        Err(e) => debug!("looking for a leftover network policy table: {e}"),
    }
}

#[cfg(test)]
mod tests;
