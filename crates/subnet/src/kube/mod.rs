//! The Kubernetes subnet manager (upstream `pkg/subnet/kube`): this node's subnet is its
//! `spec.podCIDR(s)`, peers are the Nodes that carry flannel's annotations, and flanneld
//! publishes itself in annotations on `nodes/<name>/status` (a strategic-merge patch of the
//! changed keys only), then marks the node's network available.
//!
//! Differences from upstream, all on the side of not crash-looping and not losing state: a
//! node without a podCIDR yet, an API server that is away and a node that is not registered
//! yet are waited for (said once, then every minute) instead of failing; our own annotations
//! changed by someone else are put back; the VTEP MAC is read back from our `backend-data`
//! annotation as JSON (right for every prefix).

pub mod annotations;
mod conn;
pub mod lines;
pub mod node;
pub mod source;
pub mod watch;

pub use conn::ApiSource;

use crate::{
    Claim, LeaseEvent, LeaseHandle, OwnLease, Owner, PublicIpOverride, SubnetError, SubnetManager,
};
use annotations::Annotations;
use conn::{req, Conn};
use flannel_core::iface::Families;
use flannel_core::lease::VxlanData;
use flannel_core::raw_json::RawJson;
use flannel_core::{ConfigError, LeaseAttrs, MacAddr, NetworkConfig};
use node::{annotations_to_publish, node_lease, pod_subnets, NodeLease, NodeLite};
use serde::Deserialize;
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, OnceCell};
use tracing::info;
use watch::NodeStore;

/// Everything the Kubernetes mode needs from flags and environment.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    pub source: ApiSource,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`.
    pub set_node_network_unavailable: bool,
    /// `NODE_NAME`.
    pub node_name: String,
    /// `POD_NAME` and `POD_NAMESPACE`, to find the node when `NODE_NAME` is not set.
    pub pod_name: String,
    pub pod_namespace: String,
}

pub struct KubeSubnetManager {
    opts: KubeOptions,
    conn: Arc<Conn>,
    ann: Annotations,
    node: OnceCell<String>,
    fam: OnceLock<Families>,
    store: Arc<NodeStore>,
    /// The node watch's counters and its problem now.
    stats: Arc<crate::stats::DatastoreStats>,
    /// The node watch, started by the first listing and stopped with the manager.
    watch: std::sync::Mutex<Option<AbortOnDrop>>,
}

/// How long the first listing may take before startup goes on without it (the watch goes on).
const SYNC_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct PodLite {
    #[serde(default)]
    spec: PodSpec,
}

#[derive(Deserialize, Default)]
struct PodSpec {
    #[serde(default, rename = "nodeName")]
    node_name: String,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl KubeSubnetManager {
    /// Checks the annotation prefix and makes the client (a bad kubeconfig is an error now;
    /// the API server itself is first asked when something is needed from it).
    pub async fn connect(opts: KubeOptions) -> Result<Self, SubnetError> {
        let ann = Annotations::new(&opts.annotation_prefix).map_err(|msg| SubnetError::File {
            path: "--kube-annotation-prefix".into(),
            msg,
        })?;
        let conn = Conn::new(opts.source.clone()).await?;
        Ok(Self {
            opts,
            conn: Arc::new(conn),
            ann,
            node: OnceCell::new(),
            fam: OnceLock::new(),
            store: Arc::default(),
            stats: Arc::default(),
            watch: std::sync::Mutex::new(None),
        })
    }

    /// Starts the node watch, once.
    fn start_watch(&self) {
        let mut w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(AbortOnDrop(tokio::spawn(watch::run(
                self.conn.clone(),
                self.ann.clone(),
                self.families(),
                self.store.clone(),
                self.stats.clone(),
            ))));
        }
    }

    /// Lists and watches another collection (`path`: `/api/v1/pods` for every namespace,
    /// `/apis/networking.k8s.io/v1/networkpolicies`) on this manager's connection, with the
    /// same driver as the Node watch, into `consumer`; `listed` learns when it has listed once
    /// (one `AllListed` shared by several kinds says when all have). Runs until dropped.
    pub async fn watch_kind<T: source::Object, C: source::Consumer<T>>(
        &self,
        path: &str,
        resource: &'static str,
        kind: &'static str,
        consumer: C,
        listed: Option<Arc<crate::listwatch::AllListed>>,
    ) {
        let s = source::KubeSource::new(self.conn.clone(), path, resource, kind, consumer);
        let report = crate::listwatch::Reporting {
            stats: self.stats.clone(),
            listed,
        };
        crate::listwatch::drive(s, None, watch::PAUSES, report).await
    }

