//! A lab node run as the `kube-flannel` DaemonSet runs a real one, from the manifest: the
//! kubelet's part (the pod's volumes, its service-account token, its env) and the pod's part
//! (the init containers, then flanneld with the container's args, in-cluster config).

use crate::manifest::{Container, EnvValue, Manifest, Volume};
use crate::nodefs::{self, Bind};
use crate::sh::{self, in_ns};
use anyhow::{anyhow, bail, Context};
use ipnet::{Ipv4Net, Ipv6Net};

/// The IPv6 cluster network of a dual-stack lab.
pub const DUAL_IPV6_NETWORK: &str = "fd00:10:244::/56";
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Where a pod's service-account token and CA are mounted (by the kubelet, automatically).
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Host paths the kubelet and the CNI plugins use on a node, beside the manifest's volumes.
const KUBELET_PATHS: &[&str] = &[
    "/run/flannel",
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/cni",
];
/// Where the lab's pods find the CNI plugins: the node's `/opt/cni/bin` (ours, installed by the
/// init container), then Debian's.
pub const CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";

/// The manifest and what the lab changes in its ConfigMap (`--backend`, `--direct-routing`).
pub struct KubeSetup {
    pub manifest: Manifest,
    /// The network config as the nodes read it.
    pub net_conf: String,
    pub network: Ipv4Net,
    /// Dual stack: the IPv6 cluster network (nodes get an IPv6 podCIDR too).
    pub network6: Option<Ipv6Net>,
    /// Whether nodes get an IPv4 podCIDR (not in an IPv6-only lab).
    pub v4: bool,
}

impl KubeSetup {
    /// `backend`: the lab's `--backend` when given (it edits the ConfigMap as a user would).
    pub fn new(
        manifest: Manifest,
        backend: Option<&str>,
        direct_routing: bool,
        family: crate::names::IpFamily,
    ) -> anyhow::Result<Self> {
        let dual = family.has_v6();
        let text = manifest.net_conf()?;
        let mut conf: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("the ConfigMap's net-conf.json is not JSON: {e}"))?;
        if let Some(b) = backend {
            conf["Backend"]["Type"] = json!(b);
        }
        if direct_routing {
            conf["Backend"]["DirectRouting"] = json!(true);
        }
        let network6: Option<Ipv6Net> = dual.then(|| DUAL_IPV6_NETWORK.parse()).transpose()?;
        if let Some(n) = network6 {
            conf["EnableIPv6"] = json!(true);
            conf["IPv6Network"] = json!(n.to_string());
        }
        if !family.has_v4() {
            conf["EnableIPv4"] = json!(false);
        }
        let network: Ipv4Net = conf["Network"]
            .as_str()
            .ok_or_else(|| anyhow!("the ConfigMap's net-conf.json has no Network"))?
            .parse()
            .map_err(|e| anyhow!("the ConfigMap's Network: {e}"))?;
        let net_conf = if backend.is_some() || direct_routing || dual {
            serde_json::to_string_pretty(&conf)?
        } else {
            text
        };
        Ok(KubeSetup {
            manifest,
            net_conf,
            network,
            network6,
            v4: family.has_v4(),
        })
    }

    /// The podCIDR kube-controller-manager gives the `i`-th node: /24s of the cluster network
    /// in order (`--node-cidr-mask-size=24`).
    pub fn pod_cidr(&self, i: usize) -> anyhow::Result<String> {
        let len = self.network.prefix_len().clamp(24, 32);
        self.network
            .subnets(len)
            .ok()
            .and_then(|mut s| s.nth(i))
            .map(|s| s.to_string())
            .ok_or_else(|| {
                anyhow!(
                    "the Network {} has no podCIDR for node {}",
                    self.network,
                    i + 1
                )
            })
    }

    /// The IPv6 podCIDR of the `i`-th node in a dual-stack lab: /64s in order.
    pub fn pod_cidr6(&self, i: usize) -> Option<String> {
        let n = self.network6?;
        n.subnets(64).ok()?.nth(i).map(|s| s.to_string())
    }

    /// The DaemonSet's pod on node `i`.
    pub fn pod_name(&self, i: usize) -> String {
        format!("{}-{:05}", self.manifest.daemonset, i)
    }

    /// What the cluster holds before flannel starts: each Node (registered by its kubelet, a
    /// podCIDR from kube-controller-manager, `NetworkUnavailable=True`), the DaemonSet's pod on
    /// it, and the ConfigMap. In the API fake's seed format.
    pub fn seed(&self, nodes: &[(String, String)]) -> anyhow::Result<Vec<Value>> {
        let ns = &self.manifest.namespace;
        let mut seed = Vec::new();
        for (i, (name, ip)) in nodes.iter().enumerate() {
            let mut cidrs = Vec::new();
            if self.v4 {
                cidrs.push(self.pod_cidr(i)?);
            }
            cidrs.extend(self.pod_cidr6(i));
            let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
            seed.push(
                json!({"kind": "Node", "object": flannel_kube_fake::node(name, &cidrs, ip, 0)}),
            );
            seed.push(json!({"kind": "Pod", "namespace": ns, "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.pod_name(i), "namespace": ns, "labels": {"app": "flannel"}},
                "spec": {"nodeName": name, "hostNetwork": true,
                         "serviceAccountName": self.manifest.service_account},
                "status": {"phase": "Running", "podIP": ip, "hostIP": ip}
            }}));
        }
        for (name, data) in &self.manifest.config_maps {
            seed.push(json!({"kind": "ConfigMap", "namespace": ns, "object": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns},
                "data": self.config_map_data(data)
            }}));
        }
        Ok(seed)
    }

    /// A ConfigMap's data with the lab's edit (if any) of the network config.
    fn config_map_data(
        &self,
        data: &std::collections::BTreeMap<String, String>,
    ) -> std::collections::BTreeMap<String, String> {
        let mut d = data.clone();
        if let Ok(text) = self.manifest.net_conf() {
            for v in d.values_mut() {
                if *v == text {
                    *v = self.net_conf.clone();
                }
            }
        }
        d
    }
}

