//! How this flanneld describes itself in the state snapshot: the node's facts, how flannelctl
//! reaches the datastore, how the daemon is run, the network config with upstream's names.

use flannel_backend::ExternalInterface;
use flannel_cli::Options;
use flannel_core::state::{DatastoreAccess, NodeInfo, RunsAs};
use flannel_core::NetworkConfig;
use flannel_subnet::SubnetManager;

/// What the snapshot says of this node before the backend is up (its MTU and devices come
/// after).
pub(super) fn node_info(
    o: &Options,
    sm: &impl SubnetManager,
    config: &NetworkConfig,
    backend: &str,
    ext: &ExternalInterface,
) -> NodeInfo {
    NodeInfo {
        backend: backend.into(),
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
        access: Some(datastore_access(o, &sm.datastore())),
        runs_as: runs_as(o, &|k| std::env::var(k).ok()),
        network_policy: o.network_policy,
        ..Default::default()
    }
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
pub(super) fn config_json(c: &NetworkConfig) -> serde_json::Value {
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