    /// The API server flanneld talks to.
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    fn families(&self) -> Families {
        *self.fam.get().unwrap_or(&Families {
            v4: true,
            v6: false,
        })
    }

    /// A failure worth waiting out, said with what to check.
    fn waiting(&self, e: SubnetError) -> SubnetError {
        let hint = match &e {
            SubnetError::Kube { code: Some(401 | 403), .. } => {
                " (flanneld's service account needs: nodes get/list/watch, nodes/status patch, pods get)"
            }
            _ => "",
        };
        SubnetError::NotYet(format!(
            "waiting for the Kubernetes API at {}: {e}{hint}",
            self.conn.server
        ))
    }

    /// This node's name: `NODE_NAME`, else the node of pod `POD_NAMESPACE/POD_NAME`.
    pub async fn node_name(&self) -> Result<String, SubnetError> {
        self.node
            .get_or_try_init(|| async {
                if !self.opts.node_name.is_empty() {
                    return Ok(self.opts.node_name.clone());
                }
                let (ns, pod) = (&self.opts.pod_namespace, &self.opts.pod_name);
                if ns.is_empty() || pod.is_empty() {
                    return Err(SubnetError::File {
                        path: "environment".into(),
                        msg: "set NODE_NAME, or POD_NAME and POD_NAMESPACE, so flanneld knows its node".into(),
                    });
                }
                let path = format!("/api/v1/namespaces/{ns}/pods/{pod}");
                let p: PodLite = self
                    .conn
                    .request("get", &format!("pod {ns}/{pod}"), || {
                        req(http::Method::GET, &path, None, Vec::new())
                    })
                    .await
                    .map_err(|e| self.waiting(e))?;
                if p.spec.node_name.is_empty() {
                    return Err(SubnetError::NotYet(format!(
                        "pod {ns}/{pod} is not scheduled on a node yet"
                    )));
                }
                info!(node = %p.spec.node_name, "this node, from pod {ns}/{pod}");
                Ok(p.spec.node_name)
            })
            .await
            .cloned()
    }

    async fn own_node(&self) -> Result<(String, NodeLite), SubnetError> {
        let name = self.node_name().await?;
        let path = format!("/api/v1/nodes/{name}");
        let n: NodeLite = self
            .conn
            .request("get", &format!("node {name}"), || {
                req(http::Method::GET, &path, None, Vec::new())
            })
            .await
            .map_err(|e| match e {
                SubnetError::Kube {
                    code: Some(404), ..
                } => SubnetError::NotYet(format!(
                    "node {name} does not exist in the API (yet): is NODE_NAME right?"
                )),
                e => self.waiting(e),
            })?;
        Ok((name, n))
    }

    /// A strategic-merge patch of `body` on `nodes/<name>/status`.
    async fn patch_status(
        &self,
        name: &str,
        body: serde_json::Value,
    ) -> Result<NodeLite, SubnetError> {
        let path = format!("/api/v1/nodes/{name}/status");
        let bytes = body.to_string().into_bytes();
        self.conn
            .request("patch", &format!("node {name} status"), || {
                req(
                    http::Method::PATCH,
                    &path,
                    Some("application/strategic-merge-patch+json"),
                    bytes.clone(),
                )
            })
            .await
    }

