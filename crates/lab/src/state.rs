//! What a running lab is made of, saved as `<state dir>/lab.json` so later commands find it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodState {
    pub name: String,
    pub netns: String,
    /// The pod's address without prefix, e.g. `10.244.1.2`.
    pub ip: String,
    /// Its IPv6 address in a dual-stack lab, else empty.
    #[serde(default)]
    pub ip6: String,
    /// Its Kubernetes namespace (the pods `up` makes are in `default`).
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Named container ports its Pod object declares (no listener behind them).
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

fn default_ns() -> String {
    "default".into()
}

impl PodState {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: String,
    /// The node's lease, e.g. `10.244.1.0/24`.
    pub subnet: String,
    /// In a dual-stack lab: the node's IPv6 underlay address and IPv6 subnet, else empty.
    #[serde(default)]
    pub ip6: String,
    #[serde(default)]
    pub subnet6: String,
    pub pods: Vec<PodState>,
    pub log: PathBuf,
    /// The flanneld command line, so it can be restarted as it was.
    pub flanneld: Vec<String>,
    /// flanneld's environment beyond ours (kube mode: the container's env).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// flanneld's mounts (kube mode: the pod's volumes and service-account token).
    #[serde(default)]
    pub binds: Vec<crate::nodefs::Bind>,
    /// The node's own files for its CNI calls (kube mode, as the kubelet sees them).
    #[serde(default)]
    pub cni_binds: Vec<crate::nodefs::Bind>,
    /// Where flanneld writes subnet.env, on the machine.
    #[serde(default)]
    pub subnet_file: PathBuf,
}

fn etcd() -> String {
    "etcd".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub lab: String,
    pub state_dir: PathBuf,
    pub backend: String,
    /// `etcd` or `kube`.
    #[serde(default = "etcd")]
    pub datastore: String,
    /// In kube mode: the API fake's command line and log, so it can be stopped and started.
    #[serde(default)]
    pub api_args: Vec<String>,
    #[serde(default)]
    pub api_log: PathBuf,
    pub etcd_log: PathBuf,
    /// etcd's arguments, so it can be stopped and started again.
    pub etcd_args: Vec<String>,
    pub nodes: Vec<NodeState>,
    /// Where flanneld, the CNI plugin and flannel-lab itself are (for pods added later).
    #[serde(default = "crate::preflight::default_bin_dir")]
    pub bin_dir: PathBuf,
}

impl LabState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let p = Self::path(&self.state_dir);
        std::fs::write(&p, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let p = Self::path(state_dir);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            anyhow::anyhow!(
                "no lab at {} ({e}); run `flannel-lab up` first",
                state_dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a lab state file: {e}", p.display()))
    }

    /// The admin kubeconfig of the API fake (kube mode).
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kube").join("kubeconfig")
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodState> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// The pod `what` names (`namespace/name`, an address, or a name only one pod has), with
    /// its node.
    pub fn find_pod(&self, what: &str) -> anyhow::Result<(&NodeState, &PodState)> {
        let all: Vec<(&NodeState, &PodState)> = self
            .nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n, p)))
            .collect();
        if let Some(hit) = all
            .iter()
            .find(|(_, p)| p.key() == what || p.ip == what || p.ip6 == what)
        {
            return Ok(*hit);
        }
        let named: Vec<_> = all.iter().filter(|(_, p)| p.name == what).collect();
        match named.as_slice() {
            [one] => Ok(**one),
            [] => anyhow::bail!(
                "no pod {what:?} in lab {} (pods: {})",
                self.lab,
                all.iter()
                    .map(|(_, p)| p.key())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            many => anyhow::bail!(
                "{what:?} names {} pods ({}): say NAMESPACE/NAME",
                many.len(),
                many.iter()
                    .map(|(_, p)| p.key())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}
