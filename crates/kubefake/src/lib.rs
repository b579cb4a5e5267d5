//! flannel-kube-fake: a fake Kubernetes API server, named as one, for flannel-rs's tests and
//! lab. It speaks the real protocol over HTTPS to real clients (kube-rs in flanneld, `kubectl`):
//! Nodes (list with limit/continue, watch from a resourceVersion with bookmarks and 410 after
//! compaction, get, create, replace, delete, patch of the object and of `/status` with
//! strategic-merge, merge and JSON patches), Pods and ConfigMaps (get, create), discovery, and
//! bearer-token auth, with a CA and server certificate it makes itself. Tests drive it directly
//! (compact its history, restart it without history, take it away and back).

pub mod cli;
pub mod patch;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;

pub use server::Logged;
pub use store::{ApiError, Kind, PatchType};

use serde_json::{json, Value};
use server::{lock, Shared};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How to run the fake.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (`10.0.0.50:6443`).
    pub listen: SocketAddr,
    /// A network namespace file to listen in (`/run/netns/<name>`); the host's when `None`.
    pub netns: Option<PathBuf>,
    /// Where `ca.crt`, `token` and `kubeconfig` are written.
    pub dir: PathBuf,
    /// The bearer token clients must send.
    pub token: String,
    /// Extra names and addresses for the server certificate (the listen address is always in).
    pub sans: Vec<String>,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_every: Duration,
    /// Events kept for watches to replay; older ones are compacted away.
    pub max_history: usize,
    /// How long a list or watch from a resourceVersion the store has not reached waits for it
    /// before the 504 "Too large resource version": 3 s, the real server's watch-cache
    /// `blockTimeout`; tests that only check the answer shorten it (kubectl retries a 504 ten
    /// times, one `Retry-After` second apart, so each wait counts eleven times).
    pub too_large_wait: Duration,
}

impl Options {
    pub fn new(listen: SocketAddr, dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            netns: None,
            dir: dir.into(),
            token: "flannel-kube-fake-admin-token".into(),
            sans: vec!["localhost".into(), "kubernetes.default.svc".into()],
            bookmark_every: Duration::from_secs(5),
            max_history: 100_000,
            too_large_wait: Duration::from_secs(3),
        }
    }
}

/// A running fake API server. Dropping it stops it.
pub struct FakeApi {
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    opts: Options,
    acceptor: TlsAcceptor,
    serving: Mutex<Option<watch::Sender<bool>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FakeError {
    let what = what.into();
    move |source| FakeError::Io { what, source }
}

/// Binds `addr`, inside the network namespace `netns` when given (from a thread that enters it:
/// a socket belongs to the namespace it was made in, whatever thread uses it later).
fn bind(addr: SocketAddr, netns: Option<&Path>) -> std::io::Result<std::net::TcpListener> {
    let Some(ns) = netns else {
        return std::net::TcpListener::bind(addr);
    };
    let f = std::fs::File::open(ns)?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on this short-lived thread only, with a namespace fd we hold open.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpListener::bind(addr)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("bind thread panicked")))
}