    /// Makes our node's annotations say `attrs` (only the keys that differ are sent), and
    /// returns our lease as every reader of the node sees it.
    async fn publish(&self, attrs: &LeaseAttrs) -> Result<OwnLease, SubnetError> {
        let fam = self.families();
        let (name, mut node) = self.own_node().await?;
        let changes = annotations_to_publish(&node, &self.ann, attrs, fam);
        if !changes.is_empty() {
            info!(node = %name, keys = ?changes.keys().collect::<Vec<_>>(), "publishing our annotations");
            node = self
                .patch_status(&name, json!({"metadata": {"annotations": changes}}))
                .await
                .map_err(|e| self.waiting(e))?;
        }
        node.retain_ours(&self.ann);
        match node_lease(&node, &self.ann, fam) {
            NodeLease::Lease(lease) => Ok(OwnLease {
                owner: Owner::new(&name),
                lease,
                ttl: Duration::MAX,
                handle: LeaseHandle(0),
            }),
            NodeLease::NotManaged => Err(SubnetError::NotYet(format!(
                "node {name} does not show our annotations yet"
            ))),
            NodeLease::Bad(why) => Err(SubnetError::File {
                path: format!("node {name}"),
                msg: why,
            }),
        }
    }
}

impl SubnetManager for KubeSubnetManager {
    fn config_location(&self) -> String {
        self.opts.net_config_path.display().to_string()
    }

    fn datastore(&self) -> String {
        format!("kubernetes {}", self.conn.server)
    }

    fn config_missing_hint(&self) -> String {
        format!(
            "{} does not exist (in kube mode flanneld reads net-conf.json from the kube-flannel-cfg ConfigMap, mounted at /etc/kube-flannel/; --net-config-path moves it)",
            self.opts.net_config_path.display()
        )
    }

