//! The one list-watch driver over the Kubernetes API fake, for more than the Node watch: a
//! namespaced kind (Pods of every namespace) and a cluster-scoped one (Nodes) feed one
//! consumer, which learns when both have listed once, then follows creations and deletions.
//! (A 410 and a re-list go through the same driver: see `kube_mode` for the Node watch's.)

use crate::common;

use common::{in_ns, require_root, Netns, TempDir};
use flannel_kube_fake::{node, FakeApi, Kind, Options};
use flannel_subnet::kube::source::{Consumer, Object};
use flannel_subnet::kube::{ApiSource, KubeOptions, KubeSubnetManager};
use flannel_subnet::listwatch::AllListed;
use serde::Deserialize;
use serde_json::json;
use std::sync::{mpsc, Arc};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
struct Obj {
    metadata: Meta,
}

#[derive(Debug, Clone, Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

impl Object for Obj {
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

/// What the consumer saw, as `kind ns/name` lines: listed, applied (+), deleted (-).
struct Lines(&'static str, mpsc::Sender<String>);

impl Lines {
    fn name(o: &Obj) -> String {
        match &o.metadata.namespace {
            Some(ns) => format!("{ns}/{}", o.metadata.name),
            None => o.metadata.name.clone(),
        }
    }
}

impl Consumer<Obj> for Lines {
    fn page(&mut self, items: Vec<Obj>) {
        for o in items {
            let _ = self.1.send(format!("{} listed {}", self.0, Self::name(&o)));
        }
    }

    fn listed(&mut self) {}

    fn applied(&mut self, o: Obj) {
        let _ = self.1.send(format!("{} + {}", self.0, Self::name(&o)));
    }

    fn deleted(&mut self, o: Obj) {
        let _ = self.1.send(format!("{} - {}", self.0, Self::name(&o)));
    }
}

fn pod(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {}})
}

/// Waits for `want` among the consumer's lines (others are kept for later waits).
fn expect(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l| l == want) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("never saw {want:?}; saw {seen:?}"),
        }
    }
}

#[test]
fn two_kinds_feed_one_consumer_say_when_both_are_listed_and_follow_changes() {
    require_root();
    let ns = Netns::new("lw");
    let dir = TempDir::new("lw-api");
    let mut o = Options::new("127.0.0.1:6443".parse().unwrap(), dir.path());
    o.netns = Some(ns.path().into());
    o.bookmark_every = Duration::from_millis(200);
    let api = Arc::new(FakeApi::start(o).expect("start the API fake"));
    api.create(
        Kind::Node,
        "",
        node("n1", &["10.244.1.0/24"], "10.0.0.51", 0),
    )
    .unwrap();
    api.create(Kind::Pod, "a", pod("a", "web")).unwrap();
    api.create(Kind::Pod, "b", pod("b", "db")).unwrap();

    let (tx, rx) = mpsc::channel::<String>();
    let (listed_tx, listed_rx) = mpsc::channel::<()>();
    let kubeconfig = api.kubeconfig().display().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client = {
        let ns = ns.0.clone();
        std::thread::spawn(move || {
            in_ns(&ns, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let sm = KubeSubnetManager::connect(KubeOptions {
                        source: ApiSource {
                            kubeconfig,
                            api_url: String::new(),
                        },
                        annotation_prefix: "flannel.alpha.coreos.com".into(),
                        net_config_path: "/nonexistent".into(),
                        set_node_network_unavailable: false,
                        node_name: "n1".into(),
                        pod_name: String::new(),
                        pod_namespace: String::new(),
                    })
                    .await
                    .expect("connect");
                    let listed = AllListed::new(2);
                    let pods = sm.watch_kind::<Obj, _>(
                        "/api/v1/pods",
                        "pods",
                        "pod",
                        Lines("pod", tx.clone()),
                        Some(listed.clone()),
                    );
                    let nodes = sm.watch_kind::<Obj, _>(
                        "/api/v1/nodes",
                        "nodes",
                        "node",
                        Lines("node", tx),
                        Some(listed.clone()),
                    );
                    let signal = async {
                        listed.wait().await;
                        let _ = listed_tx.send(());
                        std::future::pending::<()>().await
                    };
                    tokio::select! {
                        _ = pods => {}
                        _ = nodes => {}
                        _ = signal => {}
                        _ = stop_rx => {}
                    }
                })
            })
        })
    };
    listed_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("both kinds listed");
    let mut seen = Vec::new();
    for want in ["pod listed a/web", "pod listed b/db", "node listed n1"] {
        expect(&rx, &mut seen, want);
    }
    api.create(Kind::Pod, "c", pod("c", "new")).unwrap();
    expect(&rx, &mut seen, "pod + c/new");
    api.delete(Kind::Pod, "a", "web").unwrap();
    expect(&rx, &mut seen, "pod - a/web");
    let _ = stop_tx.send(());
    client.join().expect("client thread");
}
