//! A node in Kubernetes mode: a [`Node`] without etcd, the API fake listening on its loopback
//! (`https://127.0.0.1:6443`, in the node's namespace), its Node object, net-conf.json, and
//! flanneld started with `--kube-subnet-mgr`.

use super::{Node, TempDir};
use flannel_kube_fake::{node, FakeApi, Kind, Options, PatchType};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

pub const NODE: &str = "node0";
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
pub const ANN: &str = "flannel.alpha.coreos.com";

pub struct KubeNode {
    pub node: Node,
    pub api: FakeApi,
    _api_dir: TempDir,
}

impl KubeNode {
    /// A node whose Node object has `pod_cidrs` (none: not allocated yet).
    pub fn new(tag: &str, pod_cidrs: &[&str]) -> Self {
        Self::with_names(tag, pod_cidrs, &[])
    }

    /// The same, the API server's certificate valid for `names` too.
    pub fn with_names(tag: &str, pod_cidrs: &[&str], names: &[&str]) -> Self {
        let n = Node::bare(tag);
        let api_dir = TempDir::new(&format!("{tag}-api"));
        let mut o = Options::new("127.0.0.1:6443".parse().unwrap(), api_dir.path());
        o.sans.extend(names.iter().map(|s| s.to_string()));
        o.netns = Some(n.ns.path().into());
        o.bookmark_every = Duration::from_millis(500);
        let api = FakeApi::start(o).expect("start the API fake");
        api.create(Kind::Node, "", node(NODE, pod_cidrs, "10.0.0.50", 0))
            .unwrap();
        std::fs::write(n.dir.path().join("net-conf.json"), NET_CONF).unwrap();
        Self {
            node: n,
            api,
            _api_dir: api_dir,
        }
    }

    pub fn net_conf(&self) -> PathBuf {
        self.node.dir.path().join("net-conf.json")
    }

    /// flanneld in kube mode with a kubeconfig, `NODE_NAME`, and `extra`.
    pub fn start(&mut self, extra: &[&str]) {
        self.start_env(extra, &[("NODE_NAME", NODE)]);
    }

    pub fn start_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let kc = format!("--kubeconfig-file={}", self.api.kubeconfig().display());
        let nc = format!("--net-config-path={}", self.net_conf().display());
        let mut args = vec!["--kube-subnet-mgr", &kc, &nc, "--iface=eth0"];
        args.extend_from_slice(extra);
        self.node.start_env(&args, env);
    }

    /// Our Node object as the API has it.
    pub fn own(&self) -> Value {
        self.api.get(Kind::Node, "", NODE).unwrap()
    }

    pub fn annotation(&self, suffix: &str) -> Option<String> {
        self.own()["metadata"]["annotations"][format!("{ANN}/{suffix}")]
            .as_str()
            .map(String::from)
    }

    /// A peer as upstream's kube-mode flanneld leaves its Node: podCIDR and annotations.
    pub fn add_peer(&self, name: &str, cidr: &str, ip: &str, mac: &str) {
        let mut n = node(name, &[cidr], ip, 0);
        n["metadata"]["annotations"] = json!({
            format!("{ANN}/kube-subnet-manager"): "true",
            format!("{ANN}/backend-type"): "vxlan",
            format!("{ANN}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            format!("{ANN}/public-ip"): ip,
        });
        self.api.create(Kind::Node, "", n).unwrap();
    }

    pub fn annotate(&self, name: &str, suffix: &str, value: Option<&str>) {
        self.api
            .patch(
                Kind::Node,
                "",
                name,
                PatchType::Merge,
                &json!({"metadata":{"annotations":{format!("{ANN}/{suffix}"): value}}}),
                false,
            )
            .unwrap();
    }

    /// Starts flanneld the way the DaemonSet runs it: in-cluster config only
    /// (`KUBERNETES_SERVICE_HOST/PORT`, the service-account directory bind-mounted at
    /// /var/run/secrets/kubernetes.io/serviceaccount in a private mount namespace whose /run
    /// is a fresh tmpfs: nothing of the host's is touched). Returns that directory.
    pub fn start_in_cluster(&mut self) -> PathBuf {
        let sa = self.node.dir.path().join("serviceaccount");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::copy(self.api.ca(), sa.join("ca.crt")).unwrap();
        std::fs::copy(self.api.dir().join("token"), sa.join("token")).unwrap();
        std::fs::write(sa.join("namespace"), "kube-flannel").unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && mount --bind {} /run/secrets/kubernetes.io/serviceaccount && exec \"$0\" \"$@\"",
            sa.display()
        );
        self.node.launcher = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let nc = format!("--net-config-path={}", self.net_conf().display());
        self.node.start_env(
            &["--kube-subnet-mgr", &nc, "--iface=eth0"],
            &[
                ("NODE_NAME", NODE),
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", "6443"),
            ],
        );
        self.node.launcher.clear();
        sa
    }

    pub fn routes(&self) -> String {
        self.node.exec("ip", &["route", "show"])
    }
}