impl FakeApi {
    /// Makes the PKI, writes `ca.crt`, `token` and an admin `kubeconfig` to `opts.dir`, and
    /// starts serving.
    pub fn start(opts: Options) -> Result<Self, FakeError> {
        let mut sans = opts.sans.clone();
        sans.push(opts.listen.ip().to_string());
        std::fs::create_dir_all(&opts.dir)
            .map_err(io(format!("creating {}", opts.dir.display())))?;
        let pki = tls::load_or_make(&opts.dir, &sans)?;
        // The admin token and the kubeconfig holding it are secrets, as a real cluster's are.
        let w = |name: &str, data: &str| {
            let p = opts.dir.join(name);
            tls::write_private(&p, data.as_bytes()).map_err(io(format!("writing {}", p.display())))
        };
        w("token", &opts.token)?;
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": format!("https://{}", opts.listen),
                "certificate-authority": opts.dir.join("ca.crt")}}],
            "users": [{"name": "admin", "user": {"token": opts.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "admin", "namespace": "default"}}],
            "current-context": "fake"
        });
        w(
            "kubeconfig",
            &serde_json::to_string_pretty(&kubeconfig).unwrap_or_default(),
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-fake")
            .enable_all()
            .build()
            .map_err(io("starting the runtime"))?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store::Store::new(opts.max_history)),
            tokens: Mutex::new(vec![opts.token.clone()]),
            bookmark_every: opts.bookmark_every,
            too_large_wait: opts.too_large_wait,
            log: Mutex::new(VecDeque::new()),
        });
        let me = Self {
            acceptor: TlsAcceptor::from(pki.server_config()?),
            shared,
            rt,
            opts,
            serving: Mutex::new(None),
        };
        me.resume()?;
        Ok(me)
    }

    /// Listens again after [`FakeApi::stop`] (same address, same objects and history).
    pub fn resume(&self) -> Result<(), FakeError> {
        let mut serving = lock(&self.serving);
        if serving.is_some() {
            return Ok(());
        }
        let std_listener = bind(self.opts.listen, self.opts.netns.as_deref())
            .map_err(io(format!("listening on {}", self.opts.listen)))?;
        std_listener
            .set_nonblocking(true)
            .map_err(io("making the listener non-blocking"))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(io("registering the listener"))?;
        self.rt.spawn(serve(
            listener,
            self.acceptor.clone(),
            self.shared.clone(),
            stop_rx,
        ));
        *serving = Some(stop_tx);
        Ok(())
    }

    /// Goes away: the listener closes (connections are refused) and every open connection and
    /// watch ends. Objects and history stay.
    pub fn stop(&self) {
        if let Some(tx) = lock(&self.serving).take() {
            let _ = tx.send(true);
        }
        // Give the tasks a moment to notice, so the port is free for `resume`.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// A restart without history, as an API server whose watch cache starts afresh: every
    /// connection ends, and watches from any earlier resourceVersion get 410 Gone.
    pub fn restart_without_history(&self) -> Result<(), FakeError> {
        self.stop();
        self.compact();
        self.resume()
    }

    /// A restart that lost every stored object, as an API server whose etcd was replaced or
    /// restored from an old backup: every connection ends, the store is empty and its
    /// resourceVersion starts again below what clients have seen (their watches get "Too
    /// large resource version").
    pub fn restart_empty(&self) -> Result<(), FakeError> {
        self.stop();
        {
            let mut store = lock(&self.shared.store);
            let keep = store.max_history();
            *store = store::Store::new(keep);
        }
        self.resume()
    }

    /// Forgets the history (open watches go on; new ones from an older version get 410).
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    /// `https://<listen>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.opts.listen)
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.opts.dir.join("kubeconfig")
    }

    pub fn ca(&self) -> PathBuf {
        self.opts.dir.join("ca.crt")
    }

    /// Accepts only these bearer tokens from now on (a rotation).
    pub fn set_tokens(&self, tokens: Vec<String>) {
        *lock(&self.shared.tokens) = tokens;
    }

    pub fn create(&self, kind: Kind, ns: &str, obj: Value) -> Result<Value, ApiError> {
        lock(&self.shared.store).create(kind, ns, obj)
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        lock(&self.shared.store).get(kind, ns, name)
    }

    pub fn names(&self, kind: Kind) -> Vec<String> {
        lock(&self.shared.store).names(kind)
    }

    pub fn list(&self, kind: Kind) -> Vec<Value> {
        lock(&self.shared.store).list(kind, None)
    }

    pub fn patch(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        ty: PatchType,
        patch: &Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        lock(&self.shared.store).patch(kind, ns, name, ty, patch, status)
    }

    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        lock(&self.shared.store).delete(kind, ns, name)
    }

    /// Writes every object (not the history) to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<(), FakeError> {
        let snap = lock(&self.shared.store).snapshot();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, snap.to_string()).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))
    }

    /// Loads objects written by [`FakeApi::save`]; returns how many.
    pub fn load(&self, path: &Path) -> Result<usize, FakeError> {
        let text =
            std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| FakeError::Io {
            what: format!("parsing {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        lock(&self.shared.store)
            .restore(&v)
            .map_err(|e| FakeError::Io {
                what: format!("loading {}", path.display()),
                source: std::io::Error::other(e.message),
            })
    }

    /// The requests served so far (the last 2000), oldest first.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).iter().cloned().collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.serving).take() {
            let _ = tx.send(true);
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((tcp, _)) = r else { continue };
                let (acceptor, shared, mut stop) = (acceptor.clone(), shared.clone(), stop.clone());
                tokio::spawn(async move {
                    let conn = async {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let svc = hyper::service::service_fn(move |req| server::handle(req, shared.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    };
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
            _ = stop.changed() => return,
        }
    }
}

/// This machine's OS as kubelet reports it (`PRETTY_NAME` of /etc/os-release).
fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default()
}

/// This machine's kernel release (`uname -r`), as kubelet reports it.
fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// A Node object as kubelet registers one (before a CNI runs): name, podCIDR(s), InternalIP,
/// `NetworkUnavailable=True`. `padding` bytes of status (images) make it as heavy as real ones.
pub fn node(name: &str, pod_cidrs: &[&str], internal_ip: &str, padding: usize) -> Value {
    let mut n = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": pod_cidrs.first().copied().unwrap_or(""), "podCIDRs": pod_cidrs},
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "conditions": [
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated", "message": "Node created without a route"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
            ],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64",
                         "osImage": os_image(), "kernelVersion": kernel_version(),
                         "containerRuntimeVersion": concat!("flannel-lab://", env!("CARGO_PKG_VERSION"))}
        }
    });
    if pod_cidrs.is_empty() {
        if let Value::Object(s) = &mut n["spec"] {
            s.clear();
        }
    }
    if padding > 0 {
        let images: Vec<Value> = (0..padding / 200 + 1)
            .map(|i| json!({"names": [format!("registry.example/app/image-{i:05}@sha256:{}", "0".repeat(100))], "sizeBytes": 123456789}))
            .collect();
        n["status"]["images"] = Value::Array(images);
    }
    n
}
