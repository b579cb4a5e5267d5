//! The local state socket (`--state-socket`, default `/run/flannel/flanneld.sock`, mode 0600):
//! HTTP/1.1 over a Unix socket, for `flannelctl` on the node. `GET /state` is the daemon's
//! snapshot as JSON (see `flannel_core::state`), asked of the event loop and answered between
//! two events; `/metrics`, `/healthz` and `/readyz` are the health server's, so metrics are
//! there even with the health port off (its default).

use crate::health::{answer, read_head, respond, CONNECTION_DEADLINE, MAX_CONNECTIONS};
use crate::metrics::Metrics;
use flannel_core::state::StateSnapshot;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, warn};

/// A request for the daemon's snapshot, answered on the channel inside.
pub type StateRequest = oneshot::Sender<StateSnapshot>;

/// The socket file, removed when flanneld exits.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `path` (replacing a stale socket left by a previous run, never another kind of file)
/// and serves in the background.
pub fn start(
    path: &Path,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<StateRequest>,
) -> anyhow::Result<SocketFile> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the old socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or set --state-socket",
            path.display()
        ),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tokio::spawn(serve(listener, ready, metrics, requests));
    Ok(SocketFile(path.to_path_buf()))
}

async fn serve(
    listener: UnixListener,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<StateRequest>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((s, _)) => {
                let (ready, metrics, requests) = (ready.clone(), metrics.clone(), requests.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = tokio::time::timeout(
                        CONNECTION_DEADLINE,
                        handle(s, ready, metrics, requests),
                    )
                    .await;
                });
            }
            Err(e) => {
                warn!(error = %e, "the state socket cannot accept connections; retrying");
                drop(slot);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

async fn handle(
    mut s: UnixStream,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<StateRequest>,
) {
    let head = read_head(&mut s).await;
    let line = head.lines().next().unwrap_or("");
    debug!(request = line, "state socket request");
    let mut parts = line.split_whitespace();
    if (parts.next(), parts.next()) == (Some("GET"), Some("/state")) {
        let (tx, rx) = oneshot::channel();
        // Before ready the event loop does not run yet: say so at once.
        let snapshot = match ready.load(Ordering::SeqCst) && requests.try_send(tx).is_ok() {
            true => rx.await.ok(),
            false => None,
        };
        match snapshot.map(|s| serde_json::to_string_pretty(&s)) {
            Some(Ok(json)) => answer(&mut s, "200 OK", "application/json", &json).await,
            _ => {
                let why = "flanneld is starting (no lease yet) or busy; try again\n";
                answer(&mut s, "503 Service Unavailable", "text/plain", why).await
            }
        }
        return;
    }
    let (status, ty, body) = respond(&head, ready.load(Ordering::SeqCst), &metrics);
    answer(&mut s, status, ty, &body).await;
}