/// One node's DaemonSet pod and kubelet.
pub struct NodePod<'a> {
    pub setup: &'a KubeSetup,
    pub index: usize,
    pub name: &'a str,
    pub netns: &'a str,
    pub ip: &'a str,
    /// `<state>/<node>`
    pub dir: &'a Path,
    pub bin_dir: &'a Path,
    /// The API server as the in-cluster config finds it.
    pub api_host: &'a str,
    pub api_port: u16,
    pub ca: &'a Path,
    pub token: &'a str,
}

/// What runs flanneld on a node: argv, environment and the pod's mounts.
pub struct Run {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub binds: Vec<Bind>,
}

impl NodePod<'_> {
    fn host(&self, path: &str) -> PathBuf {
        self.dir.join("host").join(path.trim_start_matches('/'))
    }

    /// The node's own files for the kubelet's CNI calls.
    pub fn kubelet_binds(&self) -> anyhow::Result<Vec<Bind>> {
        KUBELET_PATHS
            .iter()
            .map(|p| {
                let src = self.host(p);
                std::fs::create_dir_all(&src)
                    .with_context(|| format!("creating {}", src.display()))?;
                Ok(Bind {
                    src,
                    dst: PathBuf::from(p),
                })
            })
            .collect()
    }

    /// The ConfigMap volumes' files and the service-account directory, as the kubelet writes
    /// them for the pod.
    fn write_pod_files(&self) -> anyhow::Result<()> {
        let m = &self.setup.manifest;
        for (name, data) in &m.config_maps {
            let d = self.dir.join("configmaps").join(name);
            std::fs::create_dir_all(&d)?;
            for (file, text) in self.setup.config_map_data(data) {
                std::fs::write(d.join(&file), text)?;
            }
        }
        let sa = self.dir.join("serviceaccount");
        std::fs::create_dir_all(&sa)?;
        std::fs::write(sa.join("token"), self.token)?;
        std::fs::copy(self.ca, sa.join("ca.crt"))
            .with_context(|| format!("copying {}", self.ca.display()))?;
        std::fs::write(sa.join("namespace"), &m.namespace)?;
        Ok(())
    }

    fn container_binds(&self, c: &Container) -> anyhow::Result<Vec<Bind>> {
        let mut binds = Vec::new();
        for (vol, at) in &c.mounts {
            let src = match self.setup.manifest.volumes.get(vol) {
                Some(Volume::HostPath { path, file }) => {
                    let src = self.host(path);
                    if *file {
                        if let Some(parent) = src.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        if !src.exists() {
                            std::fs::File::create(&src)?;
                        }
                    } else {
                        std::fs::create_dir_all(&src)?;
                    }
                    src
                }
                Some(Volume::ConfigMap { name }) => self.dir.join("configmaps").join(name),
                None => bail!(
                    "container {} mounts volume {vol}, which is not defined",
                    c.name
                ),
            };
            binds.push(Bind {
                src,
                dst: PathBuf::from(at.trim_end_matches('/')),
            });
        }
        binds.push(Bind {
            src: self.dir.join("serviceaccount"),
            dst: PathBuf::from(SA_DIR),
        });
        Ok(binds)
    }

    fn env(&self, c: &Container) -> anyhow::Result<Vec<(String, String)>> {
        let m = &self.setup.manifest;
        let mut env = vec![
            (
                "KUBERNETES_SERVICE_HOST".to_string(),
                self.api_host.to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".to_string(),
                self.api_port.to_string(),
            ),
        ];
        for (k, v) in &c.env {
            let value = match v {
                EnvValue::Value(s) => s.clone(),
                EnvValue::Field(f) => match f.as_str() {
                    "metadata.name" => self.setup.pod_name(self.index),
                    "metadata.namespace" => m.namespace.clone(),
                    "spec.nodeName" => self.name.to_string(),
                    "status.podIP" | "status.hostIP" => self.ip.to_string(),
                    other => bail!("container {}: env {k} from field {other}: the lab knows metadata.name, metadata.namespace, spec.nodeName, status.podIP, status.hostIP", c.name),
                },
            };
            env.push((k.clone(), value));
        }
        Ok(env)
    }

    /// The image's program → our binary of that name.
    fn argv(&self, c: &Container) -> anyhow::Result<Vec<String>> {
        let prog = Path::new(&c.argv[0])
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        if !matches!(prog, "flanneld" | "flannel") {
            bail!(
                "container {} runs {}: the lab runs only our binaries (flanneld, flannel)",
                c.name,
                c.argv[0]
            );
        }
        let mut argv = vec![self.bin_dir.join(prog).display().to_string()];
        argv.extend(c.argv[1..].iter().cloned());
        Ok(argv)
    }

    /// Writes the pod's files, runs the init containers in order (each must succeed, as the
    /// kubelet requires), and returns how to run the flannel container. Mount points made on
    /// the host are appended to `made`.
    pub fn install(&self, made: &mut Vec<PathBuf>) -> anyhow::Result<Run> {
        self.write_pod_files()?;
        for c in &self.setup.manifest.init {
            let binds = self.container_binds(c)?;
            nodefs::make_mount_points(&binds, made)?;
            let argv = self.argv(c)?;
            let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
            let mut cmd = in_ns(self.netns, &argv[0], &args);
            cmd.env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .envs(self.env(c)?);
            nodefs::apply(&mut cmd, &binds)?;
            sh::run(&mut cmd)
                .with_context(|| format!("init container {} on {}", c.name, self.name))?;
        }
        let c = &self.setup.manifest.flannel;
        let binds = self.container_binds(c)?;
        nodefs::make_mount_points(&binds, made)?;
        Ok(Run {
            argv: self.argv(c)?,
            env: self.env(c)?,
            binds,
        })
    }
}

/// The CNI config the kubelet would use on a node: the first file (by name) in its
/// `/etc/cni/net.d`.
pub fn installed_conflist(binds: &[Bind]) -> anyhow::Result<Value> {
    let dir = nodefs::host_path(binds, Path::new("/etc/cni/net.d"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    let first = files
        .first()
        .ok_or_else(|| anyhow!("no CNI config in {} (did install-cni run?)", dir.display()))?;
    let text = std::fs::read_to_string(first)?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", first.display()))
}