    async fn get_network_config(&self) -> Result<Option<String>, SubnetError> {
        match tokio::fs::read_to_string(&self.opts.net_config_path).await {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SubnetError::File {
                path: self.config_location(),
                msg: e.to_string(),
            }),
        }
    }

    /// Upstream parses net-conf.json without the etcd mode's range checks (subnets come from
    /// podCIDRs); the families it enables must have their network.
    fn parse_config(&self, text: &str) -> Result<NetworkConfig, ConfigError> {
        let c = NetworkConfig::parse(text)?;
        if c.enable_ipv4 && c.network.is_none() {
            return Err(ConfigError::Invalid(
                "please define a correct Network parameter in the flannel config".into(),
            ));
        }
        if c.enable_ipv6 && c.ipv6_network.is_none() {
            return Err(ConfigError::Invalid(
                "please define a correct IPv6Network parameter in the flannel config".into(),
            ));
        }
        if !c.enable_ipv4 && !c.enable_ipv6 {
            return Err(ConfigError::Invalid(
                "EnableIPv4 and EnableIPv6 are both false: nothing to do".into(),
            ));
        }
        Ok(c)
    }

    async fn public_ip_override(&self) -> Result<PublicIpOverride, SubnetError> {
        let (name, node) = self.own_node().await?;
        let read = |key: &str| node.annotation(key).filter(|s| !s.is_empty());
        let bad = |key: &str, v: &str| SubnetError::File {
            path: format!("node {name}"),
            msg: format!("annotation {key} {v:?} is not an IP address"),
        };
        let mut o = PublicIpOverride::default();
        if let Some(v) = read(&self.ann.node_public_ip) {
            o.v4 = Some(v.parse().map_err(|_| bad(&self.ann.node_public_ip, v))?);
        }
        if let Some(v) = read(&self.ann.node_public_ipv6) {
            o.v6 = Some(v.parse().map_err(|_| bad(&self.ann.node_public_ipv6, v))?);
        }
        Ok(o)
    }

    async fn stored_vtep_macs(&self, _public_ip: Ipv4Addr) -> crate::StoredMacs {
        let Ok((_, node)) = self.own_node().await else {
            return crate::StoredMacs::default();
        };
        let mac = |key: &str| -> Option<MacAddr> {
            let raw = RawJson::from_text(node.annotation(key)?).ok()?;
            VxlanData::from_raw(&raw).ok().map(|d| d.vtep_mac)
        };
        crate::StoredMacs {
            v4: mac(&self.ann.backend_data),
            v6: mac(&self.ann.backend_v6_data),
        }
    }

    async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        let _ = self.fam.set(Families {
            v4: config.enable_ipv4,
            v6: config.enable_ipv6,
        });
        let (name, node) = self.own_node().await?;
        let (v4, v6) = pod_subnets(&node.spec).map_err(|msg| SubnetError::File {
            path: format!("node {name}"),
            msg,
        })?;
        let network = config.network.map(ipnet::IpNet::V4);
        let network6 = config.ipv6_network.map(ipnet::IpNet::V6);
        let missing = (config.enable_ipv4 && v4.is_none()) || (config.enable_ipv6 && v6.is_none());
        if missing {
            return Err(SubnetError::NotYet(format!(
                "node {name} has no {} podCIDR yet: check that kube-controller-manager runs with --allocate-node-cidrs=true and a --cluster-cidr inside Network {}",
                if config.enable_ipv4 && v4.is_none() { "IPv4" } else { "IPv6" },
                [network, network6].iter().flatten().map(|n| n.to_string()).collect::<Vec<_>>().join(" / "),
            )));
        }
        // Upstream's check and text.
        let contained = [
            (config.enable_ipv4, network, v4.map(ipnet::IpNet::V4)),
            (config.enable_ipv6, network6, v6.map(ipnet::IpNet::V6)),
        ];
        for (on, net, cidr) in contained {
            if let (true, Some(net), Some(cidr)) = (on, net, cidr) {
                if !net.contains(&cidr) {
                    return Err(SubnetError::File {
                        path: self.config_location(),
                        msg: format!(
                            "subnet \"{net}\" specified in the flannel net config doesn't contain \"{cidr}\" PodCIDR of the \"{name}\" node"
                        ),
                    });
                }
            }
        }
        self.publish(attrs).await
    }

    async fn renew_lease(&self, lease: &OwnLease) -> Result<OwnLease, SubnetError> {
        Ok(lease.clone()) // a node's podCIDR does not expire
    }

    /// Our annotations were removed or changed (by someone, or with the whole Node when the
    /// API server lost its objects): put back, and the node's network marked available again.
    async fn reclaim_lease(&self, lease: &OwnLease) -> Result<OwnLease, SubnetError> {
        let own = self.publish(&lease.lease.attrs).await?;
        self.complete_lease(&own).await?;
        Ok(own)
    }

    async fn republish(
        &self,
        _lease: &OwnLease,
        attrs: &LeaseAttrs,
    ) -> Result<OwnLease, SubnetError> {
        self.publish(attrs).await
    }

    async fn complete_lease(&self, _lease: &OwnLease) -> Result<(), SubnetError> {
        if !self.opts.set_node_network_unavailable {
            return Ok(());
        }
        let name = self.node_name().await?;
        let now = flannel_core::time::now_rfc3339();
        self.patch_status(
            &name,
            json!({"status": {"conditions": [{
                "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                "message": "Flannel is running on this node",
                "lastTransitionTime": now, "lastHeartbeatTime": now
            }]}}),
        )
        .await
        .map(|_| info!(node = %name, "set NetworkUnavailable=False"))
    }

    /// The node watch's first listing (the watch starts here, once): every Node is read one
    /// time at start, not once for this and again for the watch.
    async fn list_leases(&self) -> Result<Vec<Claim>, SubnetError> {
        self.start_watch();
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        while !self.store.synced() {
            if tokio::time::Instant::now() > deadline {
                return Err(SubnetError::NotYet(format!(
                    "the node list did not arrive within {} s",
                    SYNC_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(self.store.claims())
    }

    async fn watch_leases(&self, tx: mpsc::Sender<LeaseEvent>) {
        self.start_watch();
        let mut first = true;
        loop {
            self.store.changed.notified().await;
            if !self.store.synced() {
                continue;
            }
            let changes = self.store.take_changes();
            if first {
                first = false;
                let all = changes.into_iter().filter_map(|(_, c)| c).collect();
                if tx.send(LeaseEvent::Snapshot(all)).await.is_err() {
                    return;
                }
                continue;
            }
            for (name, claim) in changes {
                let ev = match claim {
                    Some(c) => LeaseEvent::Added(c),
                    None => LeaseEvent::Removed(Owner::new(&name)),
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }

    fn stats(&self) -> Arc<crate::stats::DatastoreStats> {
        self.stats.clone()
    }

    fn describe(&self, owner: &Owner) -> String {
        format!("node {owner}")
    }

    fn restores_own_lease(&self) -> bool {
        true
    }
}
