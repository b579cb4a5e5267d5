//! The state snapshot flanneld serves on its local socket (`GET /state`) and `flannelctl`
//! reads: this node's lease, the leases it knows, the kernel entries it expects, what its last
//! reconcile did, and its config. One schema for the writer and the reader.

use crate::{Lease, MacAddr};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// flanneld's version.
    pub version: String,
    /// Whether subnet.env is written and the rules are in place.
    pub ready: bool,
    /// The network config as flanneld read it (`net-conf.json` or `<prefix>/config`).
    pub config: serde_json::Value,
    pub node: NodeInfo,
    /// This node's lease.
    pub own: LeaseView,
    /// Every lease known, this node's included (those left out for a conflict too).
    pub leases: Vec<LeaseView>,
    /// Leases left out because their subnet overlaps one another node held first.
    #[serde(default)]
    pub conflicts: Vec<ConflictView>,
    /// What flanneld keeps in the kernel for its peers, as of now.
    pub expected: Vec<KernelEntry>,
    pub last_reconcile: ReconcileView,
    /// What keeps flanneld's lease watch from working now (datastore down, refused), if any.
    #[serde(default)]
    pub datastore_problem: Option<String>,
}

/// How this flanneld runs: its interface, datastore, files and firewall mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub backend: String,
    /// The external interface and its MTU.
    pub iface: String,
    pub iface_mtu: u32,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    /// `FLANNEL_MTU`: what pods get.
    pub mtu: u32,
    /// The flannel devices (`flannel.1`, `flannel-v6.1`, `flannel0`); none for host-gw.
    pub devices: Vec<String>,
    pub subnet_file: String,
    /// "etcd <endpoints>" or "kubernetes <server>".
    pub datastore: String,
    /// "iptables" or "nftables".
    pub firewall: String,
    pub ip_masq: bool,
    pub forward_rules: bool,
    /// `--ip-masq-fully-random-disable`.
    #[serde(default)]
    pub fully_random_disable: bool,
    /// How to reach the datastore, for `flannelctl leases` without flags (no password).
    #[serde(default)]
    pub access: Option<DatastoreAccess>,
    /// How this flanneld is run, so that fixes name the right commands.
    #[serde(default)]
    pub runs_as: RunsAs,
    /// `--network-policy`: NetworkPolicies enforced in the `inet flannel-policy` table.
    #[serde(default)]
    pub network_policy: bool,
}

/// How flanneld reaches its datastore: its flags, without secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DatastoreAccess {
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        keyfile: String,
        certfile: String,
        cafile: String,
        /// `--etcd-username` (its password is never served: give it as a flag or variable).
        username: String,
    },
    Kubernetes {
        /// `--kubeconfig-file` (as flanneld sees it), or empty.
        kubeconfig: String,
        /// `--kube-api-url`, or empty.
        api_url: String,
        /// The server flanneld talks to.
        server: String,
        annotation_prefix: String,
    },
}

/// How flanneld is run on the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunsAs {
    /// In the kube-flannel DaemonSet's pod.
    DaemonSet,
    /// A systemd unit.
    Systemd,
    /// A node of `flannel-lab`.
    Lab,
    /// Something else (by hand, another supervisor).
    #[default]
    Process,
}

/// A lease as the operator reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseView {
    /// Where it is kept: the etcd key or the Node's name.
    pub key: String,
    /// The IPv4 subnet (none in an IPv6-only network).
    pub subnet: Option<IpNet>,
    pub subnet6: Option<IpNet>,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub backend_type: String,
    /// `BackendData` / `BackendV6Data` as published (VtepMAC, VNI, ...).
    pub backend_data: Option<serde_json::Value>,
    pub backend_v6_data: Option<serde_json::Value>,
    /// When the lease ends unless renewed, in seconds since the epoch; none if it never does.
    pub expires: Option<u64>,
}

impl LeaseView {
    /// The view of `lease`, kept at `key`.
    pub fn of(lease: &Lease, key: String, expires: Option<u64>) -> Self {
        let a = &lease.attrs;
        let data = |d: &Option<crate::raw_json::RawJson>| d.as_ref().and_then(|r| r.value().ok());
        LeaseView {
            key,
            subnet: (lease.subnet.prefix_len() > 0).then_some(IpNet::V4(lease.subnet)),
            subnet6: lease.ipv6_subnet.map(IpNet::V6),
            public_ip: (!a.public_ip.is_unspecified()).then_some(IpAddr::V4(a.public_ip)),
            public_ipv6: a.public_ipv6.map(IpAddr::V6),
            backend_type: a.backend_type.clone(),
            backend_data: data(&a.backend_data),
            backend_v6_data: data(&a.backend_v6_data),
            expires,
        }
    }

    /// The VTEP MAC published for the family of `v6`, if this is a vxlan lease.
    pub fn vtep_mac(&self, v6: bool) -> Option<MacAddr> {
        let d = if v6 {
            &self.backend_v6_data
        } else {
            &self.backend_data
        };
        d.as_ref()?.get("VtepMAC")?.as_str()?.parse().ok()
    }
}

/// A lease left out because its subnet overlaps one held before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictView {
    /// The newcomer (etcd key or Node), left out, and its overlapping subnet.
    pub key: String,
    pub subnet: IpNet,
    /// The lease that was there first and keeps its routes, and its subnet.
    pub holder: String,
    pub holder_subnet: IpNet,
}

/// One kernel entry flanneld keeps for its peers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KernelEntry {
    /// A route to `dst` on `dev`, through `gw` when set.
    Route {
        dst: IpNet,
        gw: Option<IpAddr>,
        dev: String,
    },
    /// A permanent neighbour entry: `ip` is at `mac` on `dev`.
    Neighbour {
        ip: IpAddr,
        mac: MacAddr,
        dev: String,
    },
    /// A permanent FDB entry: frames for `mac` go to `dst` (the peer's public address).
    Fdb {
        mac: MacAddr,
        dst: IpAddr,
        dev: String,
    },
}

/// What the last full reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileView {
    pub added: usize,
    pub removed: usize,
    pub failed: usize,
    pub device_recreated: bool,
    /// Leases left out, with why.
    pub skipped: Vec<SkippedView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedView {
    pub key: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_entries_are_tagged_by_kind_and_read_back() {
        let e = vec![
            KernelEntry::Route {
                dst: "10.244.1.0/24".parse().unwrap(),
                gw: Some("10.244.1.0".parse().unwrap()),
                dev: "flannel.1".into(),
            },
            KernelEntry::Fdb {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                dst: "10.0.0.51".parse().unwrap(),
                dev: "flannel.1".into(),
            },
        ];
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains(r#""kind":"route""#), "{j}");
        assert!(j.contains(r#""mac":"02:00:00:00:00:01""#), "{j}");
        let back: Vec<KernelEntry> = serde_json::from_str(&j).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_lease_view_shows_what_upstream_publishes() {
        let l = Lease::v4(
            "10.244.1.0/24".parse().unwrap(),
            crate::LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.51","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#).unwrap(),
        );
        let v = LeaseView::of(&l, "k".into(), Some(5));
        assert_eq!(v.subnet, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(v.public_ip, Some("10.0.0.51".parse().unwrap()));
        assert_eq!(
            v.vtep_mac(false).map(|m| m.to_string()).as_deref(),
            Some("c6:d2:32:6f:8f:44")
        );
        assert_eq!(v.vtep_mac(true), None);
    }
}
